"""The ``journal`` command: subcommands in :mod:`journal.cli.main`, ``verify`` in
:mod:`journal.cli.verify`, and the fleet demo in :mod:`journal.cli.demo`.

Nothing here is imported by ``import journal``.
"""

from journal.cli.main import main

__all__ = ["main"]
