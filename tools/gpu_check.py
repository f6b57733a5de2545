"""GPU self-check: every script on tiny generated data, on CPU and on CUDA, compared; then torchrun.

    python tools/gpu_check.py [--root DIR] [--cpu_only] [--keep] [--out FILE]     (or: make gpu-check)

Run it first on a new machine. It writes the smoke world (a 120-image CIFAR-10-format dataset and a
random tiny CLIP, tests/fixtures/world.py) and runs phase 1, phase 2, small-loss, each baseline, Robust
Similarity and Co-Reg for two epochs (Co-Reg three), in-process, each run's output in <suite>/<script>.out:

1. on CPU in fp32: the reference; each run must finish (summary.json) with finite numbers;
2. on CUDA in fp32, amp and fp16, each compared with the reference: the fraction of per-sample
   decisions that differ (the clean mask; Co-Reg: CLIP's per-template annotation), the final
   training loss and the test accuracy, against the tolerances of TOLERANCES;
3. torchrun with 2 processes on phase 1 (NCCL on 2+ GPUs, otherwise gloo on CPU), compared with
   one process on the same device.

It prints one table (check | result | figure) and exits with 1 on any FAIL. Without CUDA it says so
and runs the CPU part only. The models start from random weights: the figures check numerics and
plumbing, not the method.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.world import build_smoke_world  # noqa: E402
from utils.io import atomic_write_json  # noqa: E402
from utils.run_dir import read_metrics  # noqa: E402

OK, FAIL, SKIPPED = "ok", "FAIL", "skipped"
CUDA_PRECISIONS = ("fp32", "amp", "fp16")
NOISE = ("--noise_mode", "sym", "--noise_ratio", "0.4")


# ---------------------------------------------------------------- tolerances
@dataclass(frozen=True)
class Tolerance:
    """How far a CUDA run may be from the CPU fp32 run (absolute differences)."""

    decisions: float  # fraction of per-sample decisions that differ (clean mask, annotation)
    loss: float  # final-epoch training loss (values 1 to 10 here)
    acc: float  # test accuracy, in points (40 test images: one image is 2.5 points)


# Why these numbers: a CUDA run differs from the CPU one by float rounding only, but two epochs of
# SGD carry that rounding into the weights, and a random tiny model on 120 images puts a few samples
# near every decision boundary (p_clean near 0.5, a GMM posterior near the threshold, two losses
# swapping places at a small-loss cut, two zero-shot logits nearly tied). So decisions are compared
# as a fraction, never for equality. Measured on CPU as stand-ins for CUDA rounding (bf16 autocast,
# coarser than amp's fp16; pure fp16 with the CPU refusal lifted; the tiny CLIP's weights perturbed
# by 5e-4 to 2e-3 relative): at most 1 of 120 mask decisions moved, the final loss by at most 0.008
# (Co-Reg: 0.07, see its loss_slack), accuracy by at most 1 test image. The tolerances leave room
# above that for what CPU stand-ins cannot show:
# - fp32: reduction order differs, and PyTorch lets cuDNN run convolutions (the ViT patch embedding)
#   in TF32 by default (a 10-bit mantissa, relative error ~5e-4): at most 2 of 120 decisions, a loss within
#   0.01, accuracy within 2 test images.
# - amp: matrix products in fp16 (rounding ~5e-4 per product, accumulated over layers) and loss
#   scaling: up to 6 of 120 decisions, loss within 0.05, accuracy within 4 images.
# - fp16 (the official pure fp16): weights, activations and updates in fp16, so an update smaller
#   than 2^-11 of a weight is lost and the trajectories part most: up to 12 of 120 decisions, loss
#   within 0.1, accuracy within 6 images.
# A real defect (a NaN, a lost gradient, a wrong cast, a broken collective) moves these by far more.
TOLERANCES = {
    "fp32": Tolerance(decisions=0.02, loss=0.01, acc=5.0),
    "amp": Tolerance(decisions=0.05, loss=0.05, acc=10.0),
    "fp16": Tolerance(decisions=0.10, loss=0.10, acc=15.0),
}


@dataclass(frozen=True)
class DdpTolerance:
    """How far a 2-process torchrun may be from one process on the same device."""

    decisions: float  # fraction of mask entries that differ
    loss_rel: float  # relative difference of the training loss, every epoch


# gloo on CPU: the engine sums per-rank partial sums of the global batch, so only the float
# reduction order changes (the repository's tests: the same mask, the loss within 1e-5 relative).
# NCCL: the same, plus each rank's half-batch may pick other CUDA kernels (and TF32 convolutions):
# a borderline sample may flip, as in fp32 above.
DDP_TOLERANCES = {"gloo": DdpTolerance(decisions=0.0, loss_rel=1e-5),
                  "nccl": DdpTolerance(decisions=0.02, loss_rel=1e-4)}


# ---------------------------------------------------------------- the scripts
@dataclass(frozen=True)
class Script:
    """One entry point and the flags that make it a 2-epoch run on the smoke world."""

    name: str
    module: str
    cfg: str  # "peft" or "fft": which YAML of the smoke world
    slug: str  # its own output_dir (and log file) under a suite's folder
    args: tuple[str, ...] = ()
    opts: tuple[str, ...] = ()
    noisy: bool = True  # False: no noise flags (Co-Reg never reads the labels)
    loss_keys: tuple[str, ...] = ("loss",)
    acc_key: str = "last_test_acc"
    decisions: str = "mask"  # "mask": clean_mask.npy if saved; "annotation": Co-Reg's CLIP annotation
    uses_phase1_mask: bool = False
    loss_slack: float = 1.0  # multiplies the loss tolerance, for a method whose loss amplifies rounding


# The FFT YAML's lr 5e-4 leaves the classifier at chance after two epochs, where accuracy would
# compare nothing; 5e-3 moves it off chance.
FFT_LR = ("lr=0.005",)
# TURN: a per-class GMM fits ~12 losses per class here; at tau 0.3 or 0.1 one class's fit could
# settle on another split under bf16 rounding (12 decisions at once), at 0.5 none did. Class
# balancing is left out: it draws every class down to the smallest clean count, so one borderline
# sample would reshuffle the whole mask; it is device-independent numpy.
TURN_OPTS = ("turn_lp_epochs=2", "turn_fft_epochs=2", "turn_tau=0.5", "turn_class_balance=false")
# Co-Reg as in its tests: small students at 16 px; 3 epochs so that the contrastive and prototype
# terms run (they start in epoch 3). Its loss gets 10 times the tolerance: every epoch a GMM divides
# the data for the other network and one annotation flipped by rounding changes a candidate set, so
# CPU stand-ins for CUDA rounding moved its final loss (two networks, ~5) by up to 0.07.
COREG_OPTS = ("noise_mode=none", "noise_ratio=0", "warmup=1", "epochs=3", "coreg_width=4", "coreg_proj_dim=8",
              "coreg_queue_size=64", "coreg_contrastive_start=0", "coreg_templates=miniature", "lr=0.02",
              "resolution=16", "coreg_annotation_resolution=32")

SCRIPTS = (
    Script("phase1", "main_phase1", "peft", "phase1"),
    Script("phase2", "main_phase2", "fft", "phase2", opts=FFT_LR, uses_phase1_mask=True),
    Script("small_loss", "main_small_loss", "peft", "small_loss"),
    *(Script(f"baseline {method}", "main_baseline", "fft", f"baseline_{method.lower()}",
             args=("--lnl_methods", method), opts=FFT_LR) for method in ("CE", "ELR", "SCE", "GCE", "GMM")),
    Script("turn", "main_turn", "fft", "turn", opts=FFT_LR + TURN_OPTS),
    Script("baseline LabelMatch", "main_baseline", "peft", "baseline_labelmatch",
           args=("--lnl_methods", "LabelMatch"), opts=("label_match_templates=simple",), loss_keys=(),
           acc_key="zero_shot_test_acc"),
    Script("robust_similarity", "main_robust_similarity", "peft", "robust_similarity",
           opts=("rs_blocks=2", "N_CTX=4", "lr=0.002")),
    Script("coreg", "main_coreg", "fft", "coreg", opts=COREG_OPTS, noisy=False,
           loss_keys=("net1_loss", "net2_loss"), decisions="annotation", loss_slack=10.0),
)


# ---------------------------------------------------------------- one run and what it left
@dataclass
class Outcome:
    """What a run left: its decisions, its per-epoch losses, its test accuracy, and what went wrong."""

    name: str
    run_dir: Optional[Path] = None
    seconds: float = 0.0
    error: Optional[str] = None  # the exception, or a missing summary.json
    decisions: Optional[np.ndarray] = None  # 1-D: the clean mask, or Co-Reg's per-template top-1 labels
    decision_name: str = "mask"
    losses: list[dict] = field(default_factory=list)  # per epoch: loss key -> value (None: no training)
    acc: Optional[float] = None
    nonfinite: list[str] = field(default_factory=list)  # where a NaN or inf was found
    world_size: int = 1


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    check: str
    result: str
    figure: str


def find_run_dir(output_dir: Path) -> Optional[Path]:
    """The one run directory a script made under its own output_dir (the folder with config.yaml)."""
    found = [path.parent for path in output_dir.rglob("config.yaml")]
    return found[0] if len(found) == 1 else None


def script_argv(script: Script, world: dict, out: Path, device: str, precision: str,
                phase1_mask: Optional[Path] = None) -> list[str]:
    """The command line of `script` on the smoke world: output under <out>/<slug>, on `device` in `precision`."""
    argv = ["--cfg", str(world[script.cfg]), *(NOISE if script.noisy else ()), *script.args]
    if script.uses_phase1_mask and phase1_mask is not None:
        argv += ["--clean_mask", str(phase1_mask)]
    return argv + ["--overwrite", "--opts", *script.opts, f"output_dir={out / script.slug}", f"device={device}",
                   f"precision={precision}"]


def run_in_process(script: Script, argv: list[str], out: Path) -> Outcome:
    """Call the script's main(argv) here, its output to <out>/<slug>.out; never raise."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    error = None
    with open(out / f"{script.slug}.out", "w", encoding="utf-8") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                importlib.import_module(script.module).main(argv)
            except (Exception, SystemExit) as err:  # SystemExit: argparse refused the command line
                traceback.print_exc(file=log)
                error = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"[:240]
            finally:
                _close_run_logger()
    outcome = read_outcome(script, out / script.slug)
    outcome.seconds = time.time() - started
    outcome.error = error or outcome.error
    return outcome


