"""Built-in CLI commands that live in plugins (each imports its heavy parts lazily)."""

from reason import hookimpl


@hookimpl
def reason_register_commands(cli):
    """Commands beyond the core's (``solve``, ``plugins``, ``eval``) are added here."""
    from reason.sandboxes.cli import sandbox_group  # cheap: click only; docker loads when a command runs

    cli.add_command(sandbox_group)
    from reason.plugins.learn import cli as learn_cli  # click only, like the sandbox group

    learn_cli.register(cli)
