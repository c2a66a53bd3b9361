r"""Step time and collectives per step of DDP, FSDP2 and DeepSpeed ZeRO-3 on 2 CPU processes, in one run.

Every measurement is a real 2-process launch, the way users run the engines (no
``ACCELERATE_USE_CPU``: the shim in ``e5mistral/training/engines.py`` runs them over gloo)::

    accelerate launch --main_process_port PORT --config_file configs/accelerate/{ddp,fsdp,deepspeed_zero3}.yaml \
        tests/distributed_cases.py --cases plain,gradcache --timing_only ...

``tests/distributed_cases.py`` trains through ``E5Trainer`` and counts, per process and step, the
model's forwards and the collectives (``torch.distributed`` calls between the trainer's
``on_step_begin`` and ``on_step_end``) and times the main process's steps. Two cases per launch:
``plain`` (no GradCache: length-sorted chunks per side) and ``gradcache`` (mini-batches). The
engines alternate in rounds (ddp, fsdp, zero3, ddp, ...); each engine and case keeps its best
round, the median of its steps after the warm-up ones. Ratios are against DDP's same case.

DeepSpeed builds a C++ op (its shared-memory collectives, ``deepspeed_shm_comm``) the first time
it starts on a CPU machine. That build runs first, alone and timed, in a fresh extension folder
under ``--out``, which every ZeRO-3 launch then uses, so it never counts in a launch (and the op
is loaded before training anyway). ``--reuse_op_cache`` uses torch's usual folder instead
(``~/.cache/torch_extensions``): quicker when the op is there, but any other environment on the
machine that loads the op from a different path rebuilds it there, possibly during a launch.

    python -m benchmarks.engines                # the measurement (about 5 minutes on 2 cores)
    python -m benchmarks.engines --quick        # smoke run: tiny model, 2 steps, 1 round
    python -m benchmarks.engines --output /tmp/engines.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import cpu_name, load_average

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
CASES_SCRIPT = "tests/distributed_cases.py"
CONFIGS = {
    "ddp": "configs/accelerate/ddp.yaml",
    "fsdp": "configs/accelerate/fsdp.yaml",
    "zero3": "configs/accelerate/deepspeed_zero3.yaml",
}
ENGINE_NAMES = {"ddp": "DDP", "fsdp": "FSDP", "zero3": "DeepSpeed ZeRO-3"}  # as the trainer names them
LABELS = {"ddp": "DDP", "fsdp": "FSDP2", "zero3": "ZeRO-3"}
CASES = ("plain", "gradcache")
KINDS = (("all-reduce", "all_reduce"), ("reduce-scatter", "reduce_scatter"), ("all-gather", "all_gather"),
         ("broadcast", "broadcast"))  # fmt: skip


@dataclasses.dataclass
class Setup:
    """The model and the run; every engine gets the same."""

    layers: int = 4
    hidden: int = 256
    intermediate: int = 896  # Mistral's 3.5x
    heads: int = 8
    kv_heads: int = 2
    batch_size: int = 8  # rows per process and step
    max_length: int = 64
    extra_words: int = 16  # words appended to the cases' short texts (varied per text)
    chunk_positions: int = 256  # plain case: several length-sorted chunks per side
    mini_batch_size: int = 4  # gradcache case
    steps: int = 8
    warmup: int = 2  # first steps left out of the median
    rounds: int = 2

    def model_config(self) -> dict:
        return dict(hidden_size=self.hidden, intermediate_size=self.intermediate, num_hidden_layers=self.layers,
                    num_attention_heads=self.heads, num_key_value_heads=self.kv_heads)  # fmt: skip

    def rows(self) -> int:
        return max(16, 2 * self.batch_size * self.steps)  # 2 processes: no row seen twice


QUICK = Setup(layers=2, hidden=64, intermediate=224, heads=4, kv_heads=2, batch_size=4, max_length=32, extra_words=0,
              chunk_positions=24, mini_batch_size=2, steps=2, warmup=1, rounds=1)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(threads: int, extensions: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # the configs as users run them
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        OMP_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if extensions is not None:
        env["TORCH_EXTENSIONS_DIR"] = str(extensions)
    return env


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


BUILD_OP = """
import json, os, time
import deepspeed.ops
from deepspeed.accelerator import get_accelerator
from torch.utils.cpp_extension import _get_build_directory
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
    print(json.dumps({"op": None}))
