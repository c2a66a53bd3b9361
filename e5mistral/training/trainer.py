"""E5Trainer: the Trainer with the E5 contrastive loss, retrieval evaluation and a merged final save.

What it changes in `transformers.Trainer`, and nothing else:

- ``compute_loss``: InfoNCE of the queries against all documents of the batch (and, with several
  processes, of all processes), through GradCache when ``mini_batch_size`` is set; in-batch
  accuracy is logged next to the loss. The options beyond the recipe (loss directions, Matryoshka,
  hard-negatives-only tasks) go through :mod:`e5mistral.training.objectives`. A non-finite
  embedding or loss stops training with a ``FloatingPointError`` naming the step, the batch rows
  and their texts; a batch of one row (no in-batch negatives) is warned about once.
- the column signature: the rows' text columns reach the collator (the model takes token ids).
- ``get_train_dataloader``: the duplicate-free / same-task batch sampler when asked for.
- ``evaluate``: retrieval metrics (nDCG@10, MRR@10, Recall@k...) on a dev split: each dev row's
  query must find its positive among all dev documents. They are logged as ``eval_ndcg@10``..., so
  ``metric_for_best_model: ndcg@10``, ``load_best_model_at_end`` and early stopping work.
- ``save_merged_model``: the final folder, LoRA merged, loadable by ``AutoModel.from_pretrained``,
  with the run's record and model card (:class:`~e5mistral.training.run_record.RunRecord`, a
  callback the trainer always holds; pass your own in ``callbacks`` to name the base model and data).
- engines (:mod:`e5mistral.training.engines`): the engine accelerate built must be the one the
  launch asks for (``self.engine`` names it); evaluation runs through FSDP2 / DeepSpeed ZeRO-3
  (preparing the model first when it comes before training), checkpoints keep the model's own
  code under FSDP2 (both in :mod:`e5mistral.training.sharded`), and the merged save reloads
  without ZeRO-3's ``zero.Init``.
- logs: one line each (:mod:`e5mistral.training.log_lines`) instead of a dict of strings.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import speed_metrics

from e5mistral.encoding import E5Embedder
from e5mistral.errors import UserError
from e5mistral.evaluation.metrics import retrieval_metrics
from e5mistral.evaluation.retrieval import exact_search
from e5mistral.instructions import format_query
from e5mistral.packing import check_packable, pack_features
from e5mistral.tokenization import clamp_max_length
from e5mistral.training.arguments import E5TrainingArguments
from e5mistral.training.collator import E5Collator
from e5mistral.training.data import SCHEMA_COLUMNS
from e5mistral.training.engines import check_engine, fsdp_on_cpu, zero3_init_disabled
from e5mistral.training.gradcache import embed_length_sorted, grad_cache, join_sides
from e5mistral.training.interrupt import StopOnInterrupt
from e5mistral.training.log_lines import LogLinePrinter, LogLineProgress
from e5mistral.training.loss import gather_documents, info_nce
from e5mistral.training.objectives import check_dims, check_tasks, loss_for_args, options_in_use
from e5mistral.training.run_record import RunRecord
from e5mistral.training.sampler import E5BatchSampler
from e5mistral.training.sharded import model_for_evaluation, own_class

__all__ = ["E5Trainer", "StopOnInterrupt"]  # StopOnInterrupt lives in .interrupt; imported from here too

logger = logging.getLogger(__name__)


def _embed(model: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).pooler_output  # (B, H)


def _embed_packed(model: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`_embed` of the padding-free form of ``features`` (``padding_free``): the same ``(B, H)``, no padding computed.

    The packed tensors are keyword arguments of the outermost ``model(...)``, so they pass through
    peft, DDP, FSDP2 and DeepSpeed wrappers to :class:`~e5mistral.E5EmbeddingMixin`'s forward.

    Example: ``_embed_packed(model, tokenizer(texts, padding=True, return_tensors="pt"))`` -> ``(len(texts), H)``.
    """
    return model(**pack_features(features)).pooler_output  # (B, H)