def _close_run_logger() -> None:
    """The scripts' 'deft' logger points at the redirected stream and log.txt: close both handlers."""
    logger = logging.getLogger("deft")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def read_outcome(script: Script, output_dir: Path) -> Outcome:
    """Read a finished run's summary, metrics and decisions from the run directory under `output_dir`."""
    path = find_run_dir(output_dir)
    outcome = Outcome(script.name, run_dir=path, decision_name=script.decisions)
    if path is None:
        outcome.error = f"not one run directory (with config.yaml) under {output_dir}"
        return outcome
    if not (path / "summary.json").is_file():
        outcome.error = f"no summary.json in {path}: the run did not finish"
        return outcome
    summary = json.loads((path / "summary.json").read_text())
    records = read_metrics(str(path)) if (path / "metrics.jsonl").is_file() else []
    outcome.world_size = int(summary.get("world_size", 1))
    outcome.acc = summary.get(script.acc_key)
    outcome.losses = [{key: record.get(key) for key in script.loss_keys} for record in records]
    outcome.nonfinite = nonfinite_fields(summary, "summary")
    for record in records:
        outcome.nonfinite += nonfinite_fields(record, f"epoch {record.get('epoch')}")
    if (path / "clean_scores.npy").is_file() and not np.isfinite(np.load(path / "clean_scores.npy")).all():
        outcome.nonfinite.append("clean_scores.npy")
    if script.decisions == "mask" and (path / "clean_mask.npy").is_file():
        outcome.decisions = np.load(path / "clean_mask.npy").ravel()
    elif script.decisions == "annotation" and summary.get("annotation_cache"):
        state = torch.load(summary["annotation_cache"], map_location="cpu", weights_only=True)
        outcome.decisions = state["template_top1"].numpy().ravel()  # (templates * samples,)
    return outcome


