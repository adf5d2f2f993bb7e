"""Plugin loading: built-ins like third-party plugins, entry points, broken plugins,
REASON_LOAD_PLUGINS, and every hook exercised."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import reason
from reason import hookspecs
from reason.registry import KINDS, load_plugins


def _reason(args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-c", "from reason.cli import main; main()", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=120,
    )


@pytest.fixture
def plugin_dir(tmp_path):
    """A directory with two installed-looking plugins: one good, one broken on import."""
    (tmp_path / "good_plugin.py").write_text(textwrap.dedent('''
        import reason
        from reason import SearchPolicy, SearchOutcome, Verifier, Score

        class Echo(SearchPolicy):
            async def run(self, ctx):
                (leaf,) = await ctx.complete(ctx.root, 1)
                c = ctx.candidate(leaf, 1.0)
                return SearchOutcome(candidates=[c], chosen=c)

        class Half(Verifier):
            def score(self, requests):
                return [Score(step_scores=[0.5] * len(r.steps)) for r in requests]

        SEEN = []

        @reason.hookimpl
        def reason_register_searches(register):
            register("echo", Echo)

        @reason.hookimpl
        def reason_register_verifiers(register):
            register("half", Half)

        @reason.hookimpl
        def reason_on_event(event):
            SEEN.append(event.kind)

        @reason.hookimpl
        def reason_register_commands(cli):
            import click

            @cli.command()
            def hello():
                """Say hello from a plugin."""
                click.echo("hello from good_plugin")
    '''))
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    for name, dist in (("good_plugin", "good-plugin"), ("broken_plugin", "broken-plugin")):
        info = tmp_path / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[reason]\n{name.replace('_plugin', '')} = {name}\n")
    return tmp_path


def test_builtins_register_through_the_hooks():
    registry = load_plugins()
    assert {"greedy", "self-consistency", "best-of-n"} <= set(registry.names("search"))
    assert {"step", "line", "ministep", "none"} <= set(registry.names("splitter"))
    assert "confidence" in registry.names("verifier")
    assert "transformers" in registry.names("backend")
    for info in registry.plugins.values():
        assert info.builtin and info.error is None


def test_every_hook_is_documented():
    hooks = [name for name in dir(hookspecs) if name.startswith("reason_")]
    assert set(KINDS.values()) | {"reason_register_commands", "reason_on_event"} == set(hooks)
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__
        assert doc and ":param" in doc and ":return" in doc, name


def test_import_reason_does_not_import_heavy_libraries():
    code = "import sys, reason; reason.get_registry(); import reason.cli; print([m for m in ('torch', 'vllm', 'docker', 'transformers', 'sympy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_third_party_plugin_works_and_broken_one_is_skipped(plugin_dir):
    env = {"PYTHONPATH": str(plugin_dir)}
    result = _reason(["plugins", "--json"], env)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["good"]["version"] == "1.2.3"
    assert plugins["good"]["registers"] == {"search": ["echo"], "verifier": ["half"]}
    assert "reason_on_event" in plugins["good"]["hooks"]
    assert plugins["broken"]["error"] == "ImportError: needs libfoo"
    # exactly one warning naming the plugin and the error
    warnings = [line for line in result.stderr.splitlines() if "broken" in line]
    assert len(warnings) == 1 and "needs libfoo" in warnings[0]
    human = _reason(["plugins"], env)
    assert "broken 1.2.3 (plugin)  BROKEN" in human.stdout and "error: ImportError: needs libfoo" in human.stdout
    hello = _reason(["hello"], env)
    assert hello.stdout.strip() == "hello from good_plugin"


def test_reason_load_plugins_limits_entry_points(plugin_dir):
    env = {"PYTHONPATH": str(plugin_dir), "REASON_LOAD_PLUGINS": "good"}
    names = {p["name"] for p in json.loads(_reason(["plugins", "--json"], env).stdout)}
    assert "good" in names and "broken" not in names
    env["REASON_LOAD_PLUGINS"] = ""
    names = {p["name"] for p in json.loads(_reason(["plugins", "--json"], env).stdout)}
    assert "good" not in names and "reason.plugins.search" in names


def test_third_party_components_run_and_observe_events(plugin_dir, monkeypatch):
    from scripted import ScriptedBackend

    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.setenv("REASON_LOAD_PLUGINS", "good")
    import importlib.metadata

    importlib.invalidate_caches()
    registry = load_plugins()
    solution = reason.Runtime(reason.Config(search="echo", verifier="half"), registry=registry, backend=ScriptedBackend()).solve("q")
    assert solution.score == 1.0 and solution.answer == "4"
    import good_plugin

    assert good_plugin.SEEN[0] == "SearchStarted" and good_plugin.SEEN[-1] == "SearchFinished"


def test_duplicate_name_is_an_error_naming_both_plugins():
    from reason.registry import _load

    class Dup:
        @staticmethod
        @reason.hookimpl
        def reason_register_searches(register):
            register("greedy", object)

    registry = load_plugins()
    with pytest.warns(UserWarning, match="registered twice: by reason.plugins.search and by dup"):
        _load(registry, "dup", lambda: Dup, "0", builtin=False)
    assert registry.plugins["dup"].error


def test_unknown_component_lists_the_available_ones():
    with pytest.raises(reason.ComponentNotFound, match="unknown search 'nope'; available: .*best-of-n.*greedy"):
        reason.Runtime(reason.Config(search="nope"))


def test_a_misspelled_hook_is_an_error_naming_the_plugin_and_the_hook():
    from reason.registry import _load

    class Typo:
        @staticmethod
        @reason.hookimpl
        def reason_register_verifier(register):  # the hook is reason_register_verifiers
            register("typo", object)

    registry = load_plugins()
    with pytest.warns(UserWarning, match="plugin 'typo' implements 'reason_register_verifier', which is no reason hook"):
        _load(registry, "typo", lambda: Typo, "0", builtin=False)
    assert registry.plugins["typo"].error and "typo" not in registry.names("verifier")
    assert not any(registry.pm.get_name(p) == "typo" for p in registry.pm.get_plugins())


def test_an_unmarked_hook_function_is_an_error_not_a_silent_registration():
    from reason.registry import _load

    class Unmarked:
        @staticmethod
        def reason_register_searches(register):
            register("unmarked", object)

    registry = load_plugins()
    with pytest.warns(UserWarning, match="defines reason_register_searches\\(\\) without @reason.hookimpl"):
        _load(registry, "unmarked", lambda: Unmarked, "0", builtin=False)
    assert "unmarked" not in registry.names("search")


def test_add_and_remove_register_one_component_for_tests():
    registry = load_plugins()
    registry.add("search", "test-added", lambda config, arg: object(), plugin="tests")
    assert "test-added" in registry.names("search") and registry.lookup("search", "test-added")[0].plugin == "tests"
    with pytest.raises(reason.UsageError, match="registered twice: by tests and by other"):
        registry.add("search", "test-added", object, plugin="other")
    registry.remove("search", "test-added")
    assert "test-added" not in registry.names("search")
