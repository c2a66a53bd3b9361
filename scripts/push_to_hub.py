"""Publish a trained model or a synthetic dataset to the Hugging Face Hub.

The command is :mod:`e5mistral.cli.push` (``python -m e5mistral.cli.push --help``); this file runs it.
"""

import sys

from e5mistral.cli.push import main
from e5mistral.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