def nonfinite_fields(values, where: str) -> list[str]:
    """The places in a JSON-like value that hold NaN or infinity."""
    if isinstance(values, dict):
        return [place for key, value in values.items() for place in nonfinite_fields(value, f"{where}.{key}")]
    if isinstance(values, (list, tuple)):
        return [place for i, value in enumerate(values) for place in nonfinite_fields(value, f"{where}[{i}]")]
    if isinstance(values, float) and not math.isfinite(values):
        return [where]
    return []


def run_suite(world: dict, out: Path, device: str, precision: str, phase1_mask: Optional[Path] = None,
              label: str = "") -> dict[str, Outcome]:
    """Every script on `device` in `precision`; phase 2 trains on `phase1_mask` (default: this suite's)."""
    shutil.rmtree(out, ignore_errors=True)  # a reused --root: no earlier run or annotation cache counts
    outcomes = {}
    for script in SCRIPTS:
        own_phase1 = outcomes.get(SCRIPTS[0].name)
        mask = phase1_mask or (own_phase1 and own_phase1.run_dir and own_phase1.run_dir / "clean_mask.npy")
        outcome = run_in_process(script, script_argv(script, world, out, device, precision, mask), out)
        outcomes[script.name] = outcome
        print(f"  {label or device + ' ' + precision}: {script.name:<20} {outcome.seconds:5.1f} s  "
              f"{outcome.error or 'done'}", flush=True)
    return outcomes


