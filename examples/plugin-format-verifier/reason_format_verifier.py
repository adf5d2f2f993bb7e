"""An example third-party plugin: the ``format`` verifier.

It rewards paths whose steps move towards a well-formed final answer: a step scores 1.0
when it states the answer as ``\\boxed{...}``, 0.5 when it contains a number (``-o
format.number_score=...``), else 0.2. Crude, but it shows the whole plugin surface: a
verifier class with a declared option, its registration, an event observer, and a CLI
command, installed as a separate package through the ``reason`` entry-point group.

    pip install ./examples/plugin-format-verifier
    reason plugins
    reason solve --verifier format --search best-of-n --n 4 "What is 6 * 7?"
    reason format-stats
"""

from __future__ import annotations

import re

import reason

_BOXED = re.compile(r"\\boxed\{[^}]+\}")
_NUMBER = re.compile(r"\d")

STATS = {"paths_scored": 0}


class FormatVerifier(reason.Verifier):
    class Options(reason.Options):
        number_score = reason.Option(float, 0.5, minimum=0, maximum=1, help="score of a step with a number but no boxed answer")

    options: Options

    def score(self, requests):
        scores = []
        for request in requests:
            per_step = [
                1.0 if _BOXED.search(step.text) else self.options.number_score if _NUMBER.search(step.text) else 0.2
                for step in request.steps
            ]
            scores.append(reason.Score(step_scores=per_step))
        STATS["paths_scored"] += len(requests)
        return scores


@reason.hookimpl
def reason_register_verifiers(register):
    register("format", FormatVerifier)


@reason.hookimpl
def reason_on_event(event):
    if event.kind == "SearchFinished":
        STATS["last_answer"] = event.answer


@reason.hookimpl
def reason_register_commands(cli):
    import click

    @cli.command(name="format-stats")
    def format_stats():
        """Show what the format verifier has scored in this process."""
        click.echo(f"paths scored: {STATS['paths_scored']}")
