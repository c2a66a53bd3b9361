"""Publish a trained model or a synthetic dataset to the Hugging Face Hub.

    python scripts/push_to_hub.py model --model out/my-e5 --repo-id me/my-e5 --results results.json
    python scripts/push_to_hub.py dataset --data synthetic-data --repo-id me/e5-synthetic

With ``--local-dir OUT`` nothing is uploaded: OUT receives exactly the folder that would be (add
``--push`` to upload it as well). The model folder holds the merged safetensors weights, the
custom code, the tokenizer, the Sentence-Transformers files and the card rendered from
``model_card.md`` with the run's facts (``--results`` from scripts/evaluate.py becomes the card's
``model-index``); ``--include-adapter`` adds the LoRA adapter alone under ``adapter/``. The
dataset folder is the one ``scripts/generate_data.py`` exported (Parquet configs, card, builder).
The token comes from HF_TOKEN or ``hf auth login`` and is never written to a file.

A mistake the user can fix (a missing folder or file, a non-empty --local-dir, no token, the Hub
unreachable, a refused token) is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import UserError, run_command

__all__ = ["check_inputs", "main", "make_parser", "publish"]

logger = logging.getLogger("push_to_hub")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="kind", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo-id", required=True, help="Hub repository, e.g. me/my-e5")
        p.add_argument(
            "--local-dir", default=None, help="write the upload folder here instead of uploading (must be new or empty)"
        )
        p.add_argument("--push", action="store_true", help="with --local-dir: upload the written folder too")
        p.add_argument("--private", action="store_true", help="create the repository as private")
        p.add_argument("--commit-message", default=None, help="commit message of the upload")

    model = sub.add_parser("model", help="upload a saved model folder with its rendered card")
    model.add_argument("--model", required=True, help="the saved model folder (scripts/train.py output)")
    model.add_argument(
        "--results", default=None, help="results JSON from scripts/evaluate.py, for the card and model-index"
    )
    model.add_argument(
        "--include-adapter", action="store_true", help="also upload <model>/adapter (the LoRA adapter alone)"
    )
    model.add_argument("--license", default=None, help="Hub license id for the card (left out when not given)")
    model.add_argument(
        "--training-args", default=None, help="training arguments JSON (default: <model>/training_args.json)"
    )
    model.add_argument(
        "--training-info", default=None, help="extra run facts JSON (default: <model>/training_info.json)"
    )
    model.add_argument(
        "--template", default=None, help="model card template (default: model_card.md of the repository)"
    )
    common(model)

    dataset = sub.add_parser("dataset", help="upload a dataset folder exported by scripts/generate_data.py")
    dataset.add_argument(
        "--data", required=True, help="the exported dataset folder (README.md + data/<config>/*.parquet)"
    )
    common(dataset)
    return parser


def check_inputs(args: argparse.Namespace) -> None:
    """Raise a UserError for a missing input folder or file, or a non-empty --local-dir."""
    if args.kind == "model":
        model = Path(args.model)
        if not (model / "config.json").is_file() or not list(model.glob("*.safetensors")):
            what = "does not exist" if not model.exists() else "has no config.json or no *.safetensors weights"
            raise UserError(
                f"--model {args.model} {what}; pass the saved model folder (the output_dir of scripts/train.py)"
            )
        for flag, value in (
            ("--results", args.results),
            ("--training-args", args.training_args),
            ("--training-info", args.training_info),
            ("--template", args.template),
        ):
            if value is not None and not Path(value).is_file():
                raise UserError(
                    f"{flag} {value} is not a file; give the path of an existing file or leave the flag out"
                )
        if args.include_adapter and not (model / "adapter" / "adapter_config.json").is_file():
            raise UserError(
                f"--include-adapter: {model / 'adapter' / 'adapter_config.json'} does not exist; "
                "train with keep_adapter: true, or leave the flag out"
            )
    else:
        data = Path(args.data)
        if not (data / "README.md").is_file() or not list(data.glob("data/*/*.parquet")):
            what = "does not exist" if not data.exists() else "has no README.md or no data/<config>/*.parquet"
            raise UserError(
                f"--data {args.data} {what}; pass the --output folder of scripts/generate_data.py "
                "(exported, not --no-export)"
            )
    if args.local_dir is not None:
        local = Path(args.local_dir)
        if local.exists() and (not local.is_dir() or any(local.iterdir())):
            raise UserError(
                f"--local-dir {args.local_dir} is not an empty folder; choose a new or empty folder, "
                "so that it holds exactly the upload"
            )


def publish(argv: list[str] | None = None) -> tuple[Path | None, str | None]:
    """Stage the folder (into --local-dir, or a temporary one) and push it unless only --local-dir
    is given; returns (the --local-dir folder or None, the commit URL or None).

    Example:
        >>> publish(["model", "--model", "out/e5", "--repo-id", "me/e5", "--local-dir", "stage"])  # doctest: +SKIP
        (PosixPath('stage'), None)
    """
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ..hub.publish import (
        LOCAL_DIR_INSTEAD,
        export_dataset_folder,
        export_model_folder,
        hub_errors_as_user_errors,
        require_hub_token,
        staged_push,
    )

    if args.push and args.local_dir is None:
        logger.warning("--push without --local-dir is the default behaviour; the flag changes nothing here.")
    check_inputs(args)
    push = args.local_dir is None or args.push
    if push:
        require_hub_token()  # before staging: fail in a second, not after copying the weights
    if args.kind == "model":

        def stage(folder: Path) -> Path:
            return export_model_folder(
                args.model,
                folder,
                args.repo_id,
                args.results,
                include_adapter=args.include_adapter,
                template_path=args.template,
                license=args.license,
                training_args=args.training_args,
                training_info=args.training_info,
            )
    else:

        def stage(folder: Path) -> Path:
            return export_dataset_folder(args.data, folder)

    instead = f"or leave out --push to only write {args.local_dir}" if args.local_dir else LOCAL_DIR_INSTEAD
    with hub_errors_as_user_errors(args.repo_id, instead=instead):
        folder, url = staged_push(
            stage,
            local_dir=args.local_dir,
            push=push,
            repo_id=args.repo_id,
            repo_type=args.kind,
            private=args.private,
            commit_message=args.commit_message,
        )
    if folder is not None:
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        print(f"wrote {len(files)} files to {folder}:")
        print("\n".join(f"  {f}" for f in files))
    if url:
        print(f"uploaded: {url}")
    return folder, url


def main(argv: list[str] | None = None) -> int:
    """:func:`publish`; returns 0. A :class:`~e5mistral.errors.UserError` propagates (``run_command`` prints it).

    Example:
        >>> main(["dataset", "--data", "synthetic-data", "--repo-id", "me/e5-synthetic"])  # doctest: +SKIP
        0
    """
    publish(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
