"""Built-in policy backends. Each is imported only when used, so torch, vllm and the
HTTP client stay out of ``import reason``."""

from reason import hookimpl
from reason.registry import lazy


@hookimpl
def reason_register_backends(register):
    register("transformers", lazy("reason.plugins.backends.transformers:TransformersBackend"))
    register("openai", lazy("reason.plugins.backends.openai:OpenAIBackend"))
    register("vllm", lazy("reason.plugins.backends.vllm:VLLMBackend"))
