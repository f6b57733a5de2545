"""tools/gpu_check.py: its CPU part end to end (CUDA reported as skipped), and its comparisons on hand-made runs."""
import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch

from tools import gpu_check
from tools.gpu_check import (DDP_TOLERANCES, FAIL, OK, SKIPPED, TOLERANCES, Outcome, Row, compare, compare_ddp,
                             exit_status, first_exception, report)

# what the issue asks the self-check to run: phase 1, phase 2, small-loss, each baseline, RS, Co-Reg
EXPECTED_SCRIPTS = ["phase1", "phase2", "small_loss", "baseline CE", "baseline ELR", "baseline SCE", "baseline GCE",
                    "baseline GMM", "turn", "baseline LabelMatch", "robust_similarity", "coreg"]


@pytest.fixture(scope="module")
def cpu_part(tmp_path_factory):
    """`python tools/gpu_check.py --root ... --out ...` as on a machine without CUDA (whatever this one has)."""
    root = tmp_path_factory.mktemp("gpu_check")
    stdout = io.StringIO()
    threads = torch.get_num_threads()
    # one thread: on a shared 2-core machine, two threads spin against other jobs (Co-Reg: 3 s -> 50 s)
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
            patch.setattr(torch.cuda, "is_available", lambda: False)
            status = gpu_check.main(["--root", str(root / "work"), "--out", str(root / "table.json")])
    finally:
        torch.set_num_threads(threads)
    table = json.loads((root / "table.json").read_text())
    return status, {row["check"]: row for row in table["rows"]}, table, stdout.getvalue(), root / "work"


def test_cpu_part_runs_every_script_and_reports_cuda_as_skipped(cpu_part):
    status, rows, table, stdout, _ = cpu_part
    assert status == 0 and table["failed"] == 0
    assert [check[len("cpu fp32: "):] for check in rows if check.startswith("cpu fp32: ")] == EXPECTED_SCRIPTS
    for name in EXPECTED_SCRIPTS:
        assert rows[f"cpu fp32: {name}"]["result"] == OK, rows[f"cpu fp32: {name}"]
    for precision in ("fp32", "amp", "fp16"):
        row = rows[f"cuda {precision} vs cpu fp32: every script"]
        assert row["result"] == SKIPPED and row["figure"].startswith("CUDA not available")
    (ddp,) = [row for check, row in rows.items() if check.startswith("torchrun 2 proc")]
    assert ddp["check"] == "torchrun 2 proc (gloo, cpu) vs 1: phase1" and ddp["result"] == OK
    assert "mask 0/120 differ" in ddp["figure"] and "no CUDA: ran gloo on CPU instead" in ddp["figure"]
    assert {row["result"] for row in rows.values()} == {OK, SKIPPED} and len(rows) == len(EXPECTED_SCRIPTS) + 4
    # the printed table and the closing line
    assert re.search(r"^check +\| result +\| figure$", stdout, re.MULTILINE)
    assert all(check in stdout for check in rows)
    assert "CUDA not available" in stdout and "only the CPU part ran" in stdout


def test_figures_agree_with_the_files_the_runs_left(cpu_part):
    _, rows, _, _, work = cpu_part
    (run,) = [path.parent for path in (work / "cpu_fp32" / "phase1").rglob("clean_mask.npy")]
    mask = np.load(run / "clean_mask.npy")
    assert f"mask {int(mask.sum())}/120" in rows["cpu fp32: phase1"]["figure"]
    (ddp,) = [path.parent for path in (work / "torchrun_gloo" / "phase1").rglob("clean_mask.npy")]
    assert np.array_equal(np.load(ddp / "clean_mask.npy"), mask)
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert f"loss {last['loss']:.4f}" in rows["cpu fp32: phase1"]["figure"]


# ---------------------------------------------------------------- the comparisons, by hand
def _run(flipped: int = 0, loss: float = 2.0, acc: float = 50.0, **fields) -> Outcome:
    """A finished run on 100 samples: the first `flipped` decisions inverted against the reference."""
    decisions = np.zeros(100, dtype=bool)
    decisions[::2] = True
    decisions[:flipped] = ~decisions[:flipped]
    return Outcome("phase1", decisions=decisions, losses=[{"loss": 3.0}, {"loss": loss}], acc=acc, **fields)


@pytest.mark.parametrize("run, precision, result", [
    (_run(flipped=2), "fp32", OK),  # 2% of 100, tolerance 2%: the boundary passes
    (_run(flipped=3), "fp32", FAIL),
    (_run(flipped=3), "amp", OK),
    (_run(flipped=11), "fp16", FAIL),  # 11% > 10%
    (_run(loss=2.009), "fp32", OK),
    (_run(loss=2.02), "fp32", FAIL),  # loss diff 0.02 > 0.01
    (_run(loss=2.04), "amp", OK),
    (_run(acc=55.0), "fp32", OK),  # 5 points: two test images
    (_run(acc=57.5), "fp32", FAIL),
    (_run(acc=57.5), "amp", OK),
])
def test_compare_applies_the_tolerance_of_each_precision(run, precision, result):
    row = compare("check", _run(), run, TOLERANCES[precision])
    assert row.result == result, row.figure


