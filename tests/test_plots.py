"""Figures: per-run curves and p_clean histogram, sweep figures, and life without matplotlib."""
import json
import sys

import numpy as np
import pytest
import yaml

from experiments import plots
from experiments.collect_results import main as collect_main

EPOCHS = [{"epoch": 1, "precision": 0.8, "recall": 0.5, "f1": 0.615, "test_acc": 40.0, "loss": 2.0},
          {"epoch": 2, "precision": 0.85, "recall": 0.7, "f1": 0.768, "test_acc": 55.5, "loss": 1.5},
          {"epoch": 3, "precision": 0.9, "recall": 0.8, "f1": 0.847, "test_acc": 61.25, "loss": 1.2}]
CLEAN_SCORES = [0.91, 0.96, 0.86, 0.61]  # 20 bins of width 0.05: bins 18, 19, 17, 12
NOISY_SCORES = [0.11, 0.21, 0.56]  # bins 2, 4, 11


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "output" / "phase1" / "cifar100" / "sym0.4_seed0"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EPOCHS))
    np.save(folder / "clean_scores.npy", np.array(CLEAN_SCORES + NOISY_SCORES, dtype=np.float32))
    np.save(folder / "truly_clean.npy", np.array([True] * 4 + [False] * 3))
    (folder / "summary.json").write_text(json.dumps({"script": "phase1", "mask_auroc": 0.9167}))
    return folder


def _is_real_png(path, min_bytes=5000):
    """A PNG file of some size whose pixels are not one flat colour."""
    image = pytest.importorskip("matplotlib.image").imread(str(path))
    data = path.read_bytes()
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes and len(colours) > 10


def test_curves_png_and_its_data_equal_the_metrics(run_dir):
    pytest.importorskip("matplotlib")
    path = plots.plot_curves(str(run_dir))
    assert path == str(run_dir / "curves.png") and _is_real_png(run_dir / "curves.png")
    data = json.loads((run_dir / "curves.json").read_text())
    assert data["epochs"] == [1, 2, 3]
    assert data["series"] == {key: [r[key] for r in EPOCHS] for key in ("precision", "recall", "f1", "test_acc")}


def test_p_clean_histogram_counts_by_hand_and_auroc_from_the_summary(run_dir):
    pytest.importorskip("matplotlib")
    plots.plot_p_clean_hist(str(run_dir))
    assert _is_real_png(run_dir / "p_clean_hist.png")
    data = json.loads((run_dir / "p_clean_hist.json").read_text())
    clean, noisy = [0] * 20, [0] * 20
    for b in (18, 19, 17, 12):
        clean[b] += 1
    for b in (2, 4, 11):
        noisy[b] += 1
    assert (data["clean_counts"], data["noisy_counts"]) == (clean, noisy)
    assert data["edges"][0] == 0.0 and data["edges"][-1] == 1.0 and len(data["edges"]) == 21
    assert (data["num_clean"], data["num_noisy"], data["auroc"]) == (4, 3, 0.9167)


def test_plots_cli_draws_every_figure_a_run_supports(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert plots.main(["run", str(run_dir), "--out", str(tmp_path / "figs")]) == 0
    out = tmp_path / "figs" / "phase1" / "cifar100" / "sym0.4_seed0"
    assert sorted(p.name for p in out.iterdir()) == ["curves.json", "curves.png", "p_clean_hist.json",
                                                     "p_clean_hist.png"]
    assert plots.main(["run", str(tmp_path)]) == 2 and "has no metrics.jsonl" in capsys.readouterr().err


CELLS = [  # the collector's cells: two methods, two ratios, a real-noise cell and the ablation's pseudo-method
    {"dataset": "cifar100", "noise": "sym0.2", "backbone": "B", "method": "DeFT", "metric": "f1", "mean": 90.0,
     "std": 1.5, "n": 3},
    {"dataset": "cifar100", "noise": "sym0.4", "backbone": "B", "method": "DeFT", "metric": "f1", "mean": 85.0,
     "std": None, "n": 1},
    {"dataset": "cifar100", "noise": "sym0.2", "backbone": "B", "method": "GMM", "metric": "f1", "mean": 80.0,
     "std": 2.0, "n": 2},
    {"dataset": "cifar100", "noise": "idn0.3", "backbone": "B", "method": "GMM", "metric": "f1", "mean": 70.0,
     "std": 0.5, "n": 2},
    {"dataset": "cifar100N", "noise": "real", "backbone": "B", "method": "DeFT", "metric": "f1", "mean": 60.0,
     "std": None, "n": 1},
    {"dataset": "cifar100", "noise": "sym0.2", "backbone": "B", "method": "DeFT (no adaptation)",
     "metric": "best_acc", "mean": 60.0, "std": None, "n": 1},
]


def test_sweep_figures_one_per_dataset_and_mode_with_their_data(tmp_path):
    pytest.importorskip("matplotlib")
    written = plots.sweep_figures(CELLS, str(tmp_path), exclude=("DeFT (no adaptation)",))
    assert sorted(written) == [str(tmp_path / "cifar100_idn_f1.png"), str(tmp_path / "cifar100_sym_f1.png")]
    assert _is_real_png(tmp_path / "cifar100_sym_f1.png")
    sym = json.loads((tmp_path / "cifar100_sym_f1.json").read_text())
    assert (sym["dataset"], sym["noise_mode"], sym["metric"]) == ("cifar100", "sym", "f1")
    assert sym["series"] == {"DeFT": {"x": [0.2, 0.4], "mean": [90.0, 85.0], "std": [1.5, None], "n": [3, 1]},
                             "GMM": {"x": [0.2], "mean": [80.0], "std": [2.0], "n": [2]}}
    idn = json.loads((tmp_path / "cifar100_idn_f1.json").read_text())
    assert idn["series"] == {"GMM": {"x": [0.3], "mean": [70.0], "std": [0.5], "n": [2]}}


def test_without_matplotlib_figures_say_how_to_install_and_tables_are_still_written(tmp_path, monkeypatch, capsys,
                                                                                  run_dir):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(plots.PlotsUnavailable, match="pip install matplotlib"):
        plots.plot_curves(str(run_dir))
    run = tmp_path / "output" / "baseline_ce" / "cifar100" / "sym0.2_seed0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"script": "baseline", "method": "CE", "dataset": "cifar100",
                                                  "best_test_acc": 70.0, "last_test_acc": 69.0}))
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "noise_mode": "sym", "noise_ratio": 0.2,
                                                     "backbone": "ViT-B/16"}))
    collect_main([str(tmp_path / "output"), "--out", str(tmp_path / "tables"), "--figures"])
    assert "| CE | 70.00 (n=1) |" in (tmp_path / "tables" / "results.md").read_text()
    assert (tmp_path / "tables" / "results_cells.csv").is_file()
    assert not (tmp_path / "tables" / "figures").exists()
    assert "figures not written: matplotlib is not installed; figures need it: pip install matplotlib" in \
        capsys.readouterr().err
