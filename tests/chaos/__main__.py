"""`python -m tests.chaos`: one chaos run from the command line (see tests/chaos/__init__.py)."""

import sys

from tests.chaos.cli import main

sys.exit(main())
