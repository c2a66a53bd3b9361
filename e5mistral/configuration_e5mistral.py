"""Configuration of E5-mistral embedding models, on any supported decoder family.

Hub-bound file: it is copied next to the weights by ``save_pretrained`` and loaded with
``trust_remote_code=True`` where the ``e5mistral`` package is not installed, so it imports only
transformers.

One class, :class:`E5MistralConfig`, serves every backbone family: its ``backbone`` field names the
family (the family's own ``model_type``: ``"mistral"``, ``"llama"``, ``"qwen2"``, ``"qwen3"``,
``"gemma"``, ``"gemma2"``, ``"gemma3_text"``), and its attributes are exactly those that family's
own config class (``Qwen2Config``...) builds from the same arguments, with that class's defaults
and checks. ``model_type`` stays ``"e5_mistral"`` for all of them, so one ``AutoConfig`` /
``AutoModel`` registration and one ``auto_map`` entry cover every family.
"""

import transformers
from transformers import PreTrainedConfig

POOLING_MODES = ("last_token", "mean")
# Attention implementations checked to honour `is_causal=False` (the bidirectional mask transformers
# builds, and SDPA's own flag when there is no padding and so no mask). Flash and flex attention
# and kernels from the Hub are refused rather than trusted: none is tested here.
BIDIRECTIONAL_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")

# backbone (the family's `model_type` in transformers) -> that family's config class in transformers.
# Adding a family: its config class here and a three-line model class in modeling_e5mistral.py.
BACKBONE_CONFIG_CLASSES = {
    "mistral": "MistralConfig",
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "gemma": "GemmaConfig",
    "gemma2": "Gemma2Config",
    "gemma3_text": "Gemma3TextConfig",
}
_E5_FIELDS = ("backbone", "pooling", "normalize", "bidirectional")


def backbone_of(config_dict: dict) -> str:
    """The backbone family a config dictionary describes.

    An E5 config names it in ``backbone`` (older e5mistral folders, without the field, are Mistral);
    a plain family config (``LlamaModel.save_pretrained``, ``Qwen2ForCausalLM.save_pretrained``, the
    published e5-mistral's ``"mistral"``) is its own ``model_type``.

    Example: ``{"model_type": "qwen2", ...} -> "qwen2"``; ``{"model_type": "e5_mistral"} -> "mistral"``.
    """
    backbone = config_dict.get("backbone")
    if backbone:
        return backbone
    model_type = config_dict.get("model_type")
    return "mistral" if model_type in (None, "", E5MistralConfig.model_type) else model_type


def backbone_config_class(backbone: str) -> type:
    """The transformers config class of a supported ``backbone`` family; a clear error otherwise."""
    name = BACKBONE_CONFIG_CLASSES.get(backbone)
    if name is None:
        hint = ""
        if backbone == "gemma3":
            hint = (
                " A multimodal Gemma 3 checkpoint (model_type 'gemma3') is not a text decoder; use a text-only "
                "Gemma 3 checkpoint (model_type 'gemma3_text', e.g. saved by Gemma3ForCausalLM)."
            )
        raise ValueError(
            f"E5MistralConfig: backbone {backbone!r} is not supported; the supported decoder families are "
            f"{', '.join(BACKBONE_CONFIG_CLASSES)} (the checkpoint's config.json `model_type`).{hint}"
        )
    return getattr(transformers, name)


