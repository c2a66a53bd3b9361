"""The commands of e5mistral, importable and runnable as ``python -m e5mistral.cli.<name>``."""