# ---------------------------------------------------------------- comparisons
def reference_row(check: str, outcome: Outcome) -> Row:
    """The CPU run: it finished with finite numbers; the figure says what it produced."""
    if outcome.error:
        return Row(check, FAIL, outcome.error)
    if outcome.nonfinite:
        return Row(check, FAIL, f"non-finite: {', '.join(outcome.nonfinite[:3])}")
    parts = [f"{outcome.seconds:.1f} s"]
    if outcome.decisions is not None and outcome.decisions.dtype == bool:
        parts.append(f"mask {int(outcome.decisions.sum())}/{outcome.decisions.size}")
    elif outcome.decisions is not None:
        parts.append(f"{outcome.decisions.size} annotations")
    if final_loss(outcome) is not None:
        parts.append(f"loss {final_loss(outcome):.4f}")
    if outcome.acc is not None:
        parts.append(f"acc {outcome.acc:.1f}")
    return Row(check, OK, ", ".join(parts))


def final_loss(outcome: Outcome) -> Optional[float]:
    """The sum of the loss keys in the last epoch (Co-Reg: both networks); None without training."""
    if not outcome.losses or not outcome.losses[-1] or None in outcome.losses[-1].values():
        return None
    return float(sum(outcome.losses[-1].values()))


def decision_difference(reference: np.ndarray, run: np.ndarray) -> Optional[float]:
    """The fraction of entries that differ; None when the shapes differ (not the same samples)."""
    if reference.shape != run.shape:
        return None
    return float(np.mean(reference != run)) if reference.size else 0.0


def compare(check: str, reference: Outcome, run: Outcome, tolerance: Tolerance, loss_slack: float = 1.0) -> Row:
    """A CUDA run against the CPU reference: decisions, final loss and test accuracy within `tolerance`."""
    if run.error:
        return Row(check, FAIL, run.error)
    if reference.error:
        return Row(check, SKIPPED, "no CPU reference (the CPU run failed)")
    if run.nonfinite:
        return Row(check, FAIL, f"non-finite: {', '.join(run.nonfinite[:3])}")
    parts, failed = [], False
    loss_tolerance = tolerance.loss * loss_slack

    def part(text: str, over: bool) -> None:
        nonlocal failed
        failed |= over
        parts.append(text + (" OVER" if over else ""))

    if reference.decisions is not None or run.decisions is not None:
        if reference.decisions is None or run.decisions is None:
            part(f"{reference.decision_name} missing in one run", True)
        else:
            diff = decision_difference(reference.decisions, run.decisions)
            if diff is None:
                part(f"{run.decision_name} sizes differ: {reference.decisions.shape} vs {run.decisions.shape}", True)
            else:
                part(f"{run.decision_name} {100 * diff:.1f}% differ (tol {100 * tolerance.decisions:g}%)",
                     diff > tolerance.decisions)
    losses = final_loss(reference), final_loss(run)
    if losses != (None, None):
        if None in losses:
            part(f"final loss {losses[0]} vs {losses[1]}", True)
        else:
            diff = abs(losses[1] - losses[0])
            part(f"loss diff {diff:.4f} (tol {loss_tolerance:g})", diff > loss_tolerance)
    if reference.acc is not None or run.acc is not None:
        if None in (reference.acc, run.acc):
            part(f"acc {reference.acc} vs {run.acc}", True)
        else:
            diff = abs(run.acc - reference.acc)
            part(f"acc diff {diff:.1f} (tol {tolerance.acc:g})", diff > tolerance.acc)
    return Row(check, FAIL if failed else OK, ", ".join(parts))


