"""FSDP2 and DeepSpeed ZeRO-3 train like DDP, in real 2-process `accelerate launch` runs over gloo on CPU.

One launch per engine runs every case of ``tests/distributed_cases.py`` (plain chunked path,
GradCache over rows with unequal negative counts, LoRA + GradCache + activation checkpointing,
and for ZeRO-3 a reduce bucket smaller than one weight); the tests compare what they leave behind.
Two more launches per engine run the README's commands, with checkpoints, evaluation during
training and a resume. The rest are in-process checks of the engine checks and the chunk padding.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from e5mistral.errors import UserError
from e5mistral.testing import assert_close, make_tiny_model, make_tiny_tokenizer
from e5mistral.training import engines, gradcache
from e5mistral.training.collator import E5Collator
from e5mistral.training.gradcache import embed_length_sorted, grad_cache
from e5mistral.training.loss import info_nce

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
CONFIGS = {
    "ddp": "configs/accelerate/ddp.yaml",
    "fsdp": "configs/accelerate/fsdp.yaml",
    "zero3": "configs/accelerate/deepspeed_zero3.yaml",
}
ENGINE_NAMES = {"ddp": "DDP", "fsdp": "FSDP", "zero3": "DeepSpeed ZeRO-3"}
CASES = ("plain", "gradcache", "lora_gradcache", "options")
# The configs as a user runs them: no ACCELERATE_USE_CPU (the shim picks gloo on a machine without GPUs).
ENV = {
    **{k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"},
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}


def run(command: list[str], timeout: float = 600) -> str:
    process = subprocess.run(
        command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    assert process.returncode == 0, process.stdout[-6000:]
    return process.stdout


def launch_command(config: str) -> list[str]:
    # --main_process_port 0: a free port (another run may hold accelerate's default 29500).
    return [str(ACCELERATE), "launch", "--main_process_port", "0", "--config_file", config]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """One launch per engine, every case in it: ``<out>/<engine>/<case>/`` (see tests/distributed_cases.py)."""
    out = tmp_path_factory.mktemp("engines")
    for engine, config in CONFIGS.items():
        names = ",".join(CASES + (("tiny_bucket",) if engine == "zero3" else ()))
        run([*launch_command(config), "tests/distributed_cases.py", "--out", str(out / engine), "--cases", names])
    return out


def flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([weights[key].double().flatten() for key in sorted(weights)])


def assert_same_step(folder: Path, reference: Path) -> None:
    """Weights after steps 1 and 2 equal the reference's to 1e-5 relative to the reference's update."""
    start = load_file(str(reference / "step-0.safetensors"))
    assert_close(flat(load_file(str(folder / "step-0.safetensors"))), flat(start), rtol=1e-6, what="start")
    for step in (1, 2):
        expected = load_file(str(reference / f"step-{step}.safetensors"))
        actual = load_file(str(folder / f"step-{step}.safetensors"))
        assert sorted(actual) == sorted(expected)
        update = (flat(expected) - flat(start)).norm().item()
        error = (flat(actual) - flat(expected)).norm().item()
        assert update > 0, "the step changed nothing: the comparison would prove nothing"
        assert error <= 1e-5 * update, f"step {step}: |engine - DDP| = {error:.3g} > 1e-5 x update {update:.3g}"


def result(cases: Path, engine: str, case: str) -> dict:
    return json.loads((cases / engine / case / "result.json").read_text())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_sgd_steps_under_fsdp_and_zero3_equal_ddp(cases, engine, case):
    assert result(cases, engine, case)["engine"] == ENGINE_NAMES[engine]
    assert result(cases, "ddp", case)["engine"] == "DDP"
    assert_same_step(cases / engine / case, cases / "ddp" / case)
    # and so does the merged folder the final save writes
    final, reference = (load_file(str(cases / e / case / "final" / "model.safetensors")) for e in (engine, "ddp"))
    base = load_file(str(cases / "ddp" / "base" / "model.safetensors"))
    assert sorted(final) == sorted(reference) == sorted(base)
    update = (flat(reference) - flat(base)).norm().item()
    assert (flat(final) - flat(reference)).norm().item() <= 1e-5 * update


@pytest.mark.parametrize("engine", ["ddp", "fsdp", "zero3"])
def test_the_options_case_trains_with_its_options_and_saves_them(cases, engine):
    """The options beyond the recipe change the step (else the comparison above would prove nothing
    about them) and the saved folder keeps bidirectional attention."""
    options, recipe = (load_file(str(cases / engine / c / "step-1.safetensors")) for c in ("options", "gradcache"))
    start = flat(load_file(str(cases / engine / "gradcache" / "step-0.safetensors")))
    update = (flat(recipe) - start).norm().item()
    assert (flat(options) - flat(recipe)).norm().item() > 1e-2 * update
    config = json.loads((cases / engine / "options" / "final" / "config.json").read_text())
    assert config["bidirectional"] is True


def test_deepspeed_takes_precision_and_clipping_from_the_training_arguments(cases):
    # The cases train in fp32 with max_grad_norm 0: DeepSpeed neither clips nor casts.
    config = result(cases, "zero3", "gradcache")["deepspeed"]
    assert config == {"gradient_clipping": 0.0, "bf16": {"enabled": False}, "fp16": {"enabled": False}}


def test_the_deepspeed_config_file_fills_precision_and_clipping_from_bf16_and_max_grad_norm(tmp_path):
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    from e5mistral.training.arguments import E5TrainingArguments

    args = E5TrainingArguments(
        str(tmp_path), bf16=True, use_cpu=True, max_grad_norm=0.5, per_device_train_batch_size=4, report_to="none"
    )
    config = HfTrainerDeepSpeedConfig(str(ROOT / "configs/accelerate/deepspeed_zero3.json"))
    try:  # what the Trainer does with it (propagate_args_to_deepspeed)
        config.trainer_config_process(args)
    finally:
        unset_hf_deepspeed_config()  # it registered itself: later models in this process must not be ZeRO-3's
    assert config.config["bf16"] == {"enabled": True} and config.config["fp16"] == {"enabled": False}
    assert config.config["gradient_clipping"] == 0.5 and config.config["train_micro_batch_size_per_gpu"] == 4


def test_zero3_with_a_reduce_bucket_smaller_than_one_weight_equals_ddp(cases):
    # Without a deferred reduction ZeRO-3 reduces bucket by bucket per mini-batch and keeps only the last.
    assert_same_step(cases / "zero3" / "tiny_bucket", cases / "ddp" / "gradcache")


@pytest.mark.parametrize("engine", list(CONFIGS))
def test_every_process_runs_the_same_forwards_in_every_step(cases, engine):
    for case in CASES:
        processes = result(cases, engine, case)["steps_per_process"]
        assert len(processes) == 2
        forwards = [[step["forward"] for step in steps] for steps in processes]
        assert forwards[0] == forwards[1] and min(forwards[0]) > 2, (case, forwards)


def reduce_scatters(cases: Path, engine: str, case: str) -> list[int]:
    steps = result(cases, engine, case)["steps_per_process"][0]
    return [sum(n for name, n in step.items() if name.startswith("reduce_scatter")) for step in steps]


def test_gradcache_reduce_scatters_once_per_step_under_fsdp_and_zero3(cases):
    # FSDP2: every sharded unit reduce-scatters once per step, GradCache or not (it would be once
    # per mini-batch without set_requires_gradient_sync: 8x here).
    plain, cached = reduce_scatters(cases, "fsdp", "plain"), reduce_scatters(cases, "fsdp", "gradcache")
    assert plain == cached and min(plain) > 0, (plain, cached)
    # ZeRO-3 buckets the gradients in another order when it flushes them, so the count may differ
    # from the plain path's; it must not grow with the mini-batches (step 1 has more than step 2).
    forwards = [step["forward"] for step in result(cases, "zero3", "gradcache")["steps_per_process"][0]]
    assert forwards[0] != forwards[1]
    for case in ("gradcache", "tiny_bucket", "lora_gradcache"):
        counts = reduce_scatters(cases, "zero3", case)
        assert counts[0] == counts[1] > 0, (case, counts)
    assert max(reduce_scatters(cases, "zero3", "gradcache")) <= max(reduce_scatters(cases, "zero3", "plain"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("engine", list(CONFIGS))
def test_the_saved_folder_reloads_and_embeds_like_the_model_in_memory(cases, engine, case):
    record = result(cases, engine, case)
    assert_close(torch.tensor(record["reloaded"]), torch.tensor(record["in_memory"]), rtol=1e-5, what="embeddings")
    files = set(record["final_files"])
    assert {"model.safetensors", "config.json", "modeling_e5mistral.py", "tokenizer.json", "modules.json"} <= files
    assert not {name for name in files if name.endswith(".bin") or name in ("adapter", "_trained_weights")}


def readme_commands() -> dict[str, str]:
    """The README's Training commands that run the demo under FSDP and ZeRO-3, as written there."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Training\n\n```bash\n(.*?)```", text, re.S).group(1)
    commands = {}
    for line in block.splitlines():
        for engine in ("fsdp", "zero3"):
            if line.startswith("accelerate launch") and CONFIGS[engine] in line and "configs/demo.yaml" in line:
                commands[engine] = line
    assert set(commands) == {"fsdp", "zero3"}, block
    return commands


