"""The trainer's model when FSDP2 or DeepSpeed ZeRO-3 shards it: evaluation through the engine, saving as its own class.

- :func:`model_for_evaluation`: the model every process embeds the dev split with (the engine
  under FSDP2 / ZeRO-3, preparing it first when the evaluation comes before training).
- :func:`own_class`: an FSDP2-sharded model has its own class again while it is saved, so a
  checkpoint keeps the model's code rather than torch's FSDP module.

Example:
    >>> with model_for_evaluation(trainer) as model:  # doctest: +SKIP
    ...     embeddings = E5Embedder(model, trainer.processing_class).encode(["a text"])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.integrations.deepspeed import deepspeed_init

from e5mistral.errors import UserError

__all__ = ["ThroughEngine", "model_for_evaluation", "own_class"]


@contextmanager
def model_for_evaluation(trainer) -> Iterator[nn.Module]:
    """The model every process of ``trainer`` embeds the dev split with: through the engine under FSDP and ZeRO-3.

    There the weights are sharded, and before training they are not even whole on every process
    (ZeRO-3 partitions them at load, FSDP's ``cpu_ram_efficient_loading`` loads them on rank 0
    only), so an evaluation before training first prepares the model (``Trainer.evaluation_loop``
    would, but its way fails under both engines in transformers 5.24 / accelerate 1.15):

    - FSDP2: accelerate's ``fsdp2_prepare_model`` shards it in place (broadcasting rank 0's
      weights); ``train`` then finds it sharded and only builds the optimizer over the shards.
    - DeepSpeed: an inference engine (as ``evaluation_loop`` sets up), destroyed afterwards (its
      hooks removed), so ``train`` builds its training engine on the bare model as without it.
    """
    accelerator = trainer.accelerator
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        yield accelerator.unwrap_model(trainer.model)
        return
    if trainer.is_fsdp_enabled:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(trainer.model, FSDPModule):
            if accelerator.state.fsdp_plugin.activation_checkpointing:
                raise UserError(
                    "evaluation before training under FSDP with fsdp_activation_checkpointing: true is not "
                    "supported (accelerate applies it when it shards the model for training); set "
                    "fsdp_activation_checkpointing: false and the training argument activation_checkpointing: true."
                )
            trainer.model = trainer.model_wrapped = fsdp2_prepare_model(accelerator, trainer.model)
        yield ThroughEngine(trainer.model, accelerator.unwrap_model(trainer.model).config)
        return
    inference_engine = None
    if trainer.deepspeed is None:  # before training
        deepspeed_init(trainer, num_training_steps=0, inference=True)
        inference_engine = accelerator.prepare(trainer.model)
    engine = inference_engine if inference_engine is not None else trainer.deepspeed
    try:
        yield ThroughEngine(engine, accelerator.unwrap_model(trainer.model).config)
    finally:
        if inference_engine is not None:
            inference_engine.destroy()
            accelerator._models.remove(inference_engine)


@contextmanager
def own_class(model: nn.Module) -> Iterator[None]:
    """Inside, an FSDP2-sharded ``model`` has its own class again (``FSDPModule`` subclasses dropped).

    FSDP2 re-classes the model in place (``FSDPE5MistralModel``, defined in torch), and
    ``save_pretrained`` writes the module of the model's class as the folder's custom code: a
    checkpoint would hold torch's FSDP files and an ``auto_map`` naming them.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded_class = type(model)
    if not isinstance(model, FSDPModule):
        yield
        return
    model.__class__ = next(c for c in sharded_class.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = sharded_class


class ThroughEngine(nn.Module):
    """An FSDP2 / DeepSpeed model as :class:`~e5mistral.E5Embedder` sees it, for the evaluation.

    Each call runs through the engine (which gathers the shards) under ``no_grad`` with inference
    mode off: E5Embedder encodes under ``torch.inference_mode``, and the weights an engine gathers
    there would become inference tensors, which training then cannot update in place. ``config``
    is the model's (a DeepSpeed engine's own ``config`` is DeepSpeed's).
    """

    def __init__(self, engine: nn.Module, config):
        super().__init__()
        self.engine = engine
        self.config = config
        self.training = engine.training  # E5Embedder puts back the mode it finds

    def forward(self, **inputs):
        with torch.inference_mode(False), torch.no_grad():
            return self.engine(**inputs)
