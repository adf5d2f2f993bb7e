"""Every hook, as a plugin author meets it (datasette-style meta-tests).

Each hookspec has a test here named ``test_hook_<name>`` that registers a small plugin
through the real loading path and uses what it registers, and the README's plugin guide
shows each hook with its exact signature. A new hook without both fails
``test_every_hook_is_documented_and_tested``.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from scripted import ScriptedBackend

import reason
from reason import hookspecs
from reason.registry import _load, load_plugins

README = Path(__file__).resolve().parent.parent / "README.md"


def hook_specs() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(getattr(hookspecs, name))
        for name in dir(hookspecs)
        if name.startswith("reason_") and callable(getattr(hookspecs, name))
    }


def test_every_hook_is_documented_and_tested():
    readme = README.read_text()
    source = Path(__file__).read_text()
    for name, signature in hook_specs().items():
        call = f"{name}({', '.join(signature.parameters)})"
        assert f"`{call}`" in readme, f"README's plugin guide lacks `{call}`"
        assert re.search(rf"^def test_hook_{name}\(", source, re.M), f"no test_hook_{name} in {__file__}"
        assert (getattr(hookspecs, name).__doc__ or "").count(":param") == len(signature.parameters)


def with_plugin(plugin: object, name: str = "test-plugin") -> reason.PluginRegistry:
    registry = load_plugins()
    _load(registry, name, lambda: plugin, "0", builtin=False)
    assert registry.plugins[name].error is None, registry.plugins[name].error
    return registry


class Echo(reason.SearchPolicy):
    async def run(self, ctx):
        (leaf,) = await ctx.complete(ctx.root, 1)
        return reason.SearchOutcome(candidates=[ctx.candidate(leaf)], chosen=ctx.candidate(leaf))


def test_hook_reason_register_backends():
    class Plugin:
        @staticmethod
        @reason.hookimpl
        def reason_register_backends(register):
            register("hook-backend", lambda config, arg: ScriptedBackend(config=config))

    registry = with_plugin(Plugin)
    with reason.Runtime(reason.Config(backend="hook-backend", search="greedy"), registry=registry) as rt:
        assert rt.solve("2+2?").answer == "4"
    assert registry.plugins["test-plugin"].registers == {"backend": ["hook-backend"]}


def test_hook_reason_register_splitters():
    class Halves(reason.Splitter):
        def step_params(self, params):
            return params

        def split(self, text):
            return [text[: len(text) // 2], text[len(text) // 2 :]]

    class Plugin:
        @staticmethod
        @reason.hookimpl
        def reason_register_splitters(register):
            register("halves", Halves)

    splitter = with_plugin(Plugin).create("splitter", "halves", reason.Config())
    assert splitter.split("abcd") == ["ab", "cd"]


def test_hook_reason_register_verifiers():
    class Half(reason.Verifier):
        def score(self, requests):
            return [reason.Score(step_scores=[0.5] * len(r.steps)) for r in requests]

    class Plugin:
        @staticmethod
        @reason.hookimpl
        def reason_register_verifiers(register):
            register("half", Half)

    registry = with_plugin(Plugin)
    with reason.Runtime(reason.Config(verifier="half", search="best-of-n", n=2), registry=registry, backend=ScriptedBackend()) as rt:
        assert rt.solve("q").score == 0.5


def test_hook_reason_register_searches():
    class Plugin:
        @staticmethod
        @reason.hookimpl
        def reason_register_searches(register):
            register("echo", Echo)

    registry = with_plugin(Plugin)
    with reason.Runtime(reason.Config(search="echo", verifier=None), registry=registry, backend=ScriptedBackend()) as rt:
        assert rt.solve("q").answer == "4"


def test_hook_reason_register_reflections():
    class Always(reason.ReflectionTrigger):
        def on_finish(self, task, steps, score, reflections):
            return "Wait, again." if reflections == 0 else None

    class Plugin:
        @staticmethod
        @reason.hookimpl
        def reason_register_reflections(register):
            register("always", Always)

    registry = with_plugin(Plugin)
    config = reason.Config(search="greedy", verifier=None, reflect=("always",))
    with reason.Runtime(config, registry=registry, backend=ScriptedBackend()) as rt:
        solution = rt.solve("q")
    assert "Wait, again." in solution.text
    assert any(node.kind == "reflection" for node in solution.tree)


def test_hook_reason_register_datasets():
    class Tiny(reason.Dataset):
        def load(self):
            yield reason.Task(question="1+1?", id="tiny/0", reference="2")

    class Plugin:
        @staticmethod
        @reason.hookimpl
        def reason_register_datasets(register):
            register("tiny", Tiny)

    dataset = with_plugin(Plugin).create("dataset", "tiny", reason.Config())
    (task,) = dataset.load()
    assert dataset.is_correct(task, "2.0") and not dataset.is_correct(task, "3")


def test_hook_reason_register_commands():
    class Plugin:
        @staticmethod
        @reason.hookimpl
        def reason_register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello from a plugin")

    registry = with_plugin(Plugin)
    group = click.Group("reason")
    registry.pm.hook.reason_register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.exit_code == 0 and result.output == "hello from a plugin\n"


def test_hook_reason_on_event():
    seen: list[str] = []

    class Plugin:
        @staticmethod
        @reason.hookimpl
        def reason_on_event(event):
            seen.append(event.kind)
            if event.kind == "AnswerFound":
                raise RuntimeError("an observer's bug must not stop the run")

    registry = with_plugin(Plugin)
    with reason.Runtime(reason.Config(search="best-of-n", n=2), registry=registry, backend=ScriptedBackend()) as rt:
        assert rt.solve("q").answer == "4"
    assert seen[0] == "SearchStarted" and seen[-1] == "SearchFinished"
    assert {"StepsGenerated", "StepsScored", "AnswerFound", "BackendCalled"} <= set(seen)


def test_an_observer_that_raises_hides_no_event_from_the_others():
    seen: dict[str, list[str]] = {"broken": [], "after": []}

    class Broken:
        @staticmethod
        @reason.hookimpl
        def reason_on_event(event):
            seen["broken"].append(event.kind)
            raise RuntimeError("an observer's bug")

    class After:
        @staticmethod
        @reason.hookimpl
        def reason_on_event(event):
            seen["after"].append(event.kind)

    registry = with_plugin(After)
    registry.pm.register(Broken, name="broken")  # registered last: pluggy calls it first
    with reason.Runtime(reason.Config(search="best-of-n", n=2), registry=registry, backend=ScriptedBackend()) as rt:
        assert rt.solve("q").answer == "4"
    assert seen["broken"] and seen["after"] == seen["broken"]
    assert seen["after"][0] == "SearchStarted" and seen["after"][-1] == "SearchFinished"


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_docstrings_say_what_params_and_return(name):
    doc = getattr(hookspecs, name).__doc__ or ""
    assert doc.strip() and ":return:" in doc
