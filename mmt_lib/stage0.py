"""``python -m mmt_lib.stage0``: the command line of ``mmt_lib.method.stage0``, where its documentation lives."""

import sys

from mmt_lib.method.stage0 import main

if __name__ == "__main__":
    sys.exit(main())
