"""Training with the E5-mistral recipe: InfoNCE over in-batch, hard and cross-device negatives,
GradCache for big batches, LoRA, run by ``accelerate launch scripts/train.py --config <recipe>.yaml``.

Modules: ``arguments`` (E5TrainingArguments and the script's dataclasses), ``data`` (rows from the
Hub, files, folders and mixtures), ``collator`` (rows -> token batches), ``loss`` (info_nce, the
cross-device gather), ``gradcache``, ``sampler`` (duplicate-free / same-task batches), ``trainer``.
"""

from .arguments import E5ModelConfig, E5ScriptArguments, E5TrainingArguments
from .collator import E5Collator
from .data import load_training_data
from .gradcache import grad_cache
from .loss import gather_documents, info_nce
from .sampler import E5BatchSampler
from .trainer import E5Trainer

__all__ = [
    "E5BatchSampler",
    "E5Collator",
    "E5ModelConfig",
    "E5ScriptArguments",
    "E5Trainer",
    "E5TrainingArguments",
    "gather_documents",
    "grad_cache",
    "info_nce",
    "load_training_data",
]
