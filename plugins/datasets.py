"""Built-in evaluation datasets."""

from reason import hookimpl


@hookimpl
def reason_register_datasets(register):
    """Datasets are registered here (see issue #6)."""
