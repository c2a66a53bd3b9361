"""Merge trained embedding-model folders (or LoRA adapters) into one folder: linear or slerp.

    python scripts/merge.py out/a out/b --weights 0.5 0.5 --method linear --output out/merged
    python scripts/merge.py out/a out/b --method slerp --t 0.3 --output out/merged
    python scripts/merge.py out/a/adapter out/b/adapter --output out/merged   # adapters: merged into their base first

The merged folder has the inputs' config, code, tokenizer and Sentence-Transformers files (and a
``merge_info.json``), so it loads wherever a trained folder does. Inputs of different
architectures or settings, a missing tensor, a bad weight or a non-empty output folder are one
``error:`` line and exit status 2. See :mod:`e5mistral.merging` for the methods. The same command
is ``python -m e5mistral.cli.merge`` and the console script ``e5mistral-merge``.
"""

from __future__ import annotations

import argparse
import sys

from e5mistral.cli.common import run_as_command

__all__ = ["main", "make_parser", "run"]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folders", nargs="+", metavar="FOLDER", help="trained model folders or LoRA adapter folders (two or more)"
    )
    parser.add_argument("--output", required=True, help="the merged folder to write (new or empty)")
    parser.add_argument(
        "--method", default="linear", choices=("linear", "slerp"),
        help="linear (weighted average, default) or slerp (two models)",
    )
    parser.add_argument(
        "--weights", type=float, nargs="+", default=None,
        help="linear: one weight per model, normalised to sum to 1 (default: equal)",
    )
    parser.add_argument("--t", type=float, default=0.5, help="slerp: 0 is the first model, 1 the second (default 0.5)")
    parser.add_argument("--base", default=None, help="the base model of adapter inputs (default: each adapter's own)")
    return parser


def run(argv: list[str] | None = None):
    """Merge as ``argv`` says and print what was written; returns the merged folder.

    Example:
        >>> run(["out/a", "out/b", "--method", "slerp", "--t", "0.5", "--output", "out/merged"])  # doctest: +SKIP
        PosixPath('out/merged')
    """
    args = make_parser().parse_args(argv)
    from e5mistral.errors import UserError
    from e5mistral.merging import merge_folders

    if args.method == "slerp" and args.weights is not None:
        raise UserError("--weights is for --method linear; slerp takes --t.")
    folder = merge_folders(
        args.folders, args.output, method=args.method, weights=args.weights, t=args.t, base=args.base
    )
    if args.method == "slerp":
        how = f"t={args.t}"
    else:
        how = f"weights {' '.join(map(str, args.weights))}" if args.weights else "equal weights"
    print(f"merged {len(args.folders)} models ({args.method}, {how}) -> {folder}")
    return folder


def main(argv: list[str] | None = None) -> int:
    """The command: :func:`run` on ``argv`` (default: ``sys.argv[1:]``); the exit status (2: one ``error:`` line).

    Example:
        >>> main(["out/a", "out/b", "--output", "out/merged"])  # doctest: +SKIP
        0
    """
    return run_as_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
