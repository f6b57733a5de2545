"""End to end: the sweep runner on a tiny grid (2 noise settings x 2 seeds x DeFT and GMM), then the
collector with a paper number and the figures, checked against the run summaries by hand.

The twelve training commands run in this process (the runner's executor is a parameter) to keep the
test short; the runner's own subprocess path then resumes an interrupted run in a real child process.
"""
import csv
import importlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fixtures.world import build_smoke_world
from experiments import sweep
from experiments.grid import Command, load_grid
from experiments.collect_results import main as collect_main
from utils.errors import UserError
from utils.run_dir import RunFinished

ROOT = Path(__file__).resolve().parent.parent


def in_process(command: Command, torchrun: int) -> tuple[int, str]:
    """Run a command's script main() here, with the exit codes run_cli gives (0, 2)."""
    module = importlib.import_module(command.script[:-len(".py")])
    try:
        module.main([*command.args, "--continue"])
    except RunFinished:
        pass
    except UserError as err:
        return 2, f"error: {err}"
    return 0, ""


def _summary(output: Path, run: str, noise: str, seed: int) -> dict:
    return json.loads((output / run / "cifar10" / f"{noise}_seed{seed}" / "summary.json").read_text())


def _cell(values) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _table(markdown: str, title: str) -> dict:
    section = markdown.split(f"## {title}\n\n")[1].split("\n\n")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines()]
    header = [c.strip() for c in rows[0]]
    return {r[0].strip(): dict(zip(header[1:], (c.strip() for c in r[1:]))) for r in rows[2:]}


