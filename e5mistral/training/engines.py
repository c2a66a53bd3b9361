"""Which distributed engine trains (DDP, FSDP, DeepSpeed ZeRO-3), and the same engines on CPU over gloo.

``accelerate launch --config_file configs/accelerate/<engine>.yaml`` tells each process what the
config asks for through environment variables (``ACCELERATE_USE_FSDP``, ``ACCELERATE_USE_DEEPSPEED``,
``WORLD_SIZE``...). :func:`requested_engine` reads them, :func:`running_engine` names what
accelerate actually built, and :func:`check_engine` stops training (a :class:`UserError`) when the
two differ or when the engine cannot train this recipe correctly: never a silent DDP.

The CPU shim. accelerate 1.15 builds FSDP and DeepSpeed only for GPU-style devices: on a machine
without GPUs the processes of a launch either each run alone (no backend is chosen) or, with
``ACCELERATE_USE_CPU=1``, fall back to plain DDP, whatever the config says. torch FSDP2 and
DeepSpeed themselves run on CPU over gloo, so two small steps make the requested engine run there:

1. :func:`select_cpu_backend` (from ``E5TrainingArguments.__post_init__``): a multi-process launch
   on a machine without an accelerator trains with ``use_cpu=True``, which gives accelerate's
   ``MULTI_CPU`` state over gloo (DDP; ``ACCELERATE_USE_CPU=1`` is no longer needed for it), and
   drops ``ACCELERATE_USE_CPU`` when FSDP or DeepSpeed is asked for (accelerate reads that variable
   as "not DeepSpeed"). accelerate then builds DeepSpeed itself.
2. :func:`fsdp_on_cpu` (around the Trainer's ``Accelerator()``): accelerate enables FSDP only when
   the state is a multi-device type and ``MULTI_CPU`` is not in its list, so for that one decision
   the state reads ``MULTI_GPU``; the device stays the CPU and accelerate then records ``FSDP``.

Nothing else changes: on GPUs neither step does anything.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from e5mistral.errors import UserError

__all__ = [
    "check_engine",
    "count_parameters",
    "fsdp_on_cpu",
    "has_accelerator",
    "require_engine_packages",
    "requested_engine",
    "running_engine",
    "select_cpu_backend",
    "zero3_init_disabled",
]

CONFIGS = "configs/accelerate/{ddp,fsdp,deepspeed_zero3}.yaml"


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def has_accelerator() -> bool:
    """Whether this machine has a GPU (or another accelerator torch can train on)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def requested_engine(args=None) -> str:
    """What the launch asks for: ``"DeepSpeed"``, ``"FSDP"``, ``"DDP"`` or ``"single process"``.

    From accelerate's launch variables, or from the ``deepspeed`` / ``fsdp`` training arguments.

    Example:
        >>> os.environ.get("ACCELERATE_USE_FSDP") is None and requested_engine() in ("DDP", "single process")
        True
    """
    if _flag("ACCELERATE_USE_DEEPSPEED") or (args is not None and getattr(args, "deepspeed", None)):
        return "DeepSpeed"
    if _flag("ACCELERATE_USE_FSDP") or (args is not None and getattr(args, "fsdp", None)):
        return "FSDP"
    return "DDP" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single process"


def running_engine(accelerator) -> str:
    """What accelerate built: ``"DeepSpeed ZeRO-3"`` (or another stage), ``"FSDP"`` (FSDP2), ``"FSDP1"``,
    ``"DDP"`` or ``"single process"``."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    if kind == DistributedType.FSDP:
        return "FSDP" if getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) == 2 else "FSDP1"
    if kind == DistributedType.NO:
        return "single process"
    return "DDP"


def require_engine_packages(args) -> None:
    """A DeepSpeed launch without DeepSpeed installed is one line naming the extra to install."""
    import importlib.util

    if requested_engine(args) == "DeepSpeed" and importlib.util.find_spec("deepspeed") is None:
        raise UserError(
            "the launch asks for DeepSpeed (configs/accelerate/deepspeed_zero3.yaml) but it is not installed: "
            'pip install -e ".[deepspeed]" (or pip install "deepspeed>=0.19.8").'
        )


def select_cpu_backend(args) -> None:
    """Step 1 of the CPU shim: a multi-process launch on a machine without GPUs trains on CPU over gloo.

    Called before ``TrainingArguments`` sets up the devices. Without it accelerate picks no
    backend there and each process trains alone.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or has_accelerator():
        return
    args.use_cpu = True
    if requested_engine(args) in ("FSDP", "DeepSpeed"):
        # accelerate reads ACCELERATE_USE_CPU as "no DeepSpeed" (and its CPU state is left to step 2
        # for FSDP); use_cpu already says CPU to transformers, so the variable (which the old error
        # message advised) only stood between the config and the engine it asks for.
        os.environ.pop("ACCELERATE_USE_CPU", None)


