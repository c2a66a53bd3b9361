"""A multi-process command exits with its status, never with an abort from a process group's threads.

Gloo's worker threads can drop the last reference to a tensor with a Python object after the
command returned; if the interpreter is finalizing by then, that thread's GIL acquire ends in
``std::terminate`` ("terminate called without an active exception", SIGABRT). DeepSpeed keeps its
groups alive past ``destroy_process_group``, so a ZeRO-3 run met it in CI once. The worker below
leaves all-reduces in flight the same way: ending it with ``destroy_process_group`` and a normal exit
aborted 5 of 6 launches here; :func:`~e5mistral.cli.common.exit_process` aborted none of 8.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from e5mistral.cli.common import exit_process

ROOT = Path(__file__).resolve().parents[1]
WORKER = """
import sys
import torch
import torch.distributed as dist
from e5mistral.cli.common import exit_process

dist.init_process_group("gloo")
group = dist.new_group()  # a second group, as DeepSpeed makes
for _ in range(20):
    tensor = torch.ones(2_000_000)
    dist.all_reduce(tensor, async_op=True, group=group)  # the work keeps the tensor; Python lets it go
    del tensor
print("rank", dist.get_rank(), "done", flush=True)
exit_process(int(sys.argv[1]))
"""


def launch(script: Path, code: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*command, str(script), str(code)], env=env, capture_output=True, text=True, timeout=180
    )


def test_two_processes_with_collectives_in_flight_exit_cleanly(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    for _ in range(3):
        process = launch(script, 0)
        output = process.stdout + process.stderr
        assert process.returncode == 0 and "terminate called" not in output, output[-3000:]
        assert output.count(" done") == 2


def test_the_status_comes_through(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    process = launch(script, 3)
    assert process.returncode != 0 and "exitcode  : 3" in process.stderr, process.stderr[-3000:]


def test_without_a_process_group_it_is_sys_exit():
    with pytest.raises(SystemExit) as stop:
        exit_process(4)
    assert stop.value.code == 4