class E5Trainer(Trainer):
    """Train an :class:`~e5mistral.E5MistralModel` with the E5-mistral recipe.

    Args:
        model: the embedding model (an ``E5MistralModel``).
        args: :class:`E5TrainingArguments`.
        train_dataset / eval_dataset: rows in the training schema (see ``e5mistral.training.data``).
        processing_class: the tokenizer (EOS contract).
        peft_config: a peft ``LoraConfig``; the model is wrapped with it (the recipe trains LoRA).
        data_collator: defaults to :class:`E5Collator` built from ``args``.

    Example:
        >>> from e5mistral.testing import make_tiny_model, make_tiny_tokenizer
        >>> tok = make_tiny_tokenizer()
        >>> rows = Dataset.from_list([{"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{i}"],
        ...                            "instruction": "Find it", "task": "t", "language": "en"} for i in range(8)])
        >>> args = E5TrainingArguments("out", per_device_train_batch_size=4, max_steps=1, report_to="none")
        >>> trainer = E5Trainer(make_tiny_model(tok).train(), args, train_dataset=rows, processing_class=tok)
        >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        args: E5TrainingArguments,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        data_collator=None,
        **kwargs,
    ):
        if not isinstance(args, E5TrainingArguments):
            raise TypeError(
                f"E5Trainer needs E5TrainingArguments, got {type(args).__name__}; build the arguments with it."
            )
        if processing_class is None:
            raise ValueError("E5Trainer needs the tokenizer: pass processing_class=tokenizer.")
        # Texts are cut at the model's positions: a longer max length is clamped (with a warning) in the
        # arguments themselves, so training_args.json and the card record the length actually used.
        max_positions = getattr(model.config, "max_position_embeddings", None)
        for name in ("query_max_length", "passage_max_length"):
            setattr(args, name, clamp_max_length(getattr(args, name), max_positions, name))
        check_dims(args, model.config)
        check_tasks(args, train_dataset)
        if args.padding_free:
            check_packable(model.config)
        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        if data_collator is None:
            data_collator = E5Collator(
                processing_class,
                args.query_max_length,
                args.passage_max_length,
                args.num_negatives,
                max_position_embeddings=max_positions,
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        # The engine accelerate built must be the one the launch asked for (never a silent DDP).
        self.engine = check_engine(self)
        self._train_accuracy: list[torch.Tensor] = []
        self._warned_batch_of_one = False
        # One readable line per log instead of a dict of strings (PrinterCallback's, or the bar's write).
        if self.pop_callback(PrinterCallback) is not None:
            self.add_callback(LogLinePrinter())
        elif self.pop_callback(ProgressCallback) is not None:
            self.add_callback(LogLineProgress())
        # The run's record for the final save (a RunRecord passed in `callbacks` is the one used).
        records = [c for c in self.callback_handler.callbacks if isinstance(c, RunRecord)]
        self.run_record = records[0] if records else RunRecord()
        if not records:
            self.add_callback(self.run_record)

    def create_accelerator_and_postprocess(self) -> None:
        # On a machine without GPUs accelerate would not build FSDP from a CPU state (see engines.fsdp_on_cpu).
        with fsdp_on_cpu(self.args):
            super().create_accelerator_and_postprocess()

    # ---- data ----

    def _set_signature_columns_if_needed(self) -> None:
        # The collator reads the text columns; the model's forward takes token ids only.
        self._signature_columns = list(SCHEMA_COLUMNS)

    def get_train_dataloader(self) -> DataLoader:
        if not (self.args.no_duplicates_in_batch or self.args.same_task_batches):
            loader = super().get_train_dataloader()
            self._check_batches(len(loader), len(self.train_dataset))
            return loader
        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        texts = None
        if self.args.no_duplicates_in_batch:
            texts = [[q, p, *n] for q, p, n in zip(dataset["query"], dataset["positive"], dataset["negatives"])]
        sampler = E5BatchSampler(
            texts=texts,
            tasks=list(dataset["task"]) if self.args.same_task_batches else None,
            batch_size=self._train_batch_size,
            num_processes=self.args.world_size,
            no_duplicates=self.args.no_duplicates_in_batch,
            same_task=self.args.same_task_batches,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )
        self._check_batches(len(sampler), len(dataset))
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def _check_batches(self, num_batches: int, num_rows: int) -> None:
        """Refuse a run that would train 0 steps (and save the untrained model as if trained)."""
        if num_batches > 0:
            return
        args = self.args
        global_batch = args.per_device_train_batch_size * args.world_size
        shaped = [
            name for name in ("no_duplicates_in_batch", "same_task_batches", "dataloader_drop_last") if getattr(args, name)
        ]
        raise UserError(
            f"no full training batch can be formed: {num_rows} training rows, global batch {global_batch} "
            f"(per_device_train_batch_size={args.per_device_train_batch_size} x {args.world_size} processes)"
            + (f" with {', '.join(shaped)}" if shaped else "")
            + ", so training would run 0 steps. Lower per_device_train_batch_size, add rows"
            + (f", or turn off {' / '.join(shaped)}" if shaped else "")
            + "."
        )

    # ---- loss ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """InfoNCE over the batch (see ``e5mistral.training.loss``); GradCache when ``mini_batch_size`` or ``mini_batch_positions`` is set."""
        gather = self.args.gather_across_devices and self.args.world_size > 1

        def loss_from_embeddings(queries: torch.Tensor, documents: torch.Tensor):  # (B, H), (D, H)
            self._check_finite({"query": (queries, inputs["query"]), "document": (documents, inputs["document"])})
            self._warn_if_batch_of_one(queries.shape[0] * (self.args.world_size if gather else 1))
            if options_in_use(self.args):  # directions, Matryoshka, hard-negatives-only rows (objectives)
                loss, accuracy = loss_for_args(self.args, queries, documents, inputs, gather)
            else:  # the recipe
                ids, offset = inputs["document_ids"], 0  # (D,)
                if gather:
                    documents, ids, offset = gather_documents(documents, ids)  # (sum D_r, H), (sum D_r,)
                labels = offset + torch.arange(queries.shape[0], device=queries.device)  # (B,)
                loss, accuracy = info_nce(queries, documents, labels, self.args.temperature, ids)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss ({loss.item()}) at training step {self.state.global_step + 1} on a batch of "
                    f"{queries.shape[0]} queries ({self._texts(inputs['query'], range(min(3, queries.shape[0])))}...) "
                    f"and {documents.shape[0]} documents, with finite embeddings: check temperature="
                    f"{self.args.temperature} and the loss."
                )
            return loss, accuracy

        embed = _embed_packed if self.args.padding_free else _embed
        # Queries and documents share forwards (one plan over all their rows): fewer, fuller forwards.
        pad_id = getattr(self.processing_class, "pad_token_id", None) or 0
        joined = join_sides([inputs["query"], inputs["document"]], pad_id)
        if joined is None:
            sides, split = [inputs["query"], inputs["document"]], lambda reps: reps
        else:
            sides, split = [joined[0]], lambda reps: reps[0].split(joined[1])  # -> (B, H), (D, H)
        if self.args.uses_gradcache:
            loss, accuracy = grad_cache(
                model, embed, sides, lambda *reps: loss_from_embeddings(*split(reps)), self.args.mini_batch_size,
                self.args.mini_batch_positions, packed=self.args.padding_free,
            )
        else:
            # One graph for the whole batch, embedded in length-sorted chunks: no compute on most padding
            # (padding_free: one packed forward, no padding at all).
            if self.args.chunk_positions and not self.args.padding_free:
                reps = [embed_length_sorted(model, embed, side, self.args.chunk_positions) for side in sides]
            else:
                reps = [embed(model, side) for side in sides]
            loss, accuracy = loss_from_embeddings(*split(reps))
        if model.training:
            self._train_accuracy.append(accuracy)
        return (loss, {"accuracy": accuracy}) if return_outputs else loss

    def _check_finite(self, sides: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> None:
        """Stop on a NaN/inf embedding, naming the step, the rows of the batch and their texts.

        ``sides`` maps ``"query"``/``"document"`` to ``(embeddings (b, H), their tokenized batch)``.
        The verdict is shared by all processes, so every process stops (none hangs in a collective).
        """
        bad = {side: ~torch.isfinite(embeddings).all(dim=-1) for side, (embeddings, _) in sides.items()}  # (b,) each
        flag = torch.stack([rows.any() for rows in bad.values()]).any().int().reshape(1)  # (1,)
        if not self.accelerator.gather(flag).any():
            return
        found = []
        for side, rows in bad.items():
            if rows.any():
                index = rows.nonzero()[:, 0].tolist()
                layout = " (the rows' positives first, then their hard negatives)" if side == "document" else ""
                found.append(
                    f"{len(index)} of {rows.shape[0]} {side} rows{layout}: rows {index[:10]}, texts "
                    f"{self._texts(sides[side][1], index[:3])}"
                )
        raise FloatingPointError(
            f"non-finite embedding at training step {self.state.global_step + 1} (process "
            f"{self.accelerator.process_index}): {'; '.join(found) or 'on another process, this one is finite'}. "
            "The weights or activations have diverged: lower learning_rate, train in bf16 rather than fp16, or "
            "resume from an earlier checkpoint."
        )

    def _texts(self, features: dict[str, torch.Tensor], rows) -> list[str]:
        """The (shortened) texts of ``rows`` of a tokenized batch, for error messages."""
        texts = []
        for row in rows:
            ids = features["input_ids"][row][features["attention_mask"][row].bool()]
            text = self.processing_class.decode(ids.tolist(), skip_special_tokens=True)
            texts.append(text if len(text) <= 80 else text[:77] + "...")
        return texts

    def _warn_if_batch_of_one(self, num_queries: int) -> None:
        if num_queries > 1 or self._warned_batch_of_one:
            return
        self._warned_batch_of_one = True
        logger.warning(
            f"training step {self.state.global_step + 1}: a batch of one row has no in-batch negatives, so its query "
            "is scored against its hard negatives only (and the loss is 0, learning nothing, when it has none). "
            f"Raise per_device_train_batch_size (now {self.args.per_device_train_batch_size}; the recipe uses 2048 "
            "through GradCache), or set dataloader_drop_last=True if only the last batch is short."
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._train_accuracy:
            accuracy = torch.stack(self._train_accuracy).mean().to(self.args.device)
            logs["accuracy"] = round(self.accelerator.gather(accuracy.reshape(1)).mean().item(), 4)
            self._train_accuracy.clear()
        super().log(logs, start_time)

    # ---- evaluation ----

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Retrieval metrics on dev rows: each query ranks all distinct dev documents (positives and negatives).

        Every process computes the same metrics on the whole dev split (under ZeRO-3 and FSDP all
        processes must take part in each forward anyway); keep the dev split small (hundreds to a
        few thousand rows).
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        if dataset is None:
            raise ValueError("E5Trainer.evaluate needs dev rows: pass eval_dataset (script: eval_split_size > 0).")
        if isinstance(dataset, dict):
            metrics = {}
            for name, split in dataset.items():
                metrics.update(self.evaluate(split, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        start = time.time()
        metrics = {f"{metric_key_prefix}_{k}": round(v, 6) for k, v in self.retrieval_scores(dataset).items()}
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=len(dataset)))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def retrieval_scores(self, dataset: Dataset, k_values=(1, 10, 100)) -> dict[str, float]:
        """nDCG / MRR / Recall / MAP / Precision at ``k_values`` of the dev rows' queries over their documents."""
        corpus: dict[str, str] = {}  # text -> doc id
        for text in [*dataset["positive"], *(n for negs in dataset["negatives"] for n in negs)]:
            corpus.setdefault(text, f"d{len(corpus)}")
        queries = [format_query(i, q) for i, q in zip(dataset["instruction"], dataset["query"])]
        qrels = {f"q{i}": {corpus[positive]: 1} for i, positive in enumerate(dataset["positive"])}

        with self._model_for_evaluation() as model, self.compute_loss_context_manager():
            embedder = E5Embedder(
                model,
                self.processing_class,
                batch_size=self.args.per_device_eval_batch_size,
                padding_free=self.args.padding_free,
            )
            query_embeddings = embedder.encode(queries, max_length=self.args.query_max_length)  # (Q, H)
            document_embeddings = embedder.encode(list(corpus), max_length=self.args.passage_max_length)  # (D, H)
        top_scores, top_docs = exact_search(query_embeddings, document_embeddings, max(k_values))  # (Q, k)
        doc_ids = list(corpus.values())
        run = {
            f"q{i}": {doc_ids[d]: s for d, s in zip(docs.tolist(), vals.tolist())}
            for i, (docs, vals) in enumerate(zip(top_docs, top_scores))
        }
        return retrieval_metrics(run, qrels, k_values)

    def _model_for_evaluation(self):
        """The model every process embeds the dev split with (:func:`e5mistral.training.sharded.model_for_evaluation`)."""
        return model_for_evaluation(self)

    # ---- saving ----

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        with own_class(self.model):  # an FSDP2 checkpoint keeps the model's own code (see sharded.own_class)
            super()._save(output_dir, state_dict)

    def save_merged_model(self, output_dir: str | None = None) -> Path:
        """Write the final embedding-model folder (weights, code, tokenizer, Sentence-Transformers files).

        The trained weights are first saved by ``Trainer.save_model`` (which gathers them under
        ZeRO-3 and FSDP); then the main process reloads the base model, merges the LoRA adapter
        into it and writes the folder with :func:`e5mistral.save_model_folder`. The adapter alone
        stays in ``<output_dir>/adapter`` when ``keep_adapter`` is set. Last, the main process writes
        the run's record and the model card rendered from it (``training_args.json``,
        ``trainer_state.json``, ``training_info.json``, ``README.md``: see
        :mod:`e5mistral.training.run_record`). Call it on every process. Under ZeRO-3 the main
        process loads without ``zero.Init`` (which would wait for the others).
        """
        output_dir = Path(output_dir or self.args.output_dir)
        unwrapped = self.accelerator.unwrap_model(self.model)
        is_peft = isinstance(unwrapped, PeftModel)
        staging = output_dir / ("adapter" if is_peft else "_trained_weights")
        self.save_model(str(staging))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            with zero3_init_disabled():
                self._write_merged_folder(unwrapped, is_peft, staging, output_dir)
            self.run_record.write(output_dir, self)
        self.accelerator.wait_for_everyone()
        return output_dir

    def _write_merged_folder(self, unwrapped, is_peft: bool, staging: Path, output_dir: Path) -> None:
        """The main process's part of :meth:`save_merged_model`: reload, merge, write the folder."""
        from e5mistral.export import save_model_folder
        from e5mistral.modeling_e5mistral import E5MistralModel

        dtype = next(unwrapped.parameters()).dtype
        if is_peft:
            base_path = unwrapped.peft_config["default"].base_model_name_or_path
            if not base_path:
                raise ValueError(
                    "cannot merge the adapter: the base model has no name_or_path to reload it from; load it with "
                    "E5MistralModel.from_pretrained(<folder or Hub id>) before training (a model built in memory "
                    "can be written with save_model_folder first)."
                )
            # the E5 settings the trained model was loaded with (a `pooling: mean` or `bidirectional` override),
            # not the base folder's
            names = ("pooling", "normalize", "bidirectional")
            settings = {k: getattr(unwrapped.config, k) for k in names if hasattr(unwrapped.config, k)}
            base = E5MistralModel.from_pretrained(base_path, dtype=dtype, **settings)
            merged = PeftModel.from_pretrained(base, str(staging)).merge_and_unload()
        else:
            merged = E5MistralModel.from_pretrained(str(staging), dtype=dtype)
        max_seq_length = clamp_max_length(self.args.passage_max_length, merged.config, "passage_max_length")
        truncate_dim = self.args.truncate_dim  # written into config_sentence_transformers.json
        save_model_folder(
            merged, self.processing_class, output_dir, max_seq_length=max_seq_length, truncate_dim=truncate_dim
        )
        if not (is_peft and self.args.keep_adapter):
            shutil.rmtree(staging)