def test_compare_reports_each_figure_and_refuses_broken_runs():
    row = compare("cuda amp vs cpu fp32: phase1", _run(), _run(flipped=3, loss=2.1, acc=52.5), TOLERANCES["amp"])
    assert row == Row("cuda amp vs cpu fp32: phase1", FAIL,
                      "mask 3.0% differ (tol 5%), loss diff 0.1000 (tol 0.05) OVER, acc diff 2.5 (tol 10)")
    assert compare("c", _run(), _run(loss=2.1), TOLERANCES["amp"], loss_slack=10.0).result == OK  # Co-Reg's slack
    fewer = Outcome("phase1", decisions=np.zeros(99, dtype=bool), losses=[{"loss": 2.0}], acc=50.0)
    assert "sizes differ" in compare("c", _run(), fewer, TOLERANCES["fp16"]).figure
    nan = compare("c", _run(), _run(loss=float("nan"), nonfinite=["epoch 2.loss"]), TOLERANCES["fp16"])
    assert (nan.result, nan.figure) == (FAIL, "non-finite: epoch 2.loss")
    crashed = compare("c", _run(), Outcome("phase1", error="RuntimeError: CUDA error"), TOLERANCES["fp32"])
    assert (crashed.result, crashed.figure) == (FAIL, "RuntimeError: CUDA error")
    assert compare("c", Outcome("phase1", error="x"), _run(), TOLERANCES["fp32"]).result == SKIPPED
    # Co-Reg: the final loss is the sum of both networks'; no mask, the annotation instead
    two = Outcome("coreg", losses=[{"net1_loss": 1.0, "net2_loss": 2.0}], acc=10.0)
    other = Outcome("coreg", losses=[{"net1_loss": 1.0, "net2_loss": 2.005}], acc=10.0)
    assert compare("c", two, other, TOLERANCES["fp32"]).figure == "loss diff 0.0050 (tol 0.01), acc diff 0.0 (tol 5)"


def test_compare_ddp_wants_the_same_mask_and_loss_under_gloo():
    one = _run()
    one.losses = [{"loss": 3.0}, {"loss": 2.0}]
    same = _run(world_size=2)
    same.losses = [{"loss": 3.0 * (1 + 1e-6)}, {"loss": 2.0}]
    assert compare_ddp("d", one, same, DDP_TOLERANCES["gloo"]).result == OK
    flipped = _run(flipped=1, world_size=2)
    row = compare_ddp("d", one, flipped, DDP_TOLERANCES["gloo"])
    assert row.result == FAIL and "mask 1/100 differ" in row.figure
    assert compare_ddp("d", one, flipped, DDP_TOLERANCES["nccl"]).result == OK  # 1% within NCCL's 2%
    drifted = _run(world_size=2)
    drifted.losses = [{"loss": 3.0 * (1 + 2e-5)}, {"loss": 2.0}]
    assert compare_ddp("d", one, drifted, DDP_TOLERANCES["gloo"]).result == FAIL
    assert "world_size 1, expected 2" in compare_ddp("d", one, _run(), DDP_TOLERANCES["gloo"]).figure


def test_a_fail_row_makes_the_exit_status_1(tmp_path, capsys):
    failing = compare("cuda fp32 vs cpu fp32: phase1", _run(), _run(flipped=10), TOLERANCES["fp32"])
    fine = Row("cpu fp32: phase1", OK, "1.0 s")
    skipped = Row("cuda amp vs cpu fp32: every script", SKIPPED, "CUDA not available")
    assert failing.result == FAIL and exit_status([fine, skipped]) == 0
    assert report([fine, skipped, failing], None, 1.0, str(tmp_path / "table.json")) == 1
    printed = capsys.readouterr().out
    assert re.search(r"cuda fp32 vs cpu fp32: phase1 +\| FAIL +\| mask 10.0% differ \(tol 2%\) OVER", printed)
    assert "3 checks, 1 failed" in printed
    written = json.loads((tmp_path / "table.json").read_text())
    assert written["failed"] == 1 and written["rows"][2] == {"check": failing.check, "result": FAIL,
                                                             "figure": failing.figure}


def test_a_failed_torchrun_is_reported_with_the_ranks_own_error(tmp_path):
    log = tmp_path / "phase1.out"
    log.write_text("12:35:33 phase1: run directory ...\n"
                   "error: batch_size 31 is the global batch and must be divisible by the number of processes (2)\n"
                   "Traceback (most recent call last):\n"
                   "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n")
    assert first_exception(log).startswith("error: batch_size 31 is the global batch")
    log.write_text("Traceback (most recent call last):\nRuntimeError: NCCL error in: ...\nChildFailedError: \n")
    assert first_exception(log) == "RuntimeError: NCCL error in: ..."
