"""Section 6, GPU (only where CUDA is present): a Mistral-7B-shaped LoRA training step (random
weights, bf16, gradient checkpointing): tokens/s and MFU against a bf16 matrix product measured in
the run. Without CUDA it reports "skipped: no CUDA" (``--quick`` runs the same code on a tiny
shape on CPU, to check the code path only).

Example: ``print(section_gpu(bench, quick=True).text())``.
"""

from __future__ import annotations

import time

import torch

from .harness import TEMPERATURE, Section, Settings, fmt, measure_matmul
from .workload import Bench, non_embedding_parameters


MISTRAL_7B_SHAPE = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
)


TINY_GPU_SHAPE = dict(
    vocab_size=1000, hidden_size=64, intermediate_size=224, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
)


def lora_step_benchmark(settings: Settings, device: str, shape: dict, dtype=torch.bfloat16) -> dict:
    """Tokens/s of a LoRA InfoNCE training step on a random model of ``shape`` (bf16, checkpointing)."""
    from peft import LoraConfig, get_peft_model

    from e5mistral import E5MistralConfig, E5MistralModel
    from e5mistral.training.arguments import LORA_TARGET_MODULES
    from e5mistral.training.loss import info_nce

    config = E5MistralConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2, sliding_window=None)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in bf16 on the device: no fp32 copy, no download
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = E5MistralModel(config)
    finally:
        torch.set_default_dtype(default_dtype)
    params = non_embedding_parameters(model)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=LORA_TARGET_MODULES, task_type="FEATURE_EXTRACTION")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    b, tq, td = settings.gpu_batch, settings.gpu_query_length, settings.gpu_document_length
    generator = torch.Generator().manual_seed(0)

    def ids(rows: int, length: int) -> dict:
        x = torch.randint(3, config.vocab_size, (rows, length), generator=generator)
        x[:, -1] = config.eos_token_id  # the EOS contract: the pooled token is EOS
        return {"input_ids": x.to(device), "attention_mask": torch.ones_like(x, device=device)}

    queries, documents = ids(b, tq), ids(2 * b, td)  # (B, Tq); (2B, Td): positives then hard negatives
    tokens = b * tq + 2 * b * td
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        q = model(**queries).pooler_output  # (B, H)
        d = model(**documents).pooler_output  # (2B, H)
        loss, _ = info_nce(q, d, temperature=TEMPERATURE)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: kernels, allocator, optimizer state
    sync()
    if not any(state for state in optimizer.state.values()):
        raise RuntimeError("the LoRA step updated no parameter: no gradient reached the adapters.")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(settings.gpu_steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / settings.gpu_steps
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"params": params, "trainable": trainable, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_gb": peak_gb}


def section_gpu(bench: Bench, quick: bool) -> Section:
    s = bench.settings
    sec = Section(6, "GPU: Mistral-7B-shaped LoRA training step (bf16, gradient checkpointing)")
    if torch.cuda.is_available():
        device, shape, n = "cuda", MISTRAL_7B_SHAPE, 8192
    elif quick:
        device, shape, n = "cpu", TINY_GPU_SHAPE, s.matmul_n
        sec.status = "skipped: no CUDA (code path checked on CPU with a tiny shape; these numbers mean nothing)"
    else:
        sec.status = "skipped: no CUDA"
        sec.notes.append("Run the same command on a machine with a CUDA GPU to fill this section.")
        return sec
    result = lora_step_benchmark(s, device, shape)
    peak = measure_matmul(n, torch.bfloat16, device, seconds=2.0)
    tps = result["tokens_per_s"]
    for label, factor in (("6N (issue's definition)", 6), ("4N (LoRA: frozen weights get no weight gradient)", 4)):
        achieved = factor * result["params"] * tps
        sec.add(f"MFU, {label}, vs {n}^3 bf16 matmul", fmt(achieved / 1e12, "TFLOP/s"), fmt(peak / 1e12, "TFLOP/s"), achieved / peak)
    sec.add("tokens/s (all real: no padding)", fmt(tps, "tok/s"), "", None)
    sec.notes.append(
        f"{'Mistral-7B' if shape is MISTRAL_7B_SHAPE else 'tiny'} shape ({result['params'] / 1e9:.3g}B non-embedding "
        f"parameters), random weights built on the device in bf16; LoRA r 16, alpha 32, dropout 0.1 on "
        f"q/k/v/o/gate/up/down ({result['trainable'] / 1e6:.1f}M trainable); non-reentrant gradient checkpointing; "
        f"{s.gpu_batch} queries x {s.gpu_query_length} tokens + {2 * s.gpu_batch} documents x "
        f"{s.gpu_document_length} tokens per step ({result['tokens']} tokens), InfoNCE, AdamW; {s.gpu_steps} steps "
        f"timed after one warm-up; {result['seconds']:.3g} s/step; peak GPU memory {result['peak_gb']:.1f} GiB."
    )
    sec.notes.append("Checkpointing recomputes the forward (another 2N per token), not counted in either MFU figure.")
    return sec
