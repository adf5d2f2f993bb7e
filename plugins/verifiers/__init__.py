"""Built-in verifiers. Those that need heavy libraries are imported only when used."""

from reason import hookimpl
from reason.registry import lazy

from .confidence import ConfidenceVerifier


@hookimpl
def reason_register_verifiers(register):
    register("confidence", ConfidenceVerifier)
    register("prm", lazy("reason.plugins.verifiers.prm:PRMVerifier"))
    register("self-eval", lazy("reason.plugins.verifiers.self_eval:SelfEvalVerifier"))
    register("probe", lazy("reason.plugins.verifiers.probe:ProbeVerifier"))
    register("sandbox", lazy("reason.plugins.verifiers.sandbox:SandboxVerifier"))
