"""e5mistral: train and use text-embedding models from decoder LLMs, the E5-mistral way.

``import e5mistral`` registers :class:`E5MistralConfig` and :class:`E5MistralModel` with the
transformers Auto classes, so ``AutoModel.from_pretrained(folder)`` works without
``trust_remote_code``; saved folders also carry the code for ``trust_remote_code=True``.
"""

from transformers import AutoConfig, AutoModel

from .configuration_e5mistral import E5MistralConfig
from .encoding import E5Embedder
from .export import save_model_folder
from .instructions import INSTRUCTIONS, format_query, get_instruction
from .modeling_e5mistral import (
    CheckpointMismatchError,
    E5EmbeddingMixin,
    E5MistralModel,
    E5MistralModelOutput,
    last_token_pool,
    mean_pool,
)
from .packing import pack_features  # also registers the packed attention (e5mistral.packing)
from .tokenization import EOSContractError, appends_eos, check_eos, ensure_eos

__version__ = "0.1.0"

AutoConfig.register(E5MistralConfig.model_type, E5MistralConfig, exist_ok=True)
AutoModel.register(E5MistralConfig, E5MistralModel, exist_ok=True)
# save_pretrained writes auto_map and copies the two Hub-bound files next to the weights.
E5MistralConfig.register_for_auto_class()
E5MistralModel.register_for_auto_class("AutoModel")

__all__ = [
    "INSTRUCTIONS",
    "CheckpointMismatchError",
    "E5EmbeddingMixin",
    "E5Embedder",
    "E5MistralConfig",
    "E5MistralModel",
    "E5MistralModelOutput",
    "EOSContractError",
    "appends_eos",
    "check_eos",
    "ensure_eos",
    "format_query",
    "get_instruction",
    "last_token_pool",
    "mean_pool",
    "pack_features",
    "save_model_folder",
]