class E5MistralConfig(PreTrainedConfig):
    r"""The configuration of an E5 embedding model: a decoder family's own config plus pooling settings.

    Args:
        backbone (`str`, *optional*, defaults to `"mistral"`):
            The decoder family, as its transformers `model_type`: one of `"mistral"`, `"llama"`,
            `"qwen2"`, `"qwen3"`, `"gemma"`, `"gemma2"`, `"gemma3_text"`. A plain family config
            dictionary (with `model_type` `"qwen2"`, say) selects its family by itself.
        pooling (`str`, *optional*, defaults to `"last_token"`):
            How token states become one vector. `"last_token"` takes the hidden state of the last
            attended token, which the EOS contract makes the appended `</s>` (the recipe);
            `"mean"` averages the attended tokens (the paper's ablation).
        normalize (`bool`, *optional*, defaults to `True`):
            L2-normalise the pooled embedding, so dot products are cosine similarities.
        bidirectional (`bool`, *optional*, defaults to `False`):
            Remove the causal mask (llm2vec, NV-Embed): every token attends to every non-padding token
            of its text, before and after it. Off in the recipe. A family's sliding-window layers
            (Gemma 2/3, a Mistral with `sliding_window`) keep their window, on both sides
            (`|i - j| <= sliding_window`, transformers' bidirectional sliding-window mask). The model
            passes `is_causal=False` to the family's forward, which transformers 5 honours in its mask
            functions and attention calls; only the `eager` and `sdpa` implementations are allowed
            (see :func:`check_attention_direction`). A config dict with `is_causal: false` reads as
            `bidirectional=True`.
        **kwargs: every argument of the family's config class (`MistralConfig`, `Qwen2Config`, ...),
            with that class's defaults: the attributes are the ones it builds.

    Example:

    ```python
    >>> from e5mistral import E5MistralConfig, E5MistralModel
    >>> config = E5MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                          num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
    >>> model = E5MistralModel(config)                                  # Mistral, as before
    >>> qwen = E5MistralModel(E5MistralConfig(backbone="qwen2", hidden_size=64, intermediate_size=128,
    ...                                       num_hidden_layers=2, num_attention_heads=4, vocab_size=512))
    >>> type(qwen).__name__                                             # Qwen2Model + E5 pooling
    'E5Qwen2Model'
    >>> bidirectional = E5MistralModel.from_pretrained("out/my-e5", bidirectional=True)  # no causal mask
    >>> bidirectional.config.to_dict()["bidirectional"]                 # saved with the folder
    True
    ```
    """

    model_type = "e5_mistral"

    backbone: str = "mistral"
    pooling: str = "last_token"
    normalize: bool = True
    bidirectional: bool = False

    def __init__(self, **kwargs):
        # A custom __init__ (transformers then leaves it alone) so the family's config class sees the
        # caller's own arguments, and applies its own defaults to everything else.
        backbone = backbone_of(kwargs)
        kwargs.pop("model_type", None)
        kwargs.pop("backbone", None)
        pooling = kwargs.pop("pooling", "last_token")
        normalize = kwargs.pop("normalize", True)
        is_causal = kwargs.pop("is_causal", None)  # `bidirectional` says it; a stored value would mask every forward
        bidirectional = kwargs.pop("bidirectional", None)
        if bidirectional is None:
            bidirectional = is_causal is False
        if pooling not in POOLING_MODES:
            raise ValueError(f"E5MistralConfig.pooling={pooling!r} is not supported; use one of {POOLING_MODES}.")
        family = backbone_config_class(backbone)(**kwargs)  # the family's defaults, post-init and checks
        vars(self).update(vars(family))
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.bidirectional = bool(bidirectional)

    def __eq__(self, other):
        return isinstance(other, PreTrainedConfig) and vars(self) == vars(other)

    def to_backbone_config(self) -> PreTrainedConfig:
        """This configuration as the family's own config object (a `Qwen2Config`, ...), pooling left out.

        Example: ``Qwen2Model(config.to_backbone_config())`` is the plain backbone of ``config``.
        """
        cls = backbone_config_class(self.backbone)
        family = cls.__new__(cls)
        vars(family).update({k: v for k, v in vars(self).items() if k not in _E5_FIELDS})
        return family

    def to_dict(self):
        # Serialised by the family's own class (some adjust their output, e.g. Gemma 3's bidirectional
        # sliding window), then marked as an E5 config of that family.
        output = self.to_backbone_config().to_dict()
        output["model_type"] = self.model_type
        output.update({key: getattr(self, key) for key in _E5_FIELDS})
        return output

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        # A plain family folder (model_type "qwen2", ...) is read as an E5 config of that family,
        # without transformers' "model of type qwen2 to instantiate a model of type e5_mistral" warning.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict and config_dict.get("model_type") != cls.model_type:
            config_dict = {**config_dict, "backbone": backbone_of(config_dict), "model_type": cls.model_type}
        return config_dict, kwargs


def check_attention_direction(config) -> None:
    """Raise unless ``config``'s attention implementation honours ``config.bidirectional``.

    A causal config passes with any implementation. A bidirectional one needs `eager` or `sdpa`
    (:data:`BIDIRECTIONAL_ATTENTION_IMPLEMENTATIONS`): anything else could silently stay causal.

    Example: ``check_attention_direction(E5MistralConfig(bidirectional=True))`` passes (sdpa by default).
    """
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if getattr(config, "bidirectional", False) and implementation not in BIDIRECTIONAL_ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"E5MistralConfig.bidirectional=True needs attn_implementation 'eager' or 'sdpa', not "
            f"{implementation!r}: only those are checked to drop the causal mask (another one could stay causal "
            "silently). Load with attn_implementation='sdpa', or set bidirectional=False."
        )


__all__ = [
    "BACKBONE_CONFIG_CLASSES",
    "BIDIRECTIONAL_ATTENTION_IMPLEMENTATIONS",
    "E5MistralConfig",
    "backbone_config_class",
    "backbone_of",
    "check_attention_direction",
]
