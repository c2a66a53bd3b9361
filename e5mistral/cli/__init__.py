"""The project's commands, each a module with ``main(argv=None) -> int`` (exit status: 0, 2 for a
:class:`~e5mistral.errors.UserError` printed as one ``error:`` line, 130 when interrupted).

Run them as ``python -m e5mistral.cli.<name>``, as the console scripts ``setup.cfg`` declares, or
through the thin ``scripts/*.py`` entry points (``accelerate launch scripts/train.py`` keeps working):

- ``train`` (``e5mistral-train``, ``scripts/train.py``): train an embedding model.
- ``generate`` (``e5mistral-generate``, ``scripts/generate_data.py``): generate synthetic training data.
- ``evaluate`` (``e5mistral-evaluate``, ``scripts/evaluate.py``): BEIR folders and MTEB tasks -> a results JSON.
- ``push`` (``e5mistral-push``, ``scripts/push_to_hub.py``): push a model or dataset folder to the Hub.
- ``mine`` (``e5mistral-mine``, ``scripts/mine_hard_negatives.py``): mine hard negatives into training rows.
- ``import_gguf`` (``e5mistral-import-gguf``, ``scripts/import_gguf.py``): a GGUF file -> a safetensors folder.

Example:
    >>> from e5mistral.cli import evaluate
    >>> evaluate.main(["--model", "outputs/e5-demo", "--beir", "data/scifact", "--output", "results.json"])  # doctest: +SKIP
    0

Nothing is imported here: each command imports what it needs when it runs.
"""
