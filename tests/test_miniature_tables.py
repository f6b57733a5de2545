"""`make miniature-tables` (tools/miniature_tables.py) on a 2-cell, 1-seed, 1-epoch grid of the real
Fashion-MNIST miniature: the CSVs it writes hold exactly what the run directories say."""
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


def test_the_shipped_command_on_a_small_grid_writes_tables_that_match_the_runs(tmp_path, monkeypatch):
    require_fashion_mnist(DATA)
    from models.clip_loader import load_clip

    torch.manual_seed(0)
    weights = tmp_path / "tiny_clip.pt"
    torch.save(load_clip("deft-mini-vit", "none").state_dict(), weights)  # the demo's model, random weights
    grid = yaml.safe_load((ROOT / "grids" / "miniature.yaml").read_text())  # the shipped grid, made small
    grid["output_dir"] = str(tmp_path / "runs")
    grid["seeds"] = [0]
    grid["noise"] = ["sym0.4"]
    grid["datasets"][0]["opts"] = ["epochs=1", "warmup=1", "max_train_samples=96", "max_test_samples=64",
                                   "num_workers=0", "progress=false", f"pretrained={weights}",
                                   f"noise_cache_dir={tmp_path / 'noise'}"]
    grid["experiments"] = [{"methods": ["SmallLoss", "CE"]}]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    monkeypatch.chdir(ROOT)  # the grid's YAML paths are relative to the repository, as the shipped command's

    assert miniature_tables.main(["--grid", str(path), "--out", str(tmp_path / "tables"), "--no_pretrain"]) == 0
    out = tmp_path / "tables"
    with open(out / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_FIELDS and {r["method"] for r in rows} == {"SmallLoss", "CE"}
    for row in rows:
        summary = json.loads((tmp_path / "runs" / row["run_dir"] / "summary.json").read_text())
        assert (row["dataset"], row["noise"], row["seed"]) == ("fashion_mnist", "sym0.4", "0")
        assert float(row["best_acc"]) == pytest.approx(summary["best_test_acc"])
        if row["method"] == "SmallLoss":
            for key in ("precision", "recall", "f1", "auroc"):
                assert float(row[key]) == pytest.approx(100 * summary[f"mask_{key}"])
    with open(out / "results_cells.csv", encoding="utf-8") as handle:
        cells = {(c["method"], c["metric"]): c for c in csv.DictReader(handle)}
    small_loss = next(r for r in rows if r["method"] == "SmallLoss")
    assert float(cells[("SmallLoss", "f1")]["mean"]) == pytest.approx(float(small_loss["f1"]))
    assert cells[("SmallLoss", "f1")]["n"] == "1"
    info = json.loads((out / "run_info.json").read_text())
    assert info["sweep_exit_status"] == 0 and info["seconds"] >= 0 and "miniature_tables" in info["command"]
    assert (out / "results.md").read_text().startswith("Cells: mean ± sample standard deviation")
