"""Import a GGUF file (llama.cpp's format) as a plain transformers model folder, tokenizer included.

The command is :mod:`e5mistral.cli.import_gguf` (``python -m e5mistral.cli.import_gguf --help``); this file runs it.
"""

import sys

from e5mistral.cli.import_gguf import main
from e5mistral.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