@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_readme_commands_train_evaluate_checkpoint_and_resume_under_the_engine(tmp_path, engine):
    words = shlex.split(readme_commands()[engine])
    assert words[:2] == ["accelerate", "launch"]
    command = [*launch_command(CONFIGS[engine])[:4], *words[2:]]  # the venv's accelerate, a free port
    short = [
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--logging_steps", "1",
        "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
    ]  # fmt: skip
    output = run([*command, *short, "--output_dir", str(tmp_path / "straight")])
    assert f"processes: 2 ({ENGINE_NAMES[engine]})" in output
    assert "before training  eval:" in output and "step 1/2  eval:" in output and "step 2/2  eval:" in output
    assert "before    after" in output and "Reloaded" in output
    straight = tmp_path / "straight"
    assert (straight / "checkpoint-1").is_dir() and (straight / "model.safetensors").is_file()
    config = json.loads((straight / "checkpoint-1" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_e5mistral.E5MistralModel"  # its own code, not the engine's

    checkpoint = str(straight / "checkpoint-1")
    output = run([*command, *short, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", checkpoint])
    assert "step 2/2" in output and "step 1/2  eval:" not in output
    resumed, expected = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("resumed", "straight"))
    for key in expected:
        assert_close(resumed[key], expected[key], rtol=1e-5, what=key)


# ---- in-process: the engine checks and the chunk padding ----


def fake_trainer(distributed_type, *, zero_stage=3, fsdp_version=2, mini_batch_size=None, accumulation=1):
    state = SimpleNamespace(
        deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage), fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version)
    )
    accelerator = SimpleNamespace(distributed_type=distributed_type, state=state, num_processes=2)
    args = SimpleNamespace(
        deepspeed=None, fsdp=None, mini_batch_size=mini_batch_size, mini_batch_positions=None,
        uses_gradcache=mini_batch_size is not None, gradient_accumulation_steps=accumulation,
    )
    return SimpleNamespace(args=args, accelerator=accelerator)


@pytest.fixture
def launched(monkeypatch):
    """Pretend to be one process of a 2-process launch whose config asks for ``engine``."""

    def as_launched(engine: str | None):
        monkeypatch.setenv("WORLD_SIZE", "2")
        for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_CPU"):
            monkeypatch.delenv(name, raising=False)
        if engine is not None:
            monkeypatch.setenv(f"ACCELERATE_USE_{engine}", "true")

    return as_launched


def test_an_engine_other_than_the_one_asked_for_stops_training(launched):
    launched("FSDP")
    with pytest.raises(UserError, match=r"asks for FSDP but accelerate built DDP .*without ACCELERATE_USE_CPU"):
        engines.check_engine(fake_trainer(DistributedType.MULTI_CPU))
    launched("DEEPSPEED")
    with pytest.raises(UserError, match="asks for DeepSpeed but accelerate built DDP"):
        engines.check_engine(fake_trainer(DistributedType.MULTI_GPU))
    assert engines.check_engine(fake_trainer(DistributedType.DEEPSPEED)) == "DeepSpeed ZeRO-3"
    launched(None)
    with pytest.raises(UserError, match="asks for DDP but accelerate built single process"):
        engines.check_engine(fake_trainer(DistributedType.NO))
    assert engines.check_engine(fake_trainer(DistributedType.MULTI_CPU)) == "DDP"


def test_engines_that_cannot_train_the_run_correctly_are_refused(launched):
    launched("FSDP")
    with pytest.raises(UserError, match="fsdp_version: 2"):
        engines.check_engine(fake_trainer(DistributedType.FSDP, fsdp_version=1))
    with pytest.raises(UserError, match="gradient_accumulation_steps=4 with GradCache under FSDP"):
        engines.check_engine(fake_trainer(DistributedType.FSDP, mini_batch_size=8, accumulation=4))
    assert engines.check_engine(fake_trainer(DistributedType.FSDP, mini_batch_size=8)) == "FSDP"
    launched("DEEPSPEED")
    with pytest.raises(UserError, match="GradCache .* under DeepSpeed ZeRO-2 is not supported"):
        engines.check_engine(fake_trainer(DistributedType.DEEPSPEED, zero_stage=2, mini_batch_size=8))
    assert engines.check_engine(fake_trainer(DistributedType.DEEPSPEED, zero_stage=2)) == "DeepSpeed ZeRO-2"


def test_without_gpus_a_launch_trains_on_cpu_and_the_old_advice_no_longer_blocks_the_engine(launched, monkeypatch):
    monkeypatch.setattr(engines, "has_accelerator", lambda: False)
    launched("FSDP")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    args = SimpleNamespace(use_cpu=False, deepspeed=None, fsdp=None)
    engines.select_cpu_backend(args)
    assert args.use_cpu and "ACCELERATE_USE_CPU" not in os.environ
    monkeypatch.setattr(engines, "has_accelerator", lambda: True)
    args = SimpleNamespace(use_cpu=False, deepspeed=None, fsdp=None)
    engines.select_cpu_backend(args)  # on GPUs: nothing changes
    assert not args.use_cpu


def test_a_deepspeed_launch_without_deepspeed_names_the_extra(launched, monkeypatch):
    import importlib.util

    launched("DEEPSPEED")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r'pip install -e "\.\[deepspeed\]"'):
        engines.require_engine_packages(SimpleNamespace(deepspeed=None, fsdp=None))


