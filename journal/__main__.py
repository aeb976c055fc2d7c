"""``python -m journal``: the same as the ``journal`` command."""

import sys

from .cli import main

sys.exit(main())
