"""Nothing lost, nothing executed: faults and bad inputs on the real entry points (tiny CIFAR-10 world).

Each test reproduces one way a run used to go wrong: a replacement run that fails, a planted or
damaged checkpoint, BatchNorm statistics lost on resume, an empty mask, corrupt files, numbers
that are not numbers, resume rules, the non-finite-loss advice, duplicate YAML keys and the
folders a failed run leaves.
"""
import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import main_phase1
import main_phase2
import utils.experiment as utils_experiment
import utils.io as utils_io
from models import timm_backbones
from lnl.selection import class_selection_rates
from utils.clean_mask import mask_metadata, mask_warnings, save_clean_mask
from experiments.collect_results import collect
from utils.config import ConfigError, apply_overrides, load_yaml, Config
from utils.cli import run_cli
from utils.run_dir import RunExistsError, read_metrics
from fixtures.runs import stop_at_call
from fixtures.world import build_smoke_world

NOISE = ["--noise_mode", "sym", "--noise_ratio", "0.4"]
VOLATILE = ("seconds", "peak_memory_mb")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_smoke_world(tmp_path_factory.mktemp("faults"), per_class_train=6, per_class_test=2)


def phase1(world, out, *extra, opts=()):
    return main_phase1.main(["--cfg", world["peft"], *NOISE, *extra, "--opts", f"output_dir={out}", *opts])


def run_dir(out, script="phase1"):
    return Path(out) / script / "cifar10" / "sym0.4_seed0"


def files(folder: Path) -> dict:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(main, capsys) -> tuple[int, str]:
    """Run `main` as the command line does; return (exit status, stderr)."""
    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    return stop.value.code, capsys.readouterr().err


# ---------------------------------------------------------------- 1. --overwrite keeps the old run until it can replace it
def test_a_failing_overwrite_keeps_the_finished_run_byte_for_byte(world, tmp_path, monkeypatch, capsys):
    phase1(world, tmp_path)
    run = run_dir(tmp_path)
    before = files(run)

    status, err = cli(lambda: phase1(world, tmp_path, "--overwrite", opts=["data_path=/no/such/folder"]), capsys)
    assert status == 2 and "/no/such/folder" in err and err.startswith("error:")
    assert files(run) == before  # a typo in data_path deletes nothing
    weights = tmp_path / "x.pt"
    weights.write_bytes(b"")
    status, err = cli(lambda: phase1(world, tmp_path, "--overwrite", opts=[f"pretrained={weights}"]), capsys)
    assert status == 2 and str(weights) in err and files(run) == before  # nor does an empty weight file

    real = stop_at_call(monkeypatch, main_phase1, 1, RuntimeError)  # dies during its first epoch
    with pytest.raises(RuntimeError):
        phase1(world, tmp_path, "--overwrite")
    assert files(run) == before
    staging = run.parent / f".{run.name}.overwrite"
    assert staging.is_dir() and not (staging / "checkpoint.pt").exists()  # hidden, never mistaken for the run

    monkeypatch.setattr(main_phase1, "train_one_epoch", real)
    phase1(world, tmp_path, "--overwrite", opts=["lr=0.002"])  # a real replacement
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 0.002
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]  # no staging or replaced folder left


