"""``python -m batchrunner`` is the ``batchrunner`` command."""

from batchrunner.cli import main

main()
