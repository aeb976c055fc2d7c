"""``python -m journal``: the same as the ``journal`` command."""

import sys

from journal.cli.main import main

sys.exit(main())
