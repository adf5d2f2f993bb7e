"""Built-in verifiers. Those that need heavy libraries are imported only when used."""

from reason import hookimpl
from reason.registry import lazy

from .confidence import ConfidenceVerifier


@hookimpl
def reason_register_verifiers(register):
    register("confidence", ConfidenceVerifier)
