"""One process per run directory: the run lock, alone and between two real commands."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.world import build_smoke_world
from utils.run_lock import RunLock, RunLockedError, lock_path

ROOT = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from utils.run_lock import RunLock; "
        "lock = RunLock({run!r}); lock.acquire(); print('locked', flush=True); time.sleep({seconds})")


def hold_lock(run_dir: Path, seconds: float = 60) -> subprocess.Popen:
    """Another process that takes the lock of `run_dir` and keeps it `seconds` (or until killed)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), run=str(run_dir), seconds=seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_is_refused_with_the_holder_and_a_killed_holder_blocks_nothing(tmp_path):
    run = tmp_path / "phase1" / "cifar10" / "sym0.4_seed0"
    holder = hold_lock(run)
    try:
        with pytest.raises(RunLockedError) as refused:
            RunLock(str(run)).acquire()
        assert f"{run} is being written by process {holder.pid} on {socket.gethostname()} since 20" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert Path(lock_path(str(run))).exists()  # the killed holder could not clean up ...
    lock = RunLock(str(run))
    lock.acquire()  # ... and its lock died with it
    assert Path(lock.path).read_text().startswith(f"{os.getpid()} ")
    lock.release()
    assert not Path(lock.path).exists() and not run.exists()  # the lock sits beside the run, and goes


def test_wait_blocks_until_the_holder_ends(tmp_path):
    run = tmp_path / "run"
    holder = hold_lock(run, seconds=1.5)
    said, started = [], time.time()
    lock = RunLock(str(run))
    lock.acquire(wait=True, on_wait=said.append)
    assert time.time() - started > 0.5 and holder.wait() == 0
    assert len(said) == 1 and said[0].startswith(f"waiting: {run} is being written by process {holder.pid}")
    lock.release()


def _command(world, *extra) -> list[str]:
    # 30 tiny epochs: long enough (some seconds) for the other commands to start while it runs
    return [sys.executable, str(ROOT / "main_phase1.py"), "--cfg", world["peft"], "--noise_mode", "sym",
            "--noise_ratio", "0.4", *extra, "--opts", "epochs=30"]


def test_two_identical_commands_leave_one_run_written_by_one_process(tmp_path):
    world = build_smoke_world(tmp_path, per_class_train=6, per_class_test=2)
    run = Path(world["output"]) / "phase1" / "cifar10" / "sym0.4_seed0"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    pair = [subprocess.Popen(_command(world), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # started together
    lock_file = Path(lock_path(str(run)))
    deadline = time.time() + 120
    while not (lock_file.exists() and lock_file.read_text().strip()):
        assert time.time() < deadline and all(p.poll() is None for p in pair), [p.communicate() for p in pair]
        time.sleep(0.05)
    holder = int(lock_file.read_text().split()[0])
    (winner,) = [p for p in pair if p.pid == holder]
    (loser,) = [p for p in pair if p.pid != holder]
    _, lost = loser.communicate(timeout=300)
    _, err = winner.communicate(timeout=300)
    assert winner.returncode == 0, err
    assert loser.returncode == 2 and lost.count("\n") == 1, lost
    assert lost.startswith(f"error: {run} is being written by process {winner.pid} on {socket.gethostname()} since ")
    log = (run / "log.txt").read_text()
    assert log.count("phase1: run directory") == 1 and log.count("finished:") == 1  # one process wrote it
    assert not lock_file.exists()


def test_continue_waits_for_the_run_being_written_then_finds_it_finished(tmp_path, capsys):
    import main_phase1
    from utils.cli import run_cli

    world = build_smoke_world(tmp_path, per_class_train=6, per_class_test=2, epochs=1)
    command = ["--cfg", world["peft"], "--noise_mode", "sym", "--noise_ratio", "0.4"]
    main_phase1.main(command)
    run = Path(world["output"]) / "phase1" / "cifar10" / "sym0.4_seed0"
    holder = hold_lock(run, seconds=2)  # as if another --continue of the same grid were still writing it
    run_cli(lambda: main_phase1.main([*command, "--continue"]))
    out = capsys.readouterr().out
    assert f"waiting: {run} is being written by process {holder.pid}" in out
    assert out.rstrip().endswith(f"nothing to do: {run} holds a finished run (summary.json)")
    assert holder.wait() == 0
