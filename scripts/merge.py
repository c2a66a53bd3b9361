"""Merge trained embedding-model folders (or LoRA adapters) into one: ``e5mistral.cli.merge`` has the details.

    python scripts/merge.py out/a out/b --weights 0.5 0.5 --method linear --output out/merged
"""

import sys

from e5mistral.cli.merge import main

if __name__ == "__main__":
    sys.exit(main())