def test_partitioned_parameters_are_counted_whole():
    weight = torch.nn.Parameter(torch.empty(0))
    weight.ds_numel = 1024  # what ZeRO-3 leaves on a partitioned parameter
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    model = torch.nn.Module()
    model.weight, model.frozen = weight, frozen
    assert engines.count_parameters(model) == 1024 and engines.count_parameters(model, trainable_only=False) == 1027


TOKENIZER = make_tiny_tokenizer()


def batch():
    rows = [
        {"query": f"q {i} " + "word " * i, "positive": f"p {i} " + "text " * (2 * i), "negatives": ["n"] * (i % 3)}
        for i in range(6)
    ]
    return E5Collator(TOKENIZER, num_negatives=None)(rows)


def counted_embed(counter: list[int]):
    def embed(model, features):
        counter[0] += 1
        return model(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).pooler_output

    return embed


@pytest.mark.parametrize("path", ["gradcache", "chunks"])
def test_filler_chunks_pad_a_plan_to_the_agreed_count_and_change_nothing_else(monkeypatch, path):
    """A process with fewer chunks than another runs fillers: more forwards, the same loss and gradients."""
    model = make_tiny_model(TOKENIZER, seed=1).train()
    features = batch()

    def loss_and_grads(extra: int):
        padded = lambda counts, device: [c + extra for c in counts]  # another process cut `extra` more chunks
        monkeypatch.setattr(gradcache, "same_count_on_every_process", padded)
        model.zero_grad()
        forwards = [0]
        embed = counted_embed(forwards)
        torch.manual_seed(0)
        if path == "gradcache":
            loss, _ = grad_cache(model, embed, [features["query"], features["document"]], info_nce, mini_batch_size=2)
        else:
            queries = embed_length_sorted(model, embed, features["query"], max_positions=20)
            documents = embed_length_sorted(model, embed, features["document"], max_positions=20)
            loss, _ = info_nce(queries, documents)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()], forwards[0]

    loss, grads, forwards = loss_and_grads(0)
    padded_loss, padded_grads, padded_forwards = loss_and_grads(3)
    assert padded_forwards == forwards + 2 * 3 * (2 if path == "gradcache" else 1)  # 3 per side (and replayed)
    assert_close(padded_loss, loss, rtol=1e-6)
    for padded, plain in zip(padded_grads, grads):
        assert_close(padded, plain, rtol=1e-5)