# ---------------------------------------------------------------- 2, 5. checkpoints: planted objects and damage
class Planted:
    """An object whose unpickling would create a file (in place of a shell command)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def interrupted_run(world, out, monkeypatch) -> Path:
    real = stop_at_call(monkeypatch, main_phase1, 2)
    with pytest.raises(KeyboardInterrupt):
        phase1(world, out)
    monkeypatch.setattr(main_phase1, "train_one_epoch", real)
    return run_dir(out)


def test_resume_refuses_a_checkpoint_with_a_planted_object_and_runs_nothing(world, tmp_path, monkeypatch, capsys):
    run = interrupted_run(world, tmp_path, monkeypatch)
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # our checkpoints load with weights_only
    marker = tmp_path / "executed"
    torch.save({**state, "extra": {"evil": Planted(str(marker))}}, run / "checkpoint.pt")
    planted = (run / "checkpoint.pt").read_bytes()

    status, err = cli(lambda: phase1(world, tmp_path, "--resume"), capsys)
    assert status == 2 and not marker.exists()
    assert str(run / "checkpoint.pt") in err and "weights_only=True" in err and "Traceback" not in err
    assert (run / "checkpoint.pt").read_bytes() == planted  # nothing deleted


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_checkpoint_gives_one_error_line_naming_it(world, tmp_path, monkeypatch, capsys, damage):
    run = interrupted_run(world, tmp_path, monkeypatch)
    content = (run / "checkpoint.pt").read_bytes()
    damaged = {"empty": b"", "truncated": content[: len(content) // 2], "garbage": b"not a checkpoint\n" * 9}[damage]
    (run / "checkpoint.pt").write_bytes(damaged)
    status, err = cli(lambda: phase1(world, tmp_path, "--resume"), capsys)
    assert status == 2 and err.count("\n") == 1 and str(run / "checkpoint.pt") in err
    assert "--overwrite" in err and (run / "checkpoint.pt").read_bytes() == damaged


# ---------------------------------------------------------------- 3. BatchNorm statistics survive a resume
def test_phase2_on_a_batchnorm_backbone_resumes_to_the_uninterrupted_result(world, tmp_path, monkeypatch):
    monkeypatch.setitem(timm_backbones.OFFICIAL_TIMM_BACKBONES, "resnet", dataclasses.replace(
        timm_backbones.OFFICIAL_TIMM_BACKBONES["resnet"], model_name="resnet10t"))
    cfg = apply_overrides(Config(), {**load_yaml(world["fft"]), "noise_mode": "sym", "noise_ratio": 0.4}, "t")
    from datasets import build_datasets

    data = build_datasets(cfg)
    mask_dir = tmp_path / "mask"
    mask_dir.mkdir()
    mask = save_clean_mask(str(mask_dir), np.arange(len(data.train)) % 3 != 0,
                           mask_metadata(cfg, data, len(data.train), "test", "hand-made", "hand-made"))

    def phase2(out, *extra):
        return main_phase2.main(["--cfg", world["fft"], *NOISE, "--backbone", "resnet", "--clean_mask", mask, *extra,
                                 "--opts", "timm_pretrained=false", "epochs=3", f"output_dir={out}"])

    straight = phase2(tmp_path / "straight")
    real = stop_at_call(monkeypatch, main_phase2, 2)
    with pytest.raises(KeyboardInterrupt):
        phase2(tmp_path / "resumed")
    monkeypatch.setattr(main_phase2, "train_one_epoch", real)
    checkpoint = torch.load(run_dir(tmp_path / "resumed", "phase2_resnet") / "checkpoint.pt", weights_only=True)
    assert any(k.endswith("running_mean") for k in checkpoint["model"])  # the buffers are in the checkpoint
    resumed = phase2(tmp_path / "resumed", "--resume")

    def stable(out):
        return [{k: v for k, v in r.items() if k not in VOLATILE}
                for r in read_metrics(str(run_dir(out, "phase2_resnet")))]

    assert stable(tmp_path / "straight") == stable(tmp_path / "resumed")
    assert resumed["last_test_acc"] == straight["last_test_acc"]


# ---------------------------------------------------------------- 4. empty and suspicious masks
def hand_made_mask(world, folder: Path, keep) -> str:
    cfg = apply_overrides(Config(), {**load_yaml(world["fft"]), "noise_mode": "sym", "noise_ratio": 0.4}, "t")
    from datasets import build_datasets

    data = build_datasets(cfg)
    folder.mkdir(parents=True)
    return save_clean_mask(str(folder), keep(np.arange(len(data.train)), data.train.given_labels),
                           mask_metadata(cfg, data, len(data.train), "test", "hand-made", "hand-made"))


def test_a_mask_that_keeps_some_classes_far_less_than_others_is_flagged():
    # 4 classes of 10 samples each (class 4 has none): kept 8, 8, 2 and 0 -> overall 18/40 = 45%; half of it is
    # 22.5%, so class 2 (20%) is rare, class 3 (0%) and class 4 (no sample) are missing
    given = np.repeat(np.arange(4), 10)
    mask = np.zeros(40, bool)
    mask[0:8] = mask[10:18] = mask[20:22] = True
    rates = class_selection_rates(mask, given, 5)
    assert rates[:4].tolist() == [0.8, 0.8, 0.2, 0.0] and np.isnan(rates[4])
    assert mask_warnings(mask, given, 5, batch_size=16) == [
        "the clean mask keeps no sample of 2 of 5 classes (3, 4)",
        "the clean mask keeps 1 of 5 classes at under half its overall rate of 45% (2: 20%): the selection may "
        "have collapsed onto a few classes"]
    mask[22] = True  # class 2 at 30%, overall 47.5%: no longer under half
    assert mask_warnings(mask, given, 5, batch_size=16) == ["the clean mask keeps no sample of 2 of 5 classes (3, 4)"]


def test_an_empty_mask_stops_phase2_and_a_tiny_one_is_flagged(world, tmp_path, capsys):
    empty = hand_made_mask(world, tmp_path / "empty", lambda idx, labels: np.zeros(len(idx), bool))
    status, err = cli(lambda: main_phase2.main(["--cfg", world["fft"], *NOISE, "--clean_mask", empty, "--opts",
                                                f"output_dir={tmp_path / 'out'}"]), capsys)
    assert status == 2 and "keeps 0 of 60 samples" in err and empty in err
    assert not (tmp_path / "out").exists()  # refused before anything was written

    few = hand_made_mask(world, tmp_path / "few", lambda idx, labels: (labels < 3) & (idx % 4 == 0))
    summary = main_phase2.main(["--cfg", world["fft"], *NOISE, "--clean_mask", few, "--opts", "epochs=1",
                                f"output_dir={tmp_path / 'out'}"])
    kept = int(np.load(few).sum())
    assert summary["num_train_samples"] == kept < 32
    assert summary["warnings"] == [f"the clean mask keeps only {kept} samples, fewer than one batch (32)",
                                   "the clean mask keeps no sample of 7 of 10 classes (3, 4, 5, 6, 7, 8, 9)"]
    log = (run_dir(tmp_path / "out", "phase2") / "log.txt").read_text()
    assert "WARNING: the clean mask keeps no sample of 7 of 10 classes" in log

    finished = files(run_dir(tmp_path / "out", "phase2"))
    status, err = cli(lambda: main_phase2.main(["--cfg", world["fft"], *NOISE, "--clean_mask", empty, "--overwrite",
                                                "--opts", "epochs=1", f"output_dir={tmp_path / 'out'}"]), capsys)
    assert status == 2 and "keeps 0 of 60 samples" in err
    assert files(run_dir(tmp_path / "out", "phase2")) == finished  # --overwrite with an empty mask keeps the run


# ---------------------------------------------------------------- 5. corrupt inputs: one error line naming the file
@pytest.mark.parametrize("content", [b"", b"garbage bytes, not weights"])
def test_a_corrupt_weight_file_is_named_in_one_error_line(world, tmp_path, capsys, content):
    weights = tmp_path / "x.pt"
    weights.write_bytes(content)
    status, err = cli(lambda: phase1(world, tmp_path / "out", opts=[f"pretrained={weights}"]), capsys)
    assert status == 2 and str(weights) in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and weights.read_bytes() == content  # nothing written or deleted


def test_a_garbage_mask_and_a_folder_as_cfg_give_clear_errors(world, tmp_path, capsys):
    mask = Path(hand_made_mask(world, tmp_path / "m", lambda idx, labels: idx % 2 == 0))
    mask.write_bytes(b"\x93NUMPY garbage")
    status, err = cli(lambda: main_phase2.main(["--cfg", world["fft"], *NOISE, "--clean_mask", str(mask)]), capsys)
    assert status == 2 and str(mask) in err and ".npy" in err and err.count("\n") == 1
    assert mask.read_bytes() == b"\x93NUMPY garbage"  # nothing deleted
    status, err = cli(lambda: main_phase1.main(["--cfg", str(tmp_path), *NOISE]), capsys)
    assert status == 2 and f"config file {tmp_path} is a directory" in err


# ---------------------------------------------------------------- 6. numbers that are not numbers
def test_non_finite_numbers_are_rejected_before_any_folder_exists(world, tmp_path, capsys):
    status, err = cli(lambda: main_phase1.main(["--cfg", world["peft"], "--noise_mode", "sym", "--noise_ratio", "nan",
                                                "--opts", f"output_dir={tmp_path}"]), capsys)
    assert status == 2 and "'noise_ratio' must be a finite number" in err
    assert list(tmp_path.iterdir()) == []
    for value in ("nan", "inf", "-.inf"):
        with pytest.raises(ConfigError, match="'lr' must be a finite number"):
            apply_overrides(Config(), {"lr": yaml.safe_load(value)}, "test")


# ---------------------------------------------------------------- 7. what a resume may change
def test_resume_accepts_result_neutral_changes_and_names_the_others(world, tmp_path, monkeypatch, capsys):
    straight = phase1(world, tmp_path / "straight")
    run = interrupted_run(world, tmp_path / "resumed", monkeypatch)
    status, err = cli(lambda: phase1(world, tmp_path / "resumed", "--resume", opts=["epochs=3"]), capsys)
    assert status == 2 and "epochs: 2 in" in err and "3 now" in err
    resumed = main_phase1.main(["--cfg", world["peft"], *NOISE, "--resume", "--opts",
                                f"output_dir={tmp_path / 'resumed'}/", "num_workers=1", "progress=true"])
    assert resumed["mask_f1"] == straight["mask_f1"]
    assert np.array_equal(np.load(run / "clean_mask.npy"), np.load(run_dir(tmp_path / "straight") / "clean_mask.npy"))


# ---------------------------------------------------------------- 8. the non-finite-loss advice is true
def test_after_a_non_finite_loss_resume_with_a_lower_lr_finishes_the_run(world, tmp_path, monkeypatch, capsys):
    real_loss = main_phase1.deft_phase1_loss

    def nan_in_epoch_2(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        if not kwargs["in_warmup"]:  # the PEFT YAML warms up for 1 epoch
            out.dp_values = out.dp_values * float("nan")
        return out

    monkeypatch.setattr(main_phase1, "deft_phase1_loss", nan_in_epoch_2)
    status, err = cli(lambda: phase1(world, tmp_path), capsys)
    assert status == 2 and "non-finite loss (nan) at epoch 2, batch 0" in err and "--resume --opts lr=" in err
    run = run_dir(tmp_path)
    assert "error: non-finite loss (nan) at epoch 2" in (run / "log.txt").read_text()
    monkeypatch.setattr(main_phase1, "deft_phase1_loss", real_loss)

    summary = phase1(world, tmp_path, "--resume", opts=["lr=0.001"])
    records = read_metrics(str(run))
    assert records[0]["lr"] == pytest.approx(0.003)  # epoch 1 ran with the original lr
    assert records[1]["lr"] == pytest.approx(0.001 * (1 + math.cos(math.pi / 2)) / 2)  # cosine, base 0.001
    history = [json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()]
    assert history == [{"resumed_after_epoch": 1, "changes": {"lr": [0.003, 0.001]}}]
    assert summary["config_changes"] == history
    assert "lr 0.003 -> 0.001" in (run / "log.txt").read_text()


# ---------------------------------------------------------------- 9. duplicate YAML keys
def test_duplicate_yaml_keys_are_refused_with_their_lines(world, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("dataset: cifar10\nlr: 0.03\nepochs: 2\nlr: 0.3\n")
    with pytest.raises(ConfigError, match=rf"duplicate key 'lr' in {path} at line 4 \(first at line 2\)"):
        load_yaml(str(path))
    with pytest.raises(ConfigError, match="sets 'lr' twice"):
        main_phase1.main(["--cfg", world["peft"], *NOISE, "--opts", "lr=1", "lr=2"])


# ---------------------------------------------------------------- 10. what a failed run leaves behind
def test_failed_runs_leave_no_folder_or_a_stub_that_is_not_a_run(world, tmp_path, monkeypatch, capsys):
    status, _ = cli(lambda: phase1(world, tmp_path, opts=["data_path=/no/such/folder"]), capsys)
    assert status == 2 and not (tmp_path / "phase1").exists()  # failed before its first epoch: no trace

    stop_at_call(monkeypatch, main_phase1, 1, RuntimeError)
    with pytest.raises(RuntimeError):
        run_cli(lambda: phase1(world, tmp_path))
    run = run_dir(tmp_path)
    assert sorted(os.listdir(run)) == ["config.yaml", "log.txt"]  # a stub: it says why it stopped
    assert "stopped by RuntimeError: stopped by the test" in (run / "log.txt").read_text()
    assert collect(str(tmp_path)) == []  # the collector does not count it
    with pytest.raises(RunExistsError, match="stopped before its first epoch ended.*without --resume"):
        phase1(world, tmp_path, "--resume")
    monkeypatch.undo()
    assert phase1(world, tmp_path)["num_samples"] == 60  # the same command simply starts it again


def test_continue_starts_resumes_or_leaves_a_finished_run_alone(world, tmp_path, monkeypatch, capsys):
    run = interrupted_run(world, tmp_path, monkeypatch)
    summary = phase1(world, tmp_path, "--continue")  # resumes the interrupted run
    assert len(read_metrics(str(run))) == 2 and summary["num_samples"] == 60
    before = files(run)
    run_cli(lambda: phase1(world, tmp_path, "--continue"))  # returns: exit status 0
    assert "nothing to do" in capsys.readouterr().out and files(run) == before


# ---------------------------------------------------------------- a full disk
def fail_writes_of(monkeypatch, name: str) -> None:
    """Make every atomic write of a file called `name` fail as on a full disk (at its fsync)."""
    import errno

    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(name):  # the temporary file .tmp-<random><name>
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def temporary_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".tmp-*")]


def test_a_full_disk_gives_one_error_line_and_loses_nothing_finished(world, tmp_path, monkeypatch, capsys):
    phase1(world, tmp_path)
    run = run_dir(tmp_path)
    before = files(run)
    fail_writes_of(monkeypatch, "checkpoint.pt")
    status, err = cli(lambda: phase1(world, tmp_path, "--overwrite"), capsys)
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: could not write ") and "checkpoint.pt: No space left on device" in err
    assert files(run) == before and temporary_files(tmp_path) == []  # the finished run is intact

    # a new run whose second checkpoint does not fit: the first one stays whole and resumes
    other = tmp_path / "other"
    monkeypatch.undo()
    real_save = utils_io.atomic_torch_save
    saves = []

    def second_fails(path, obj):
        saves.append(path)
        if len(saves) == 2:
            fail_writes_of(monkeypatch, "checkpoint.pt")
        real_save(path, obj)

    monkeypatch.setattr(utils_experiment, "atomic_torch_save", second_fails)
    status, err = cli(lambda: phase1(world, other), capsys)
    assert status == 2 and "No space left on device" in err and temporary_files(other) == []
    assert torch.load(run_dir(other) / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.undo()
    summary = phase1(world, other, "--resume")  # space freed: the run continues after epoch 1
    assert summary["num_samples"] == 60 and len(read_metrics(str(run_dir(other)))) == 2


def test_a_log_file_that_cannot_be_written_is_said_once(capsys):
    from utils.experiment import _LogFile

    logger = logging.getLogger("deft-full-disk-test")
    handler = _LogFile("/dev/full", encoding="utf-8")  # every write: No space left on device
    logger.addHandler(handler)
    try:
        for _ in range(3):
            logger.error("a record")
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: could not write to /dev/full (")
    assert "No space left on device" in err and "Traceback" not in err
