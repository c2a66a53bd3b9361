"""Evaluate an embedding model on BEIR folders and/or MTEB tasks: ``e5mistral.cli.evaluate`` (its docstring has the details).

    python scripts/evaluate.py --model out/my-e5 --beir data/scifact --mteb STS12 --output results.json
"""

import sys

from e5mistral.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
