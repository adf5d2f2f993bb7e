"""Errors a user can act on. The CLI prints their message on one line and exits 2 for
:class:`UsageError` (bad input) and 1 for the rest."""


class ReasonError(Exception):
    """Base of every error reason-runtime raises on purpose."""


class UsageError(ReasonError, ValueError):
    """The input is wrong (an option, a name, a file); the message says how to fix it."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        """What was wrong, where the error knows: a Config field (``"n"``, ``"search"``) or
        ``"options.KEY"`` with the option's key as the user gave it (``reason serve``
        names the request field with it)."""


class ComponentNotFound(UsageError):
    """No plugin registered a component of that kind under that name."""


class BackendError(ReasonError):
    """The policy backend failed (server unreachable, model missing, out of memory)."""


class VerifierError(ReasonError):
    """A verifier failed to score (missing engine, broken model)."""