else:
    folder = _get_build_directory(builder.NAME, verbose=False)
    cached = os.path.exists(os.path.join(folder, builder.NAME + ".so"))  # and up to date, if load() is quick
    started = time.perf_counter()
    builder.load(verbose=False)
    seconds = time.perf_counter() - started
    library = os.path.join(folder, builder.NAME + ".so")
    print(json.dumps({"op": builder.NAME, "cached": cached, "seconds": seconds, "library": library}))
"""


def build_deepspeed_op(env: dict, timeout: float) -> dict:
    """Build (or load) the op DeepSpeed compiles on its first CPU start, alone and timed."""
    process = subprocess.run([sys.executable, "-c", BUILD_OP], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout)  # fmt: skip
    if process.returncode != 0:
        raise SystemExit(f"building DeepSpeed's op failed:\n{(process.stdout + process.stderr)[-4000:]}")
    op = json.loads(process.stdout.strip().splitlines()[-1])
    if op["op"] is not None:
        op["mtime"] = os.stat(op["library"]).st_mtime_ns
    return op


def launch(engine: str, folder: Path, base: Path, setup: Setup, env: dict, timeout: float) -> tuple[list[str], float]:
    command = [
        str(ACCELERATE), "launch", "--main_process_port", str(free_port()), "--config_file", CONFIGS[engine],
        CASES_SCRIPT, "--out", str(folder), "--base", str(base), "--cases", ",".join(CASES), "--timing_only",
        "--steps", str(setup.steps), "--rows", str(setup.rows()), "--batch_size", str(setup.batch_size),
        "--max_length", str(setup.max_length), "--extra_words", str(setup.extra_words),
        "--chunk_positions", str(setup.chunk_positions), "--mini_batch_size", str(setup.mini_batch_size),
        "--learning_rate", "0.01", "--model_config", json.dumps(setup.model_config(), separators=(",", ":")),
    ]  # fmt: skip
    started = time.perf_counter()
    try:
        process = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired as error:
        raise SystemExit(f"{engine}: no result after {timeout:.0f} s:\n{shlex.join(command)}\n{error.output or ''}")
    if process.returncode != 0:
        tail = process.stdout[-6000:]
        raise SystemExit(f"{engine} failed (exit {process.returncode}):\n{shlex.join(command)}\n{tail}")
    return command, time.perf_counter() - started


def counts(record: dict, warmup: int) -> dict[str, str]:
    """Collectives and forwards per timed step and process: one number, or min-max where they differ."""
    steps = [step for process in record["steps_per_process"] for step in process[warmup:]]
    out = {}
    for label, prefix in (*KINDS, ("forwards", "forward")):
        values = [sum(n for name, n in step.items() if name.startswith(prefix)) for step in steps]
        buckets = len(record.get("ddp_bucket_sizes") or []) if label == "all-reduce" else 0
        low, high = min(values) + buckets, max(values) + buckets
        out[label] = str(low) if low == high else f"{low}-{high}"
        if buckets:
            out[label] += f" ({buckets} gradient bucket{'s' if buckets > 1 else ''})"
    return out


def raw_names(record: dict, warmup: int) -> str:
    step = record["steps_per_process"][0][warmup]
    return ", ".join(f"{name} {n}" for name, n in sorted(step.items()) if name != "forward")


def model_description(base: Path, setup: Setup) -> str:
    from safetensors import safe_open

    total = embedding = vocab = 0
    with safe_open(str(base / "model.safetensors"), framework="pt") as weights:
        for key in weights.keys():
            shape = weights.get_slice(key).get_shape()
            n = 1
            for d in shape:
                n *= d
            total += n
            if "embed_tokens" in key:
                embedding, vocab = embedding + n, shape[0]
    return (f"random E5MistralModel, {setup.layers} layers x {setup.hidden} hidden, FFN {setup.intermediate}, "
            f"{setup.heads} heads / {setup.kv_heads} KV heads, vocab {vocab}: {(total - embedding) / 1e6:.2f}M "
            f"non-embedding parameters ({total / 1e6:.2f}M in all), fp32")  # fmt: skip


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "deepspeed", "accelerate", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 steps (1 timed), 1 round")
    parser.add_argument("--engines", default=",".join(CONFIGS), help="a subset of ddp,fsdp,zero3 (ddp: the reference)")
    parser.add_argument("--rounds", type=int, help="launches per engine, alternating (default 2; --quick 1)")
    parser.add_argument("--steps", type=int, help="steps per case and launch (default 8; --quick 2)")
    parser.add_argument("--warmup", type=int, help="first steps left out (default 2; --quick 1)")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int, help="hidden size (FFN 3.5x, one head per 32)")
    parser.add_argument("--batch_size", type=int, help="rows per process and step (default 8)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS per process (default: usable cores / 2)")
    parser.add_argument("--reuse_op_cache", action="store_true",
                        help="DeepSpeed's op from torch's usual extension folder (built only if missing) "
                             "instead of a fresh build under --out")  # fmt: skip
    parser.add_argument("--out", help="keep the launches' folders here (default: a temporary folder, removed)")
    parser.add_argument("--output", help="also write the Markdown here")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per launch")
    options = parser.parse_args(argv)

    setup = dataclasses.replace(QUICK if options.quick else Setup())
    for name in ("rounds", "steps", "warmup", "layers", "batch_size"):
        if getattr(options, name) is not None:
            setattr(setup, name, getattr(options, name))
    if options.hidden is not None:
        setup.hidden, setup.intermediate = options.hidden, options.hidden * 7 // 2
        setup.heads = max(2, options.hidden // 32)
        setup.kv_heads = max(1, setup.heads // 4)
    if setup.steps <= setup.warmup:
        parser.error(f"--steps {setup.steps} leaves no step after {setup.warmup} warm-up step(s)")
    engines = options.engines.split(",")
    if "ddp" not in engines or set(engines) - set(CONFIGS):
        parser.error("--engines: a comma-separated subset of ddp,fsdp,zero3 that includes ddp (the reference)")
    engines = [e for e in CONFIGS if e in engines]

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = options.threads or max(1, usable // 2)
    temporary = None
    if options.out:
        out = Path(options.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
    else:
        temporary = tempfile.TemporaryDirectory(prefix="engines-")
        out = Path(temporary.name)
    base = out / "base"
    extensions = None if options.reuse_op_cache else out / "torch_extensions"
    env = environment(threads, extensions)
    load_start, started = load_average(), time.perf_counter()

    op = None
    if "zero3" in engines:
        log(f"building DeepSpeed's CPU op ({'torch' if extensions is None else 'fresh'} extension folder) ...")
        op = build_deepspeed_op(env, options.timeout)
        log(f"  {op}")

    # (engine, case) -> [(median seconds, record, launch seconds)] over rounds
    runs: dict[tuple[str, str], list[tuple[float, dict, float]]] = {}
    example = None
    for round_ in range(1, setup.rounds + 1):
        for engine in engines:
            folder = out / f"round-{round_}" / engine
            log(f"round {round_}/{setup.rounds}: {LABELS[engine]} ...")
            command, wall = launch(engine, folder, base, setup, env, options.timeout)
            example = example or command
            for case in CASES:
                record = json.loads((folder / case / "result.json").read_text())
                if record["engine"] != ENGINE_NAMES[engine]:
                    raise SystemExit(f"{CONFIGS[engine]} ran {record['engine']}, not {ENGINE_NAMES[engine]}")
                timed = record["step_seconds"][setup.warmup:]
                median = statistics.median(timed)
                runs.setdefault((engine, case), []).append((median, record, wall))
                log(f"  {case}: median {median:.3f} s/step over {len(timed)} steps ({wall:.0f} s launch)")
    elapsed = time.perf_counter() - started

    best = {key: min(values, key=lambda v: v[0]) for key, values in runs.items()}
    lines = ["## Engines: DDP, FSDP2 and DeepSpeed ZeRO-3 on 2 CPU processes", ""]
    given = argv if argv is not None else sys.argv[1:]
    lines += ["Command:", "", "```bash", shlex.join(["python", "-m", "benchmarks.engines", *given]), "```", ""]
    lines += [
        "| engine | case | s/step (median) | vs DDP | all-reduce | reduce-scatter | all-gather | broadcast "
        "| forwards |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        reference = best[("ddp", case)][0]
        for engine in engines:
            median, record, _ = best[(engine, case)]
            c = counts(record, setup.warmup)
            lines.append(
                f"| {LABELS[engine]} | {case} | {median:.3f} s | **{median / reference:.2f}x** | {c['all-reduce']} | "
                f"{c['reduce-scatter']} | {c['all-gather']} | {c['broadcast']} | {c['forwards']} |"
            )
    v = versions()
    timed_steps = setup.steps - setup.warmup
    lines += [
        "",
        f"- {setup.steps} steps per case and launch, the first {setup.warmup} left out: the median of the other "
        f"{timed_steps} (main process, `on_step_begin` to `on_step_end`: forwards, backward, the engine's "
        f"collectives and the SGD update). {setup.rounds} round(s), engines alternating "
        f"({', '.join(LABELS[e] for e in engines)}, ...); each engine and case keeps its best round. Per round "
        "(s/step): " + "; ".join(
            f"{LABELS[e]} {case} " + " / ".join(f"{m:.3f}" for m, _, _ in runs[(e, case)])
            for case in CASES for e in engines
        ) + ".",
        f"- Collectives and forwards: per process and timed step, `torch.distributed` calls counted between "
        "those callbacks (all-gather: `all_gather`, `all_gather_single`, `all_gather_into_tensor`; "
        "reduce-scatter: `reduce_scatter*`); a range where processes or steps differ. DDP all-reduces its "
        "gradient buckets from C++, out of sight of those counters: its figure adds the number of buckets "
        "(once per step each, GradCache included: `no_sync`), read from DDP's own logging data. Every "
        "engine's all-gathers include the cross-device negatives (`gather_across_devices`) and its "
        "all-reduces the trainer's own (e.g. the chunk count the processes agree on). First timed step of "
        "the main process, by name: "
        + "; ".join(f"{LABELS[e]} {c}: {raw_names(best[(e, c)][1], setup.warmup)}" for c in CASES for e in engines)
        + ".",
        f"- Per process: {setup.batch_size} rows per step (query with instruction, positive, 0-2 hard "
        f"negatives, up to {setup.max_length} tokens), documents gathered across the 2 processes; plain: "
        f"chunks of up to {setup.chunk_positions} padded positions per side; GradCache: mini-batches of "
        f"{setup.mini_batch_size}. fp32, SGD lr 0.01, no clipping, {threads} thread(s) per process "
        "(`OMP_NUM_THREADS`), gloo.",
    ]
    if op is not None:
        if op.get("op") is None:
            lines.append("- DeepSpeed's CPU op: none to build on this machine.")
        else:
            where = "torch's usual extension folder" if extensions is None else "a fresh extension folder"
            how = "found built there, loaded" if op["cached"] else "built"
            rebuilt = os.stat(op["library"]).st_mtime_ns != op["mtime"]
            lines.append(
                f"- DeepSpeed's first start on a CPU machine builds `{op['op']}` (its shared-memory collectives): "
                f"{how} in {op['seconds']:.1f} s, alone, in {where}, before the launches; every ZeRO-3 launch "
                "loads it from there, so it is in no figure above"
                + (" (**but it was rebuilt during the launches**: another environment shares the folder; "
                   "rerun without --reuse_op_cache)." if rebuilt else ".")
            )  # fmt: skip
    walls = {e: min(w for _, _, w in runs[(e, CASES[0])]) for e in engines}
    lines.append("- Launch wall time (best round; start-up, 2 cases, exit): "
                 + ", ".join(f"{LABELS[e]} {walls[e]:.0f} s" for e in engines) + ".")  # fmt: skip
    lines.append("- Each launch (ports differ):")
    lines += ["", "```bash", shlex.join(["accelerate", *example[1:]]).replace(str(out), "$OUT"), "```", ""]
    lines += [
        "| machine | |",
        "|---|---|",
        f"| CPU | {cpu_name()} |",
        f"| cores | {os.cpu_count()} logical, {usable} usable (nproc) |",
        f"| python | {platform.python_version()} |",
        *(f"| {name} | {value} |" for name, value in v.items()),
        f"| model | {model_description(base, setup)} |",
        f"| load average at start | {load_start} |",
        f"| load average at end | {load_average()} |",
        f"| run time | {elapsed:.0f} s |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if options.output:
        Path(options.output).write_text(text)
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
