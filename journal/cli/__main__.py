"""``python -m journal.cli``: the same as the ``journal`` command."""

import sys

from journal.cli.main import main

sys.exit(main())
