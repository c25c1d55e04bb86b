"""``python -m flexlog.cli``: the ``flexlog`` command."""

import sys

from flexlog.cli import main

sys.exit(main())
