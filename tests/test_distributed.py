"""torchrun --nproc_per_node 2 on CPU (gloo) gives the run one process gives, on an odd-sized dataset.

The global batch is split over the ranks and the sampler pads the epoch to an even length; the
padding must never count, every sample must be decided exactly once, selection-weighted means
must use the global counts, and a rank that fails must stop the job (not hang it) with a
checkpoint the next torchrun resumes from.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import main_baseline
import main_phase1
import main_small_loss
import main_turn
from fixtures.world import build_smoke_world
from utils.run_dir import read_metrics

ROOT = Path(__file__).resolve().parent.parent
NOISE = ["--noise_mode", "sym", "--noise_ratio", "0.4"]
NUM_TRAIN = 69  # odd: the sampler pads one duplicate in the last global batch (32, 32, 5)
COMPARED = ("loss", "loss_cls", "loss_dp", "precision", "recall", "f1", "auroc", "num_selected", "test_acc",
            "batch_mean_precision", "batch_mean_recall", "train_acc_given", "selected_frac", "kept_frac",
            "loss_clean", "loss_noisy")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_smoke_world(tmp_path_factory.mktemp("ddp"), per_class_train=7, per_class_test=3,
                             drop_train=10 * 7 - NUM_TRAIN)


def torchrun(script: str, args: list, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_dir(out: Path, script: str) -> Path:
    return out / script / "cifar10" / "sym0.4_seed0"


def assert_same_run(single: Path, ddp: Path) -> None:
    """Same mask, the same per-sample clean scores and the same per-epoch figures (up to float reduction order)."""
    assert np.array_equal(np.load(single / "clean_mask.npy"), np.load(ddp / "clean_mask.npy"))
    assert np.load(ddp / "clean_mask.npy").shape == (NUM_TRAIN,)
    # the score behind each decision (p_clean, minus the loss, the GMM posterior), gathered by sample index
    scores = [np.load(run / "clean_scores.npy") for run in (single, ddp)]
    assert scores[1].shape == (NUM_TRAIN,) and np.allclose(scores[0], scores[1], rtol=1e-4, atol=1e-5)
    one, two = read_metrics(str(single)), read_metrics(str(ddp))
    assert len(one) == len(two)
    for a, b in zip(one, two):
        for key in (k for k in COMPARED if k in a):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["epoch"], key)


@pytest.fixture(scope="module")
def single_phase1(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    main_phase1.main(["--cfg", world["peft"], *NOISE, "--opts", f"output_dir={out}"])
    return run_dir(out, "phase1")


def test_phase1_with_two_processes_equals_one_process(world, single_phase1, tmp_path):
    result = torchrun("main_phase1.py", ["--cfg", world["peft"], *NOISE, "--opts", f"output_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = run_dir(tmp_path, "phase1")
    assert_same_run(single_phase1, ddp)
    records = read_metrics(str(ddp))
    assert records[0]["num_selected"] + 0 <= NUM_TRAIN
    # the selection counts every sample once: it equals the mask's size in the last epoch
    assert records[-1]["num_selected"] == int(np.load(ddp / "clean_mask.npy").sum())
    assert "world_size: 2" in (ddp / "config.yaml").read_text().splitlines()[0]
    assert "world_size: 2" in (ddp / "log.txt").read_text()
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2
    assert yaml.safe_load((ddp / "config.yaml").read_text())["batch_size"] == 32  # the global batch


def test_small_loss_ranks_the_global_batch(world, tmp_path):
    single = tmp_path / "single"
    main_small_loss.main(["--cfg", world["peft"], *NOISE, "--opts", f"output_dir={single}"])
    result = torchrun("main_small_loss.py", ["--cfg", world["peft"], *NOISE, "--opts", f"output_dir={tmp_path / 'ddp'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run_dir(single, "small_loss"), run_dir(tmp_path / "ddp", "small_loss"))
    # epoch 2 keeps int(0.6 * B) of each global batch of 32, 32 and 5 samples (not per rank)
    assert read_metrics(str(run_dir(tmp_path / "ddp", "small_loss")))[1]["num_selected"] == 19 + 19 + 3


@pytest.mark.parametrize("method", ["GMM", "ELR", "TURN"])
def test_full_passes_and_per_sample_state_are_gathered_by_sample_index(world, tmp_path, method):
    """GMM fits on per-sample losses of a sharded full pass; ELR's target memory is updated per rank;
    TURN extracts features and per-sample losses in sharded full passes (69 samples: one padded) and
    trains on the cleansed subset."""
    script, name = (main_turn, "turn") if method == "TURN" else (main_baseline, f"baseline_{method.lower()}")
    args = ["--cfg", world["fft"], *NOISE] + ([] if method == "TURN" else ["--lnl_methods", method]) + ["--opts"]
    if method == "TURN":  # short steps; tau 0.3 keeps every class non-empty on 69 samples (as in the baseline tests)
        args += ["turn_lp_epochs=2", "turn_fft_epochs=2", "turn_tau=0.3"]
    script.main(args + [f"output_dir={tmp_path / 'single'}"])
    result = torchrun(f"{script.__name__}.py", args + [f"output_dir={tmp_path / 'ddp'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [run_dir(tmp_path / kind, name) for kind in ("single", "ddp")]
    if method in ("GMM", "TURN"):
        assert_same_run(*runs)
    else:
        one, two = (read_metrics(str(r)) for r in runs)
        assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
        memories = [torch.load(r / "checkpoint.pt", weights_only=True)["extra"]["elr_targets"] for r in runs]
        assert memories[1].shape == (NUM_TRAIN, 10) and torch.allclose(memories[0], memories[1], atol=1e-6)


FAILING_RANK = """
import sys
import main_phase1
from utils import distributed
from utils.cli import run_cli

