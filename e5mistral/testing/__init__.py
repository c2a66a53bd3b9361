"""Test kit: tiny random E5-mistral models and a loopback OpenAI-compatible server; no download needed.

The tokenizer is a byte-level BPE trained in-process with `tokenizers` on a small bundled text,
with Mistral's special tokens (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2) and the EOS contract.

:class:`ScriptedServer` answers ``/v1/chat/completions`` on 127.0.0.1 as a behaviour hook says, in a
thread; :class:`ServerProcess` runs it as a child process to kill (:mod:`e5mistral.testing.server`,
standard library only). ``python -m e5mistral.testing serve`` runs it from a shell with answers
valid for every task kind (its URL is printed on the first line).
"""

from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ..configuration_e5mistral import E5MistralConfig
from ..modeling_e5mistral import E5MistralModel
from ..tokenization import ensure_eos
from .server import BEHAVIOURS, ScriptedServer, ServerProcess, always_valid, valid_answer

__all__ = [
    "WITHOUT_E5MISTRAL",
    "run_gloo_workers",
    "make_tiny_chat_model",
    "WORDS",
    "make_training_rows",
    "BEHAVIOURS",
    "ScriptedServer",
    "ServerProcess",
    "always_valid",
    "assert_close",
    "fresh_process_env",
    "make_tiny_model",
    "make_tiny_model_folder",
    "make_tiny_tokenizer",
    "tiny_config",
    "valid_answer",
]


#: Words the tiny tokenizer knows (they are in its training corpus), for texts that must not fall
#: apart into characters.
WORDS = ("river", "mountain", "coffee", "engine", "violin", "planet", "garden", "castle", "tiger", "bridge")


def make_training_rows(n: int, negatives: int = 1, task: str = "retrieval", words=WORDS) -> list[dict]:
    """``n`` rows of the README's training schema, word ``i % len(words)`` in row ``i``'s texts.

    Example: ``make_training_rows(2)[1]`` is ``{"query": "mountain 1", "positive": "about the
    mountain 1", "negatives": ["about the violin 2"], "instruction": "Find the passage", ...}``.
    """
    k = len(words)
    return [
        {
            "query": f"{words[i % k]} {i}",
            "positive": f"about the {words[i % k]} {i}",
            "negatives": [f"about the {words[(i + 3 + j) % k]} {i + 1 + j}" for j in range(negatives)],
            "instruction": "Find the passage",
            "task": task,
            "language": "en",
        }
        for i in range(n)
    ]



def _corpus_lines(extra_texts=()) -> list[str]:
    text = resources.files("e5mistral").joinpath("data/tokenizer_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()] + list(extra_texts)


def make_tiny_tokenizer(vocab_size: int = 1000, extra_texts=(), padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained locally, appending EOS (pad = eos, as in Mistral).

    Example:

    ```python
    >>> tok = make_tiny_tokenizer()
    >>> tok("hello")["input_ids"][-1] == tok.eos_token_id
    True
    ```
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus_lines(extra_texts), trainer=trainer)
    # Mistral's own tokenizer adds BOS only; ensure_eos below upgrades it to "<s> $A </s>".
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        padding_side=padding_side,
        model_max_length=512,
    )
    return ensure_eos(tokenizer)


def tiny_config(vocab_size: int = 1000, **overrides) -> E5MistralConfig:
    """A few-thousand-parameter Mistral shape: 2 layers, hidden 32, grouped-query attention."""
    return tiny_backbone_config("mistral", vocab_size, **overrides)


def make_tiny_model(tokenizer=None, seed: int = 0, **config_overrides) -> E5MistralModel:
    """A random tiny :class:`E5MistralModel` sized to ``tokenizer`` (float32, eval mode).

    Example:

    ```python
    >>> tok = make_tiny_tokenizer(); model = make_tiny_model(tok)
    >>> model(**tok(["hi"], return_tensors="pt")).pooler_output.shape
    torch.Size([1, 32])
    ```
    """
    vocab_size = len(tokenizer) if tokenizer is not None else 1000
    torch.manual_seed(seed)
    model = E5MistralModel(tiny_config(vocab_size=vocab_size, **config_overrides))
    return model.eval()


def make_tiny_model_folder(path, seed: int = 0, **config_overrides) -> Path:
    """Save a tiny random model as a Hub-style folder (weights, code, tokenizer, ST files).

    Example:

    ```python
    >>> folder = make_tiny_model_folder("/tmp/tiny-e5")
    >>> AutoModel.from_pretrained(folder, trust_remote_code=True)
    ```
    """
    from ..export import save_model_folder

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, seed=seed, **config_overrides)
    return save_model_folder(model, tokenizer, path)


