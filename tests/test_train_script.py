"""scripts/train.py as users run it, in real processes: two CPU processes under `accelerate launch`,
two processes x batch B == one process x batch 2B (gathering + GradCache vs plain), and a run killed
with SIGKILL and resumed from its checkpoint ending on the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from e5mistral.testing import assert_close

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "train.py")
ACCELERATE = Path(sys.executable).parent / "accelerate"
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "OMP_NUM_THREADS": "1",  # two processes on two cores: no thread oversubscription
    "ACCELERATE_USE_CPU": "1",  # without it `--multi_gpu` on a CPU machine starts lone processes
    "HF_HUB_OFFLINE": "1",
}


def launch(args: list[str], processes: int = 1, **popen) -> subprocess.Popen:
    if processes > 1:
        command = [
            str(ACCELERATE),
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(29500 + os.getpid() % 1000),
            SCRIPT,
            *args,
        ]
    else:
        command = [sys.executable, SCRIPT, *args]
    return subprocess.Popen(
        command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def run(args: list[str], processes: int = 1) -> str:
    process = launch(args, processes)
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 0, output[-4000:]
    return output


def write_rows(path: Path, n: int) -> str:
    words = ["river", "mountain", "coffee", "engine", "violin", "planet", "garden", "castle", "tiger", "bridge"]
    with path.open("w") as f:
        for i in range(n):
            a, b = words[i % 10], words[(3 * i + 1) % 10]
            f.write(
                json.dumps(
                    {
                        "query": f"{a} {b} {i}",
                        "positive": f"about the {a} and {b} {i}",
                        "negatives": [f"about the {b} {i + 7}"] if i % 2 else [],
                        "instruction": "Find it",
                        "task": "t",
                        "language": "en",
                    }
                )
                + "\n"
            )
    return str(path)


def demo_on(rows: str, max_steps: int) -> list[str]:
    """The demo recipe on the rows file `rows`, every row trained on (none held out), for `max_steps`."""
    return ["--config", "configs/demo.yaml", "--dataset_name", rows, "--eval_split_size", "0", "--max_steps", str(max_steps)]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_demo_config_runs_on_two_cpu_processes_with_accelerate_launch(tmp_path):
    output = run(
        ["--config", "configs/demo.yaml", "--max_steps", "2", "--output_dir", str(tmp_path / "demo")], processes=2
    )
    assert "processes: 2" in output
    assert "before    after" in output and "Reloaded" in output
    folder = tmp_path / "demo"
    assert (folder / "model.safetensors").exists() and (folder / "modules.json").exists()
    # the run's record and the card rendered from it
    info = json.loads((folder / "training_info.json").read_text())
    assert info["num_train_rows"] == 240 and info["hyperparameters"]["processes"] == 2
    after = info["held_out_evaluation"]["after"]["ndcg@10"]
    assert "ndcg@10 " in output and f"{after:8.4f}" in output  # the card's number is the printed one
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "Held-out retrieval during training" in card and f"{after:.4f}" in card
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == 2


def test_two_processes_with_gathering_and_gradcache_equal_one_process_with_the_double_batch(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl", 8)
    common = [
        *demo_on(rows, max_steps=1),
        "--optim",
        "sgd",
        "--learning_rate",
        "0.02",
        "--lr_scheduler_type",
        "constant",
        "--warmup_steps",
        "0",
        "--weight_decay",
        "0",
        "--max_grad_norm",
        "0",
        "--no_duplicates_in_batch",
        "false",
    ]
    run(
        [
            *common,
            "--output_dir",
            str(tmp_path / "two"),
            "--per_device_train_batch_size",
            "4",
            "--mini_batch_size",
            "2",
        ],
        processes=2,
    )
    run(
        [*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8", "--mini_batch_size", "8"]
    )
    two, one = weights(tmp_path / "two"), weights(tmp_path / "one")
    start = weights(tmp_path / "one" / "tiny-base-model")
    assert sum(not torch.allclose(one[k], start[k]) for k in one) > 0
    for key in one:
        assert_close(two[key], one[key], rtol=1e-5)


def test_resume_after_a_killed_run_reaches_the_uninterrupted_weights(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl", 64)
    common = [
        *demo_on(rows, max_steps=24),
        "--per_device_train_batch_size",
        "8",
        "--save_strategy",
        "steps",
        "--save_steps",
        "4",
        "--learning_rate",
        "3e-3",
    ]
    run([*common, "--output_dir", str(tmp_path / "straight")])

    killed_dir = tmp_path / "killed"
    process = launch([*common, "--output_dir", str(killed_dir)], start_new_session=True)
    checkpoint = killed_dir / "checkpoint-8"
    deadline = time.time() + 300
    while not (checkpoint / "trainer_state.json").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed; give it more steps"
    assert not (killed_dir / "model.safetensors").exists()  # it really stopped before the end

    run([*common, "--output_dir", str(killed_dir), "--resume_from_checkpoint", str(checkpoint)])
    straight, resumed = weights(tmp_path / "straight"), weights(killed_dir)
    start = weights(killed_dir / "tiny-base-model")
    assert sum(not torch.allclose(straight[k], start[k]) for k in straight) > 0
    for key in straight:
        assert_close(resumed[key], straight[key], rtol=1e-5)

    # Rerunning the finished command trains nothing (Trainer alone would train a step 25 of 24) ...
    output = run([*common, "--output_dir", str(tmp_path / "straight")])
    assert "Nothing to train: checkpoint-24 is at step 24 of max_steps 24" in output, output[-2000:]
    assert "step 25" not in output
    assert all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "straight").values(), straight.values()))
    # ... and a finished checkpoint without the final model is refused, not trained one step further.
    (tmp_path / "straight" / "training_info.json").unlink()
    process = launch([*common, "--output_dir", str(tmp_path / "straight")])
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 2 and "error: checkpoint-24 is at step 24 of max_steps 24" in output, output[-2000:]
    assert "Traceback" not in output