def test_sweep_then_tables_and_figures(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    world = build_smoke_world(tmp_path / "world")
    output = Path(world["output"])
    grid = tmp_path / "world" / "grid.yaml"
    shutil.copy(ROOT / "tests" / "grids" / "smoke.yaml", grid)
    monkeypatch.chdir(tmp_path / "world")

    # 1. The sweep: 4 cells x (phase 1, phase 2, GMM), phase 1 before its phase 2; every run where predicted.
    assert sweep.main([str(grid)], execute=in_process) == 0
    commands = sweep.ordered_commands(load_grid(str(grid)).cells)
    assert len(commands) == 12
    assert all(os.path.isfile(os.path.join(c.run_dir, "summary.json")) for c in commands)

    # 2. An interrupted run (checkpoint, no summary): the runner resumes it in a child process and skips the rest.
    interrupted = output / "phase2" / "cifar10" / "sym0.4_seed1"
    before = json.loads((interrupted / "summary.json").read_text())
    (interrupted / "summary.json").unlink()
    child = subprocess.run([sys.executable, "-m", "experiments.sweep", str(grid)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert child.returncode == 0, child.stderr
    assert "resume: python main_phase2.py --cfg ./FFT.yaml --noise_mode sym --noise_ratio 0.4 --opts seed=1 " \
           "--continue" in child.stdout
    assert "sweep: 12 commands: 1 ran, 11 already finished, 0 failed, 0 skipped" in child.stdout
    after = json.loads((interrupted / "summary.json").read_text())
    assert (after["best_test_acc"], after["last_test_acc"]) == (before["best_test_acc"], before["last_test_acc"])

    # 3. The collector, with a paper number for one cell given through --paper (the shipped file is untouched).
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump({"numbers": [
        {"table": "2", "dataset": "cifar10", "noise": "sym0.2", "method": "DeFT", "backbone": "deft-tiny-vit",
         "metric": "best_acc", "value": 50.0, "source": "[P]"}]}))
    tables = tmp_path / "tables"
    markdown = collect_main([str(output), "--out", str(tables), "--paper", str(paper), "--figures"])

    deft_best = {noise: [_summary(output, "phase2", noise, s)["best_test_acc"] for s in (0, 1)]
                 for noise in ("sym0.2", "sym0.4")}
    gmm_f1 = {noise: [100 * _summary(output, "baseline_gmm", noise, s)["mask_f1"] for s in (0, 1)]
              for noise in ("sym0.2", "sym0.4")}
    deft_f1 = {noise: [100 * _summary(output, "phase1", noise, s)["mask_f1"] for s in (0, 1)]
               for noise in ("sym0.2", "sym0.4")}
    best = _table(markdown, "cifar10: test accuracy, best (%), backbone deft-tiny-vit")
    assert best["DeFT"] == {noise: _cell(values) for noise, values in deft_best.items()}
    assert best["DeFT, paper"] == {"sym0.2": "50.00", "sym0.4": "-"}
    assert best["DeFT, Δ"] == {"sym0.2": f"{statistics.fmean(deft_best['sym0.2']) - 50.0:+.2f}", "sym0.4": "-"}
    f1 = _table(markdown, "cifar10: detection F1 (%), backbone deft-tiny-vit")
    assert f1["GMM"] == {noise: _cell(values) for noise, values in gmm_f1.items()}
    assert f1["DeFT"] == {noise: _cell(values) for noise, values in deft_f1.items()}
    cells = list(csv.DictReader(io.StringIO((tables / "results_cells.csv").read_text())))
    cell = next(c for c in cells if (c["method"], c["noise"], c["metric"]) == ("DeFT", "sym0.2", "best_acc"))
    assert float(cell["mean"]) == pytest.approx(statistics.fmean(deft_best["sym0.2"]))
    assert float(cell["std"]) == pytest.approx(statistics.stdev(deft_best["sym0.2"]))
    assert (cell["n"], cell["seeds"], float(cell["paper"]), cell["paper_source"]) == ("2", "0 1", 50.0, "[P]")

    # 4. The sweep figures: files of some size, and the data drawn = the seeds' mean and std by hand.
    for name in ("cifar10_sym_f1", "cifar10_sym_best_acc"):
        assert (tables / "figures" / f"{name}.png").stat().st_size > 5000
    figure = json.loads((tables / "figures" / "cifar10_sym_f1.json").read_text())
    for method, values in (("DeFT", deft_f1), ("GMM", gmm_f1)):
        line = figure["series"][method]
        assert line["x"] == [0.2, 0.4] and line["n"] == [2, 2]
        assert line["mean"] == pytest.approx([statistics.fmean(values[n]) for n in ("sym0.2", "sym0.4")])
        assert line["std"] == pytest.approx([statistics.stdev(values[n]) for n in ("sym0.2", "sym0.4")])
    accuracy = json.loads((tables / "figures" / "cifar10_sym_best_acc.json").read_text())
    assert accuracy["series"]["DeFT"]["mean"] == pytest.approx([statistics.fmean(deft_best[n]) for n in deft_best])

    # 5. One run's figures from its own files.
    from experiments import plots

    run = output / "phase1" / "cifar10" / "sym0.2_seed0"
    plots.run_figures(str(run))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((run / "curves.json").read_text())["series"]["f1"] == [r["f1"] for r in metrics]
    hist = json.loads((run / "p_clean_hist.json").read_text())
    truly_clean = np.load(run / "truly_clean.npy")
    assert sum(hist["clean_counts"]) == truly_clean.sum() and sum(hist["noisy_counts"]) == (~truly_clean).sum()
    assert hist["auroc"] == _summary(output, "phase1", "sym0.2", 0)["mask_auroc"]


def test_a_sister_methods_grid_runs_and_the_collector_names_its_rows(tmp_path, monkeypatch):
    """Robust Similarity at two block counts (m in the run name: two runs, two rows) and Co-Reg (CLIP's
    labels: one cell, no noise flags) through the runner and the collector, with no special case."""
    from experiments.collect_results import collect

    world = build_smoke_world(tmp_path / "world", per_class_train=6, per_class_test=2, epochs=1)
    coreg = yaml.safe_load(Path(world["fft"]).read_text())
    coreg.update(noise_mode="none", noise_ratio=0.0, warmup=1, epochs=2, coreg_width=4, coreg_proj_dim=8,
                 coreg_queue_size=64, coreg_templates="miniature", resolution=16, coreg_annotation_resolution=32)
    (tmp_path / "world" / "coreg.yaml").write_text(yaml.safe_dump(coreg))
    grid = tmp_path / "world" / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "datasets": [{"name": "cifar10", "peft": "./PEFT.yaml", "robust_similarity": "./PEFT.yaml",
                      "coreg": "./coreg.yaml"}],
        "noise": ["sym0.4"],
        "experiments": [{"methods": ["RobustSimilarity", "CoReg"], "opts": ["rs_blocks=1", "N_CTX=4"]},
                        {"methods": ["RobustSimilarity"], "opts": ["rs_blocks=2", "N_CTX=4"]}]}))
    monkeypatch.chdir(tmp_path / "world")
    assert sweep.main([str(grid)], execute=in_process) == 0
    output = Path(world["output"])
    runs = sorted(p.name for p in output.iterdir() if p.name != "coreg_annotation")  # Co-Reg's CLIP label cache
    assert runs == ["coreg", "robust_similarity_m1", "robust_similarity_m2"]
    rows = {row["method"]: row for row in collect(str(output))}
    assert set(rows) == {"RobustSimilarity (m=1)", "RobustSimilarity (m=2)", "CoReg"}
    for m in (1, 2):
        row = rows[f"RobustSimilarity (m={m})"]
        summary = _summary(output, f"robust_similarity_m{m}", "sym0.4", 0)
        assert (row["role"], row["noise"]) == ("both", "sym0.4") and summary["rs_blocks"] == m
        assert row["f1"] == pytest.approx(100 * summary["mask_f1"])
    assert (rows["CoReg"]["role"], rows["CoReg"]["noise"]) == ("accuracy", "clip_annotation")
    assert rows["CoReg"]["best_acc"] == _summary(output, "coreg", "none0.0", 0)["best_test_acc"]
