"""`make miniature-tables` (tools/miniature_tables.py) on a 2-cell, 1-seed, 1-epoch grid of the shifted
Fashion-MNIST miniature: the CSVs it writes hold exactly what the run directories say, results.md opens with
the regime line, and a runs folder of another variant is refused before anything runs."""
import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from fixtures.runs import require_fashion_mnist
from tools import miniature_tables
from experiments.collect_results import CSV_FIELDS

ROOT = Path(__file__).resolve().parent.parent
DATA = "./data/fashion-mnist"
REGIME = ROOT / "results" / "miniature" / "regime.json"


def test_the_shipped_command_on_a_small_grid_writes_tables_that_match_the_runs(tmp_path, monkeypatch):
    require_fashion_mnist(DATA)
    from models.clip_loader import load_clip

    torch.manual_seed(0)
    weights = tmp_path / "tiny_clip.pt"
    torch.save(load_clip("deft-mini-vit", "none").state_dict(), weights)  # the demo's model, random weights
    grid = yaml.safe_load((ROOT / "grids" / "miniature.yaml").read_text())  # the shipped grid, made small
    assert "shifted" in grid["datasets"][0]["peft"] and "shifted" in grid["datasets"][0]["robust_similarity"]
    grid["output_dir"] = str(tmp_path / "runs")
    grid["seeds"] = [0]
    grid["noise"] = ["sym0.4"]
    grid["datasets"][0]["opts"] = ["epochs=1", "warmup=1", "max_train_samples=96", "max_test_samples=64",
                                   "num_workers=0", "progress=false", f"pretrained={weights}",
                                   f"noise_cache_dir={tmp_path / 'noise'}"]
    grid["experiments"] = [{"methods": ["RobustSimilarity", "CE"]}]  # a detector of the grid, a trainer
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "tables"
    out.mkdir()
    (out / "regime.json").write_text('{"kept": true}')  # the collector must leave a regime file alone
    regime_before = REGIME.read_bytes()
    monkeypatch.chdir(ROOT)  # the grid's YAML paths are relative to the repository, as the shipped command's

    assert miniature_tables.main(["--grid", str(path), "--out", str(out), "--no_pretrain"]) == 0
    with open(out / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_FIELDS and {r["method"] for r in rows} == {"RobustSimilarity (m=4)", "CE"}
    for row in rows:
        run = tmp_path / "runs" / row["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["render_size"], config["render_floor"], config["max_train_samples"]) == (10, 50, 96)
        assert (row["dataset"], row["noise"], row["seed"]) == ("fashion_mnist", "sym0.4", "0")
        assert float(row["best_acc"]) == pytest.approx(summary["best_test_acc"])
        if row["method"].startswith("RobustSimilarity"):
            for key in ("precision", "recall", "f1", "auroc"):
                assert float(row[key]) == pytest.approx(100 * summary[f"mask_{key}"])
    with open(out / "results_cells.csv", encoding="utf-8") as handle:
        cells = {(c["method"], c["metric"]): c for c in csv.DictReader(handle)}
    detector = next(r for r in rows if r["method"].startswith("RobustSimilarity"))
    assert float(cells[(detector["method"], "f1")]["mean"]) == pytest.approx(float(detector["f1"]))
    assert cells[(detector["method"], "f1")]["n"] == "1"
    info = json.loads((out / "run_info.json").read_text())
    assert info["sweep_exit_status"] == 0 and info["seconds"] >= 0 and "miniature_tables" in info["command"]
    assert info["variant"] == "shifted"
    regime = json.loads(regime_before)
    markdown = (out / "results.md").read_text()
    first, _, rest = markdown.partition("\n\n")
    assert first.startswith("The shifted miniature's regime (clean labels, 2 seeds, 2,000 images")
    for words in (f"zero-shot {regime['zero_shot']:.1f}", f"clean full fine-tuning {regime['clean_fft']:.1f}",
                  f"{regime['clean_fft'] - regime['zero_shot']:.1f} points"):
        assert words in first
    assert rest.startswith("Cells: mean ± sample standard deviation")
    assert (out / "regime.json").read_text() == '{"kept": true}' and REGIME.read_bytes() == regime_before


def test_a_runs_folder_of_another_rendering_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    theirs = runs / "phase1" / "fashion_mnist" / "sym0.4_seed0"
    ours = runs / "baseline_ce" / "fashion_mnist" / "sym0.4_seed0"
    for folder, keys in ((theirs, {}), (ours, {"render_size": 10, "render_floor": 50})):
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"dataset": "fashion_mnist", **keys}))
    grid = yaml.safe_load((ROOT / "grids" / "miniature.yaml").read_text())
    grid["output_dir"] = str(runs)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    monkeypatch.chdir(ROOT)
    # an in-distribution run (no render keys: native images) in the shifted grid's folder
    assert miniature_tables.main(["--grid", str(path), "--out", str(tmp_path / "tables"), "--no_pretrain"]) == 2
    assert str(theirs) in capsys.readouterr().err and not (tmp_path / "tables").exists()
    assert miniature_tables.foreign_runs(str(runs), miniature_tables.Rendering()) == [str(ours)]
