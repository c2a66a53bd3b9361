"""Ctrl-C during training: finish the step, save a checkpoint, return from ``train`` (:class:`StopOnInterrupt`)."""

from __future__ import annotations

import signal
import threading

import torch
from transformers import TrainerCallback

__all__ = ["StopOnInterrupt"]


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C stops training cleanly: the step in progress finishes, a checkpoint is saved, ``train`` returns.

    A second Ctrl-C interrupts at once (``KeyboardInterrupt``), losing the step in progress. With
    several processes the request is shared at each step end, so all processes stop at the same
    step and save the same checkpoint. After ``train`` returns, ``stopped_at`` is the step saved
    (``None`` when training was not interrupted).

    Example:
        >>> stop = StopOnInterrupt(trainer.accelerator)  # doctest: +SKIP
        >>> trainer.add_callback(stop); trainer.train()  # doctest: +SKIP
        >>> if stop.stopped_at is not None: print(f"saved checkpoint-{stop.stopped_at}")  # doctest: +SKIP
    """

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.requested = False
        self.stopped_at: int | None = None
        self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.accelerator.is_main_process:
            print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop at once).", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor([int(self.requested)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item():
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
