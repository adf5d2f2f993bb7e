"""``python -m reason`` runs the CLI (the same as the ``reason`` script)."""

from reason.cli import main

main()
