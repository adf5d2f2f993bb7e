"""``reason view``: a search tree as one self-contained HTML page, viewed locally.

Registered like any third-party plugin, through ``reason_register_commands``. The page
is written by :mod:`reason.plugins.viewer.render` (imported only when the command runs).
"""

from __future__ import annotations

import click

from reason import hookimpl


@click.command("view")
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option("--problem", "problem", metavar="ID", help="Only this task id of a results.jsonl or run directory.")
@click.option(
    "--solution",
    "solution",
    type=click.Path(exists=True, dir_okay=False, path_type=str),
    help="The `reason solve --json` output that goes with a bare tree: marks the chosen path and the candidates.",
)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=str), help="Write the page here. [next to SOURCE]")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the browser.")
def view_command(source: str, problem: str | None, solution: str | None, out: str | None, open_browser: bool) -> None:
    """Write a search tree as one HTML page (no network needed) and print its path.

    \b
    SOURCE is a tree (reason solve --tree T.json), a results.jsonl of `reason eval
    --save-tree`, or an eval run directory (a page with its problem list).
    Examples:
      reason solve --search beam --n 4 --tree t.json --json "2+2?" > sol.json
      reason view t.json --solution sol.json --open
      reason view runs/beam8 --problem 17 -o beam8-17.html
    """
    from .render import write_view

    target, problems = write_view(source, out=out, problem=problem, solution=solution)
    drawn = [p for p in problems if p.get("nodes") is not None]
    nodes = sum(p["num_nodes"] for p in drawn)
    what = f"{len(drawn)} trees, {nodes} nodes" if len(problems) > 1 else f"{nodes} nodes"
    click.echo(f"{target} ({what})")
    if open_browser:
        import webbrowser

        if not webbrowser.open(target.resolve().as_uri()):
            click.echo(f"reason: could not open a browser; open {target} yourself", err=True)


@hookimpl
def reason_register_commands(cli):
    """Add ``reason view``."""
    cli.add_command(view_command)
