"""Configuration of E5-mistral embedding models.

Hub-bound file: it is copied next to the weights by ``save_pretrained`` and loaded with
``trust_remote_code=True`` where the ``e5mistral`` package is not installed, so it imports only
transformers.
"""

from transformers import MistralConfig

POOLING_MODES = ("last_token", "mean")


class E5MistralConfig(MistralConfig):
    r"""A [`MistralConfig`] with the two settings that turn a decoder into an embedding model.

    Args:
        pooling (`str`, *optional*, defaults to `"last_token"`):
            How token states become one vector. `"last_token"` takes the hidden state of the last
            attended token, which the EOS contract makes the appended `</s>` (the recipe);
            `"mean"` averages the attended tokens (the paper's ablation).
        normalize (`bool`, *optional*, defaults to `True`):
            L2-normalise the pooled embedding, so dot products are cosine similarities.
        **kwargs: every [`MistralConfig`] argument.

    Example:

    ```python
    >>> from e5mistral import E5MistralConfig, E5MistralModel
    >>> config = E5MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                          num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
    >>> model = E5MistralModel(config)
    ```
    """

    model_type = "e5_mistral"

    pooling: str = "last_token"
    normalize: bool = True

    def __post_init__(self, **kwargs):
        if self.pooling not in POOLING_MODES:
            raise ValueError(
                f"E5MistralConfig.pooling={self.pooling!r} is not supported; use one of {POOLING_MODES}."
            )
        super().__post_init__(**kwargs)


__all__ = ["E5MistralConfig"]
