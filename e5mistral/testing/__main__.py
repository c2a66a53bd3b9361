"""``python -m e5mistral.testing serve [--behave NAME] [--delay S] [--port P]``: the loopback server from a shell."""

from .server import main

main()
