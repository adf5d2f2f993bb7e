"""Built-in CLI commands that live in plugins (each imports its heavy parts lazily)."""

from reason import hookimpl


@hookimpl
def reason_register_commands(cli):
    """Commands beyond the core's (sandbox, eval) are added here."""
