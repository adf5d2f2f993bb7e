"""Every hook a plugin can implement.

Built-in components are registered through exactly these hooks, the same way a
third-party package registers its own through the ``reason`` entry-point group::

    # pyproject.toml of your plugin
    [project.entry-points.reason]
    my_plugin = "my_plugin"

    # my_plugin.py
    import reason

    @reason.hookimpl
    def reason_register_verifiers(register):
        register("my-verifier", MyVerifier)

Registration hooks receive a ``register(name, factory)`` callback. A factory is called
as ``factory(config, arg, options=...)`` where ``arg`` is the text after a colon in the
name the user chose (``ministep:32`` gives ``"32"``) and ``options`` its own options,
parsed, see :mod:`reason.components`; the class it builds declares them in its nested
``Options`` (:mod:`reason.options`), which users set as ``-o NAME.OPTION=VALUE``. Names
must be unique per kind; registering a taken name is an error that names both plugins.

Compatibility promise: new arguments may be added to a hook later (pluggy lets an
implementation accept only the arguments it names); no hook is renamed or removed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("reason")

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def reason_register_backends(register: Register) -> None:
    """Register policy backends.

    :param register: ``register(name, factory)``; the factory builds a
        :class:`reason.components.Backend` from ``(config, arg)``.
        Built-ins: ``transformers``, ``vllm``, ``openai``.
    :return: nothing; call ``register`` once per backend.
    """


@hookspec
def reason_register_splitters(register: Register) -> None:
    """Register step splitters: what one step of a path is.

    :param register: ``register(name, factory)``; the factory builds a
        :class:`reason.components.Splitter`. Built-ins: ``step`` (stop at a blank line),
        ``line``, ``ministep`` (``ministep:32``: N tokens), ``none`` (whole solution).
    :return: nothing.
    """


@hookspec
def reason_register_verifiers(register: Register) -> None:
    """Register verifiers that score paths step by step.

    :param register: ``register(name, factory)``; the factory builds a
        :class:`reason.components.Verifier`. Built-ins: ``confidence``, ``prm``,
        ``self-eval``, ``sandbox``.
    :return: nothing.
    """


@hookspec
def reason_register_searches(register: Register) -> None:
    """Register search policies.

    :param register: ``register(name, factory)``; the factory builds a
        :class:`reason.components.SearchPolicy`. Built-ins include ``greedy``,
        ``self-consistency``, ``best-of-n``, ``beam``, ``dvts``, ``mcts``.
    :return: nothing.
    """


@hookspec
def reason_register_reflections(register: Register) -> None:
    """Register reflection triggers.

    :param register: ``register(name, factory)``; the factory builds a
        :class:`reason.components.ReflectionTrigger` (``low-confidence:0.5`` passes
        ``"0.5"`` as ``arg``).
    :return: nothing.
    """


@hookspec
def reason_register_datasets(register: Register) -> None:
    """Register evaluation datasets for ``reason eval --dataset NAME``.

    :param register: ``register(name, factory)``; the factory builds a
        :class:`reason.components.Dataset`.
    :return: nothing.
    """


@hookspec
def reason_register_commands(cli: Any) -> None:
    """Add commands to the ``reason`` CLI.

    :param cli: the root :class:`click.Group`; call ``cli.command()`` /
        ``cli.add_command(...)`` on it. Keep heavy imports inside the command body so
        ``reason --help`` stays fast.
    :return: nothing.
    """


@hookspec
def reason_on_event(event: Any) -> None:
    """Observe everything that happens in a run.

    Called synchronously, in the runtime's event-loop thread, for every
    :class:`reason.events.Event` (search started, steps generated/scored, reflection,
    pruning, answers, engine steps and batch calls, search finished). Keep it cheap: it
    runs on the loop every search shares. An exception raised here is logged and does not
    stop the run.

    :param event: the event (a frozen attrs instance; ``event.to_dict()`` serializes it).
    :return: ignored.
    """
