"""One readable line per training log instead of a dict of strings: :func:`format_log_line` and the
two callbacks that print it (:class:`LogLinePrinter` without a progress bar, :class:`LogLineProgress`
above the bar). :class:`~e5mistral.training.trainer.E5Trainer` swaps them in for transformers' own.
"""

from __future__ import annotations

from transformers.trainer_callback import PrinterCallback, ProgressCallback

__all__ = ["SHOWN_METRICS", "LogLinePrinter", "LogLineProgress", "format_log_line"]

# The dev-split retrieval metrics a run shows: in its log lines, its before/after table and its card.
SHOWN_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")


def format_log_line(logs: dict, state) -> str:
    """One line for a log: ``step 10/42  loss 14.66  accuracy 0.0375  lr 8.92e-04``, or the eval metrics.

    Example:
        >>> from types import SimpleNamespace
        >>> format_log_line({"loss": 3.4104, "learning_rate": 6.2e-4, "epoch": 2.86}, SimpleNamespace(global_step=20, max_steps=42))
        'step 20/42  epoch 2.86  loss 3.410  lr 6.20e-04'
    """
    head = f"step {state.global_step}/{state.max_steps}" if state.max_steps else "before training"
    if any(key.startswith("eval_") for key in logs):
        shown = [f"{name} {logs['eval_' + name]:.4f}" for name in SHOWN_METRICS if "eval_" + name in logs]
        return f"{head}  eval: " + "  ".join(shown)
    if "train_runtime" in logs:
        return (
            f"{head}  done in {logs['train_runtime']:.1f} s ({logs.get('train_samples_per_second', 0):.1f} rows/s), "
            f"mean loss {logs.get('train_loss', float('nan')):.3f}"
        )
    parts = [head]
    if "epoch" in logs:
        parts.append(f"epoch {logs['epoch']:.2f}")
    for key, label, spec in (("loss", "loss", ".3f"), ("accuracy", "accuracy", ".3f"), ("grad_norm", "grad_norm", ".3g")):
        if key in logs:
            parts.append(f"{label} {logs[key]:{spec}}")
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    parts += [f"{k} {v}" for k, v in logs.items() if k not in ("epoch", "loss", "accuracy", "grad_norm", "learning_rate")]
    return "  ".join(parts)


class LogLinePrinter(PrinterCallback):
    """`PrinterCallback` (no progress bar) printing :func:`format_log_line`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            print(format_log_line(logs, state), flush=True)


class LogLineProgress(ProgressCallback):
    """`ProgressCallback` (the tqdm bar) writing :func:`format_log_line` above the bar."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            line = format_log_line(logs, state)
            (self.training_bar.write if self.training_bar is not None else print)(line)
