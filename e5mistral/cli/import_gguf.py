"""Import a GGUF file (llama.cpp's format) as a plain transformers model folder, tokenizer included.

    python scripts/import_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-135m [--dtype float32]

The folder (config.json, model.safetensors, generation_config.json, tokenizer files, the chat
template when the GGUF has one) then works as ``--model_name_or_path`` for scripts/train.py and as
``--local-model`` for scripts/generate_data.py. Quantised tensors are dequantised; the tokenizer
appends EOS (the EOS contract). A missing or non-.gguf file, a non-empty output folder or an
architecture transformers cannot load from GGUF is one ``error:`` line and exit status 2.
Needs the ``gguf`` package: ``pip install "e5mistral[gguf]"``.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import run_command

__all__ = ["main", "make_parser"]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("gguf_file", metavar="FILE.gguf", help="the GGUF file to import")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the model folder to write (new or empty)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the saved weights (default float32: every dequantised value kept)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Import the GGUF file and print what was written; returns 0.

    Example:
        >>> main(["SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2-135m"])  # doctest: +SKIP
        0
    """
    args = make_parser().parse_args(argv)
    from ..gguf import import_gguf

    start = time.monotonic()
    folder = import_gguf(args.gguf_file, args.out_dir, dtype=args.dtype)

    import json

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    files = sorted(p.name for p in folder.iterdir())
    print(
        f"imported {args.gguf_file} -> {folder} in {time.monotonic() - start:.1f} s: {config['architectures'][0]}, "
        f"{config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, "
        f"vocab {config.get('vocab_size')}, {args.dtype}; tokenizer appends EOS; "
        f"chat template: {'yes' if 'chat_template.jinja' in files else 'no'}\n"
        f"files: {', '.join(files)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
