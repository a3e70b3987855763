"""Run the operator's command-line tool as ``python -m tokenkeeper``; see :mod:`tokenkeeper.cli`."""

import sys

from tokenkeeper.cli import main

sys.exit(main())
