"""``python -m reflectmgr``: see :mod:`reflectmgr.cli`."""

import sys

from .cli import main

sys.exit(main())