real = main_phase1.train_one_epoch


def fails_on_rank_1_in_epoch_2(*args, **kwargs):
    if args[6] == 2 and distributed.rank() == 1:
        raise RuntimeError("rank 1 failed in epoch 2")
    return real(*args, **kwargs)


main_phase1.train_one_epoch = fails_on_rank_1_in_epoch_2
run_cli(lambda: main_phase1.main(sys.argv[1:]))
"""


def test_a_failing_rank_stops_the_job_and_a_resumed_job_gives_the_same_mask(world, single_phase1, tmp_path):
    wrapper = tmp_path / "failing_rank.py"
    wrapper.write_text(FAILING_RANK)
    args = ["--cfg", world["peft"], *NOISE, "--opts", f"output_dir={tmp_path / 'out'}"]
    # a hang waits for the 30-minute collective timeout; 600 s leaves room for a loaded 2-core machine
    result = torchrun(str(wrapper), args, timeout=600)
    assert result.returncode != 0 and "rank 1 failed in epoch 2" in result.stdout + result.stderr
    run = run_dir(tmp_path / "out", "phase1")
    assert (run / "checkpoint.pt").is_file() and not (run / "summary.json").exists()
    assert len(read_metrics(str(run))) == 1

    resumed = torchrun("main_phase1.py", args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(single_phase1, run)


def test_a_global_batch_that_does_not_divide_is_refused(world, tmp_path):
    result = torchrun("main_phase1.py", ["--cfg", world["peft"], *NOISE, "--opts", "batch_size=31",
                                         f"output_dir={tmp_path}"])
    assert result.returncode != 0
    assert "batch_size 31 is the global batch and must be divisible by the number of processes (2)" in result.stderr
    assert not (tmp_path / "phase1").exists()


def test_only_rank_0_makes_the_noise_cache_and_the_other_ranks_take_its_labels(world, tmp_path, monkeypatch):
    """Ranks simulated in one process: rank 1 gets rank 0's labels by broadcast and writes no cache."""
    from datasets import build_datasets
    from utils import distributed
    from utils.config import Config, apply_overrides, load_yaml

    def config(cache: Path) -> Config:
        return apply_overrides(Config(), {**load_yaml(world["peft"]), "noise_mode": "sym", "noise_ratio": 0.2,
                                          "noise_cache_dir": str(cache)}, "test")

    rank0 = build_datasets(config(tmp_path / "rank0"))  # one process = rank 0: generates and writes the cache
    assert len(list((tmp_path / "rank0").iterdir())) == 1
    sent = (np.asarray(rank0.train.given_labels), rank0.noise_info)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: (sent, None))  # rank 0's outcome
    rank1 = build_datasets(config(tmp_path / "rank1"))
    assert np.array_equal(rank1.train.given_labels, rank0.train.given_labels)
    assert rank1.noise_info == rank0.noise_info and not (tmp_path / "rank1").exists()
