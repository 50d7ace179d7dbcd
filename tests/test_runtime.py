"""``runtime``: the allocator setting really stops page faults on reused memory; the core count."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import runtime

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import resource, sys, torch
import runtime
applied = runtime.keep_freed_memory() if sys.argv[1] == "on" else False
torch.set_num_threads(1)
x = torch.randn(8, 32, 64, 64)
conv = torch.nn.Conv2d(32, 32, 3, padding=1)
@torch.no_grad()
def step():  # a small forward pass: 4 MiB activations and one 32 MiB tensor, all freed at the end
    y = conv(x)
    z = torch.nn.functional.silu(y) * y
    return float(torch.cat([z] * 8).sum())
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_keep_freed_memory_reuses_pages():
    applied, faults_on = _faults("on")
    if not applied:
        pytest.skip("not glibc: keep_freed_memory leaves the allocator alone")
    _, faults_off = _faults("off")
    assert faults_off > 10_000, "glibc default: the 32 MiB block is mmapped afresh on every pass (8 192 pages each)"
    assert faults_on < 1_000, f"{faults_on} page faults in three passes that reuse freed memory"


def test_usable_cores():
    assert 1 <= runtime.usable_cores() <= (os.cpu_count() or 1)


def test_usable_cores_keep_to_a_slurm_allocation(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    everything = runtime.usable_cores()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert runtime.usable_cores() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(everything + 8))  # more than the machine has: the mask wins
    assert runtime.usable_cores() == everything
    for junk in ("", "0", "two"):
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", junk)
        assert runtime.usable_cores() == everything


def test_torch_threads_follow_the_usable_cores(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        assert runtime.use_usable_cores() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _ended(pid: int) -> bool:
    """No such process, or a zombie (ended, not yet reaped by whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_a_pool_worker_ends_when_its_parent_is_killed(tmp_path):
    """After ``kill -9`` of a run, its feature workers finished their batch and then waited for work
    forever; with :func:`runtime.exit_with_parent` in the pool's initializer they end with it."""
    import signal
    import time

    script = tmp_path / "pool.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import runtime\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'), initializer=runtime.exit_with_parent) as pool:\n"
        "        print(pool.submit(os.getpid).result(), flush=True)\n"
        "        time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert not _ended(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while not _ended(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    ended = _ended(worker)
    if not ended:
        os.kill(worker, signal.SIGKILL)
    assert ended, "the worker outlived its parent"
