"""``python -m mmt_lib.calibrate``: the command line of ``mmt_lib.experiments.calibrate``, where its documentation lives."""

import sys

from mmt_lib.experiments.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