def compare_ddp(check: str, single: Outcome, ddp: Outcome, tolerance: DdpTolerance, note: str = "") -> Row:
    """torchrun against one process: the mask and every epoch's loss within `tolerance`."""
    suffix = f"; {note}" if note else ""
    if ddp.error:
        return Row(check, FAIL, ddp.error + suffix)
    if single.error:
        return Row(check, SKIPPED, "no 1-process run to compare with (it failed)" + suffix)
    problems, parts = [], []
    if ddp.world_size != 2:
        problems.append(f"world_size {ddp.world_size}, expected 2")
    if ddp.nonfinite:
        problems.append(f"non-finite: {', '.join(ddp.nonfinite[:3])}")
    diff = None
    if single.decisions is not None and ddp.decisions is not None:
        diff = decision_difference(single.decisions, ddp.decisions)
    if diff is None:
        problems.append("masks missing or of different sizes")
    else:
        count = int(round(diff * single.decisions.size))
        parts.append(f"mask {count}/{single.decisions.size} differ (tol {100 * tolerance.decisions:g}%)")
        if diff > tolerance.decisions:
            problems.append("mask differs")
    single_losses = [epoch.get("loss") for epoch in single.losses]
    ddp_losses = [epoch.get("loss") for epoch in ddp.losses]
    if len(single_losses) != len(ddp_losses) or None in single_losses + ddp_losses or not single_losses:
        problems.append(f"per-epoch losses {single_losses} vs {ddp_losses}")
    else:
        rel = max(abs(b - a) / max(abs(a), 1e-12) for a, b in zip(single_losses, ddp_losses))
        parts.append(f"loss max rel diff {rel:.1e} over {len(single_losses)} epochs (tol {tolerance.loss_rel:g})")
        if rel > tolerance.loss_rel:
            problems.append("loss differs")
    figure = ", ".join(problems + parts) + suffix
    return Row(check, FAIL if problems else OK, figure)


# ---------------------------------------------------------------- torchrun
def ddp_plan(cuda_skip: Optional[str]) -> tuple[str, str, str]:
    """(backend, device, note): NCCL on CUDA with 2+ GPUs, otherwise gloo on CPU and why."""
    if cuda_skip is None and torch.cuda.device_count() >= 2:
        return "nccl", "cuda", ""
    if cuda_skip is None:
        return "gloo", "cpu", "NCCL needs 2 GPUs, found 1: ran gloo on CPU instead"
    if cuda_skip == "--cpu_only":
        return "gloo", "cpu", "--cpu_only: gloo on CPU"
    return "gloo", "cpu", "no CUDA: ran gloo on CPU instead"