@contextmanager
def fsdp_on_cpu(args):
    """Step 2 of the CPU shim: around ``Accelerator()``, let accelerate enable FSDP on a CPU (gloo) state.

    accelerate 1.15 turns a launch into FSDP only from a multi-device state type and leaves
    ``MULTI_CPU`` out of that list. For this decision alone the shared state reads ``MULTI_GPU``;
    the device stays the CPU, and accelerate then records ``FSDP`` as the state's type.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    shared = PartialState._shared_state
    shim = requested_engine(args) == "FSDP" and shared.get("distributed_type") == DistributedType.MULTI_CPU
    if shim:
        shared["distributed_type"] = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        if shim and shared.get("distributed_type") == DistributedType.MULTI_GPU:  # accelerate did not take it
            shared["distributed_type"] = DistributedType.MULTI_CPU


def check_engine(trainer) -> str:
    """Stop (``UserError``) unless the engine running is the one asked for and can train this run correctly.

    Returns the running engine's name, for the start line.
    """
    args, accelerator = trainer.args, trainer.accelerator
    asked, running = requested_engine(args), running_engine(accelerator)
    if not running.startswith(asked):
        hint = ""
        if asked in ("FSDP", "DeepSpeed"):
            hint = (
                " On a machine without GPUs, launch 2 or more processes with the same config and without "
                "ACCELERATE_USE_CPU; the project runs FSDP and DeepSpeed over gloo there itself."
            )
        raise UserError(
            f"the launch asks for {asked} but accelerate built {running} ({accelerator.num_processes} processes), so "
            f"training would not run the engine the config names.{hint} Check the launch command and "
            f"--config_file ({CONFIGS})."
        )
    gradcache = args.uses_gradcache
    if running == "FSDP1":
        raise UserError(
            "FSDP1 (fsdp_version: 1) is not supported: its chunked forwards and GradCache are not tested here. Set "
            "fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml)."
        )
    if running.startswith("DeepSpeed") and running != "DeepSpeed ZeRO-3" and gradcache:
        raise UserError(
            f"GradCache (mini_batch_size={args.mini_batch_size}, mini_batch_positions={args.mini_batch_positions}) under {running} is not supported: it is tested "
            "under ZeRO-3 (the recipe's, configs/accelerate/deepspeed_zero3.yaml), FSDP and DDP. Use zero_stage: 3, "
            "or unset mini_batch_size and mini_batch_positions."
        )
    if gradcache and running in ("FSDP", "DeepSpeed ZeRO-3") and args.gradient_accumulation_steps > 1:
        raise UserError(
            f"gradient_accumulation_steps={args.gradient_accumulation_steps} with GradCache under {running} is not "
            "supported (each micro-batch would need its own deferred reduction, and accumulation adds no in-batch "
            "negatives): raise per_device_train_batch_size and keep mini_batch_size for memory instead."
        )
    return running


def count_parameters(model, trainable_only: bool = True) -> int:
    """Parameters of ``model``, counted whole also when ZeRO-3 has partitioned them (``ds_numel``)."""
    return sum(
        getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad or not trainable_only
    )


@contextmanager
def zero3_init_disabled():
    """Load a model on one process (``from_pretrained``) while ZeRO-3 trains, without ``zero.Init``.

    Under ZeRO-3 transformers builds every model inside ``deepspeed.zero.Init``, which partitions
    it across processes with collectives: one process loading alone would wait for the others
    forever. Inside this context transformers sees no DeepSpeed config and loads a plain, whole
    model; the config is put back on exit. (accelerate's ``zero3_init_context_manager(False)`` keeps
    the ZeRO-3 config, so transformers would still partition.)
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref  # private: the public API can unset, not read it
    config = reference() if reference is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)
