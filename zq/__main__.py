"""``python -m zq`` is the ``zq`` command."""

import sys

from zq.cli import main

sys.exit(main())
