"""Local stand-ins, on loopback, for the services the product talks to.

Importing this package puts the shared code (``functions/common/python``) on ``sys.path``, as the
Lambda layer does in AWS, so the demo, tests and benchmarks import ``tokenkeeper`` the same way.
"""

import sys
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SHARED_CODE = REPOSITORY_ROOT / "functions" / "common" / "python"

if str(SHARED_CODE) not in sys.path:
    sys.path.insert(0, str(SHARED_CODE))