# The first lines of a script run in a fresh process that must not import this package (remote code
# and Sentence-Transformers on a saved folder, as on a machine without e5mistral): any `import
# e5mistral` there raises ImportError, whatever is installed.
WITHOUT_E5MISTRAL = """
import json, sys
sys.modules["e5mistral"] = None
try:
    import e5mistral  # noqa: F401
    raise SystemExit("e5mistral is importable in the fresh process")
except ImportError:
    pass
"""


def run_gloo_workers(script: str, *args: str, world_size: int = 2, timeout: float = 120) -> None:
    """Run ``python script *args`` as ``world_size`` processes of one gloo group (``init_process_group("gloo")``
    reads ``MASTER_ADDR``/``MASTER_PORT``/``WORLD_SIZE``/``RANK``), the repository on their path; assert
    that every one exits 0. The worker should end with :func:`e5mistral.cli.common.exit_process`.

    Example:
        >>> run_gloo_workers(__file__, "--worker", str(tmp_path))  # doctest: +SKIP
    """
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world_size),
    }
    workers = [
        subprocess.Popen([sys.executable, script, *args], env={**env, "RANK": str(rank)}) for rank in range(world_size)
    ]
    codes = [worker.wait(timeout=timeout) for worker in workers]
    assert codes == [0] * world_size, f"worker exit codes {codes}"


def fresh_process_env(tmp_path) -> dict:
    """The environment of a process that must not see this one's Python path, token or module cache.

    Offline (``HF_HUB_OFFLINE``), with its own ``HF_MODULES_CACHE`` under ``tmp_path``, as a user's
    fresh process on another machine would load a saved folder's remote code.
    """
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "HF_TOKEN"}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_MODULES_CACHE=str(Path(tmp_path) / "modules"),
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def assert_close(actual, expected, rtol: float = 1e-5, what: str = "values") -> None:
    """Assert ``||actual - expected|| <= rtol * max(||actual||, ||expected||)``, in float64.

    The tolerance scales with the magnitude compared, so float32 rounding that differs from one
    CPU to another (a loss of 32.25826 against 32.25825) passes, while a real difference fails.
    Works on tensors, arrays and numbers; the shapes must match.

    Example:

    ```python
    >>> assert_close(torch.tensor([32.25826]), torch.tensor([32.25825]))
    >>> assert_close(torch.tensor([1.0]), torch.tensor([1.1]))
    Traceback (most recent call last):
    ...
    AssertionError: values differ: |actual - expected| = 0.1 > 1e-05 x 1.1
    ```
    """
    a = torch.as_tensor(actual).detach().to("cpu", torch.float64)
    e = torch.as_tensor(expected).detach().to("cpu", torch.float64)
    assert a.shape == e.shape, f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(e.shape)}"
    error = (a - e).norm().item()
    scale = max(a.norm().item(), e.norm().item())
    assert error <= rtol * scale, f"{what} differ: |actual - expected| = {error:.3g} > {rtol:g} x {scale:.3g}"


# ------------------------------------------------------------------------------------------
# Tiny models of every supported backbone family
# ------------------------------------------------------------------------------------------
BACKBONES = ("mistral", "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")

# What each family needs on top of the shared tiny shape: small heads where the family's default
# head_dim is large, short sliding windows so sliding layers really slide, both Gemma 3 layer kinds,
# and Llama's optional attention biases (so every family but Mistral and Gemma has biases).
_BACKBONE_OVERRIDES = {
    "mistral": {"sliding_window": None},
    "llama": {"attention_bias": True},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 6},
    "gemma3_text": {
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        "sliding_window": 6,
        "layer_types": ["sliding_attention", "full_attention"],
    },
}


def sgd_step_arguments(tmp_path, **overrides):
    """``E5TrainingArguments`` of one plain SGD step (lr 0.5, no decay, clipping, saving or logging), the
    setting in which a trainer step is compared with a hand-written one; ``overrides`` win.

    Example: ``E5Trainer(model, sgd_step_arguments(tmp_path, mini_batch_size=2), train_dataset=rows, ...)``.
    """
    from e5mistral.training.arguments import E5TrainingArguments

    defaults = dict(
        output_dir=str(Path(tmp_path) / "out"), per_device_train_batch_size=8, max_steps=1, optim="sgd",
        learning_rate=0.5, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, temperature=0.05,
        report_to="none", save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )
    return E5TrainingArguments(**{**defaults, **overrides})


