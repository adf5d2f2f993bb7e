"""Built-in reflection triggers."""

from reason import hookimpl


@hookimpl
def reason_register_reflections(register):
    """Reflection triggers are registered here (see issue #3)."""
