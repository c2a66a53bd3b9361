"""Generate E5-mistral synthetic training data with an LLM and export it as a Hub-ready folder.

The command is :mod:`e5mistral.cli.generate` (``python -m e5mistral.cli.generate --help``); this
file runs it, naming itself in the command that Ctrl-C prints to resume.
"""

import sys

from e5mistral.cli.generate import run

if __name__ == "__main__":
    sys.exit(run(prog=sys.argv[0]))