def tiny_backbone_kwargs(backbone: str, vocab_size: int = 1000, **overrides) -> dict:
    """The config arguments of a few-thousand-parameter model of ``backbone``'s family.

    The shape of :func:`tiny_config` (2 layers, hidden 32, grouped-query attention, the tiny
    tokenizer's special tokens) plus what the family needs; ``overrides`` win.

    Example: ``Qwen2Config(**tiny_backbone_kwargs("qwen2"))`` is a tiny transformers Qwen2 config.
    """
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    kwargs.update(_BACKBONE_OVERRIDES[backbone])
    kwargs.update(overrides)
    return kwargs


def tiny_backbone_config(backbone: str, vocab_size: int = 1000, **overrides) -> E5MistralConfig:
    """An :class:`E5MistralConfig` of :func:`tiny_backbone_kwargs` (``pooling``/``normalize`` may be overridden).

    Example: ``E5MistralModel(tiny_backbone_config("qwen3"))`` is a tiny random ``E5Qwen3Model``.
    """
    return E5MistralConfig(backbone=backbone, **tiny_backbone_kwargs(backbone, vocab_size, **overrides))


def randomize_biases_and_norms(model, seed: int = 0, scale: float = 0.5) -> list[str]:
    """Fill every bias and norm weight of ``model`` with random values; returns their names.

    Freshly built models have zero biases and unit (Gemma: zero) norm weights, so a loader that
    dropped one, or a model class that ignored one, would still look right; random values make it
    show. Example: ``names = randomize_biases_and_norms(model)`` (q/k/v biases, q_norm, k_norm, ...).
    """
    generator = torch.Generator().manual_seed(seed)
    names = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or "norm" in name.rsplit(".", 2)[-2]:
                param.copy_(1.0 + scale * torch.randn(param.shape, generator=generator))
                names.append(name)
    return names


def make_tiny_backbone_model(backbone: str, tokenizer=None, seed: int = 0, **config_overrides) -> E5MistralModel:
    """A tiny random E5 model of ``backbone``'s family (``E5Qwen2Model``, ...), biases and norms random, eval mode.

    Example:

    ```python
    >>> tok = make_tiny_tokenizer(); model = make_tiny_backbone_model("qwen2", tok)
    >>> type(model).__name__, model(**tok(["hi"], return_tensors="pt")).pooler_output.shape
    ('E5Qwen2Model', torch.Size([1, 32]))
    ```
    """
    vocab_size = len(tokenizer) if tokenizer is not None else 1000
    torch.manual_seed(seed)
    model = E5MistralModel(tiny_backbone_config(backbone, vocab_size=vocab_size, **config_overrides))
    randomize_biases_and_norms(model, seed=seed)
    return model.eval()


def make_tiny_chat_model(path, chat_template: str, backbone: str = "llama", seed: int = 0, **config_overrides) -> Path:
    """Save a tiny random chat LLM (``<Family>ForCausalLM``, the tiny tokenizer with ``chat_template``)
    to ``path``: a stand-in for ``--local-model`` that needs no download. ``config_overrides`` go
    to :func:`tiny_backbone_kwargs`.

    Example: ``TransformersChatBackend(str(make_tiny_chat_model(tmp, TEMPLATE)), device="cpu")``.
    """
    from transformers import AutoModelForCausalLM

    from ..configuration_e5mistral import backbone_config_class

    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = chat_template
    config = backbone_config_class(backbone)(**tiny_backbone_kwargs(backbone, vocab_size=len(tokenizer), **config_overrides))
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def make_tiny_family_checkpoint(backbone: str, path, seed: int = 0, causal_lm: bool = True, **config_overrides) -> Path:
    """Save a tiny random checkpoint of transformers' own classes, as a user's base model comes.

    ``causal_lm``: a ``Qwen2ForCausalLM``-style folder (``model.``-prefixed weights and an
    ``lm_head``), else the bare ``Qwen2Model`` layout. Biases and norms are random. The folder's
    ``config.json`` is the family's own (``model_type`` ``"qwen2"``, ...).

    Example: ``E5MistralModel.from_pretrained(make_tiny_family_checkpoint("qwen2", tmp))`` is an ``E5Qwen2Model``.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    from ..configuration_e5mistral import backbone_config_class

    config = backbone_config_class(backbone)(**tiny_backbone_kwargs(backbone, **config_overrides))
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM if causal_lm else AutoModel).from_config(config)
    randomize_biases_and_norms(model, seed=seed)
    model.save_pretrained(path)
    return Path(path)