def torchrun(script: Script, world: dict, out: Path, device: str, timeout: int = 600) -> Outcome:
    """`script` under torchrun --nproc_per_node 2 in fp32; its output to <out>/<slug>.out."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / f"{script.module}.py"), *script_argv(script, world, out, device, "fp32")]
    # one thread per process: two processes on a small CPU must not fight over its cores
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()
    with open(out / f"{script.slug}.out", "w", encoding="utf-8") as log:
        try:
            result = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            error = None if result.returncode == 0 else f"torchrun exited with {result.returncode}"
        except subprocess.TimeoutExpired:
            error = f"torchrun did not finish within {timeout} s"
    if error:
        error += f": {first_exception(out / f'{script.slug}.out')} (log: {script.slug}.out)"
    outcome = read_outcome(script, out / script.slug)
    outcome.seconds = time.time() - started
    outcome.error = error or outcome.error
    return outcome


def first_exception(log: Path) -> str:
    """The first 'error: ...' or 'SomeError: ...' line of a log: a rank's own error, not torchrun's summary."""
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if re.match(r"^(error: |[\w.]*(Error|Exception)\b:)", line) and "ChildFailedError" not in line:
            return line[:200]
    return "no exception in the log"


# ---------------------------------------------------------------- the whole check
def cuda_skip_reason(cpu_only: bool) -> Optional[str]:
    """Why the CUDA part cannot run here, or None when it can."""
    if cpu_only:
        return "--cpu_only"
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return "CUDA not available: this torch is a CPU-only build"
        return "CUDA not available: torch.cuda.is_available() is False (no GPU or no driver)"
    return None


def run_checks(root: Path, cpu_only: bool = False) -> tuple[list[Row], Optional[str]]:
    """Build the smoke world under `root`, run every check; return the rows and why CUDA was skipped."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "world.out", "w", encoding="utf-8") as log, contextlib.redirect_stderr(log):
        world = build_smoke_world(root)  # open_clip warns that the tiny CLIP has random weights
    cuda_skip = cuda_skip_reason(cpu_only)
    print(f"GPU self-check under {root}: torch {torch.__version__}, "
          f"{cuda_skip or 'CUDA ' + torch.cuda.get_device_name(0)}", flush=True)
    reference = run_suite(world, root / "cpu_fp32", "cpu", "fp32")
    rows = [reference_row(f"cpu fp32: {name}", outcome) for name, outcome in reference.items()]
    phase1_run = reference[SCRIPTS[0].name].run_dir
    phase1_mask = phase1_run / "clean_mask.npy" if phase1_run else None
    cuda_fp32: dict[str, Outcome] = {}
    for precision in CUDA_PRECISIONS:
        if cuda_skip:
            rows.append(Row(f"cuda {precision} vs cpu fp32: every script", SKIPPED, cuda_skip))
            continue
        # phase 2 trains on the CPU run's phase-1 mask: it compares fine-tuning, not phase 1 again
        outcomes = run_suite(world, root / f"cuda_{precision}", "cuda", precision, phase1_mask)
        cuda_fp32 = outcomes if precision == "fp32" else cuda_fp32
        rows += [compare(f"cuda {precision} vs cpu fp32: {script.name}", reference[script.name],
                         outcomes[script.name], TOLERANCES[precision], script.loss_slack) for script in SCRIPTS]
    backend, device, note = ddp_plan(cuda_skip)
    single = (cuda_fp32 if device == "cuda" else reference)[SCRIPTS[0].name]
    print(f"  torchrun 2 processes ({backend}, {device}): {SCRIPTS[0].name}", flush=True)
    ddp = torchrun(SCRIPTS[0], world, root / f"torchrun_{backend}", device)
    rows.append(compare_ddp(f"torchrun 2 proc ({backend}, {device}) vs 1: {SCRIPTS[0].name}", single, ddp,
                            DDP_TOLERANCES[backend], f"{ddp.seconds:.0f} s" + (f"; {note}" if note else "")))
    return rows, cuda_skip


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table."""
    header = Row("check", "result", "figure")
    width = [max(len(getattr(row, key)) for row in (header, *rows)) for key in ("check", "result")]
    lines = [f"{row.check:<{width[0]}} | {row.result:<{width[1]}} | {row.figure}" for row in (header, *rows)]
    lines.insert(1, "-" * width[0] + "-+-" + "-" * width[1] + "-+-" + "-" * 40)
    return "\n".join(lines)


def exit_status(rows: Sequence[Row]) -> int:
    """1 when any row failed, else 0 (skipped rows do not fail)."""
    return int(any(row.result == FAIL for row in rows))


def report(rows: Sequence[Row], cuda_skip: Optional[str], seconds: float, out: Optional[str] = None) -> int:
    """Print the table (and where CUDA was skipped, say so); write it as JSON to `out`; return the exit status."""
    print("\n" + format_table(rows))
    failed = sum(row.result == FAIL for row in rows)
    if cuda_skip and cuda_skip != "--cpu_only":
        print(f"\n{cuda_skip}: only the CPU part ran (CPU fp32 runs and torchrun with gloo on CPU).")
    elif cuda_skip:
        print("\n--cpu_only: only the CPU part ran.")
    print(f"{len(rows)} checks, {failed} failed, {seconds:.0f} s")
    if out:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        atomic_write_json(out, {"torch": torch.__version__, "cuda": cuda_skip or gpu,
                                "seconds": round(seconds, 1), "failed": failed, "rows": [asdict(row) for row in rows]})
    return exit_status(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the self-check; return the exit status (1 on any FAIL)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="work folder (kept); default: a temporary folder, removed")
    parser.add_argument("--cpu_only", action="store_true", help="skip the CUDA part even when CUDA is available")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its runs and logs)")
    parser.add_argument("--out", default=None, help="also write the table as JSON here (e.g. benchmarks/results/)")
    args = parser.parse_args(argv)
    started = time.time()
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="deft_gpu_check_"))
    try:
        rows, cuda_skip = run_checks(root, args.cpu_only)
    finally:
        if args.root is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    status = report(rows, cuda_skip, time.time() - started, args.out)
    if args.root or args.keep:
        print(f"runs and their logs (<suite>/<script>.out) under {root}")
    elif status:
        print("the logs were in a temporary folder: run again with --keep (or --root DIR) to read them")
    return status


if __name__ == "__main__":
    sys.exit(main())
