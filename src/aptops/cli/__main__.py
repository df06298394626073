"""``python -m aptops.cli``: the same as the ``aptops`` command."""

from aptops.cli import main

main()
