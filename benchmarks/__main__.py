"""``python -m benchmarks [--quick] [--sections 1,4] [--output FILE]``: see :mod:`benchmarks.run`."""

import sys

from benchmarks.run import main

if __name__ == "__main__":
    sys.exit(main(command="python -m benchmarks"))
