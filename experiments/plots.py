"""Figures: per-run curves, the p_clean histogram of a detector, and noise-ratio sweeps across runs.

    python -m experiments.plots run output/phase1/cifar100/sym0.2_seed0 [more run dirs] [--out DIR]
    python -m experiments.collect_results output/ --figures      # the sweep figures, from the tables' cells

- `curves.png`: selection precision / recall / F1 (left, where the run selects samples) and test
  accuracy (right) per epoch, from metrics.jsonl.
- `p_clean_hist.png`: histograms of the detector's clean score (clean_scores.npy; DeFT: p_clean) for
  truly clean and truly noisy samples (truly_clean.npy), AUROC (summary.json mask_auroc) in the title.
- `figures/<dataset>_<mode>_<metric>.png`: x = noise ratio, one line per method, mean over seeds with
  the sample standard deviation as error bars; detection F1 and best test accuracy.
Every figure is written with the data it draws as JSON beside it (same stem, `.json`).
matplotlib is optional: only this module needs it, and it is imported when a figure is drawn.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from utils.errors import UserError
from utils.io import atomic_write_text
from utils.run_dir import METRICS, SUMMARY

SELECTION_KEYS = ("precision", "recall", "f1")
SWEEP_METRICS = {"f1": "detection F1 (%)", "best_acc": "best test accuracy (%)"}
HIST_BINS = 20


class PlotsUnavailable(UserError, ImportError):
    """matplotlib is not installed."""


def pyplot():
    """matplotlib.pyplot with a file-only backend, or PlotsUnavailable saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable("matplotlib is not installed; figures need it: pip install matplotlib "
                               "(tables and everything else work without it)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str, data: dict) -> str:
    """Write the figure as PNG and its data as JSON beside it (same stem)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    pyplot().close(figure)  # free it: a sweep draws many
    atomic_write_text(os.path.splitext(path)[0] + ".json", json.dumps(data, indent=1) + "\n")
    return path


# ---------------------------------------------------------------- one run
def curves_data(run_dir: str) -> dict:
    """The per-epoch series of a run (metrics.jsonl): epochs, and each of precision/recall/f1/test_acc present."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.isfile(path):
        raise UserError(f"{run_dir} has no {METRICS}; pass a run directory (output/<script>/<dataset>/<noise>_seed<k>)")
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    if not records:
        raise UserError(f"{path} holds no epoch yet")
    series = {}
    for key in (*SELECTION_KEYS, "test_acc"):
        if any(key in r for r in records):
            series[key] = [r.get(key) for r in records]
    return {"run_dir": run_dir, "source": METRICS, "epochs": [r.get("epoch", i + 1) for i, r in enumerate(records)],
            "series": series}


def plot_curves(run_dir: str, out_dir: Optional[str] = None) -> str:
    """curves.png (+ .json): selection P/R/F1 and test accuracy per epoch; returns the PNG path."""
    data = curves_data(run_dir)
    plt = pyplot()
    selection = [k for k in SELECTION_KEYS if k in data["series"]]
    panels = (["selection"] if selection else []) + (["test_acc"] if "test_acc" in data["series"] else [])
    if not panels:
        raise UserError(f"{run_dir}: metrics.jsonl has none of precision, recall, f1, test_acc to draw")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for key in (selection if panel == "selection" else ["test_acc"]):
            points = [(e, v) for e, v in zip(data["epochs"], data["series"][key]) if v is not None]
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_ylabel("selection (fraction)" if panel == "selection" else "test accuracy (%)")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(_run_title(run_dir))
    return _save(figure, os.path.join(out_dir or run_dir, "curves.png"), data)


def p_clean_data(run_dir: str, bins: int = HIST_BINS) -> dict:
    """Histogram counts of the clean score for truly clean and truly noisy samples, and the run's AUROC."""
    scores_path, clean_path = os.path.join(run_dir, "clean_scores.npy"), os.path.join(run_dir, "truly_clean.npy")
    for path in (scores_path, clean_path):
        if not os.path.isfile(path):
            raise UserError(f"{path} not found: the histogram needs a detector run's clean_scores.npy and "
                            "truly_clean.npy (true labels must be known)")
    scores = np.load(scores_path, allow_pickle=False).astype(np.float64)
    truly_clean = np.load(clean_path, allow_pickle=False).astype(bool)
    if scores.shape != truly_clean.shape:
        raise UserError(f"{run_dir}: clean_scores.npy has shape {scores.shape}, truly_clean.npy {truly_clean.shape}")
    low, high = (0.0, 1.0) if scores.min() >= 0 and scores.max() <= 1 else (float(scores.min()), float(scores.max()))
    edges = np.linspace(low, high, bins + 1)
    auroc = None
    summary_path = os.path.join(run_dir, SUMMARY)
    if os.path.isfile(summary_path):
        with open(summary_path, encoding="utf-8") as handle:
            auroc = json.load(handle).get("mask_auroc")
    return {"run_dir": run_dir, "edges": edges.tolist(),
            "clean_counts": np.histogram(scores[truly_clean], edges)[0].tolist(),
            "noisy_counts": np.histogram(scores[~truly_clean], edges)[0].tolist(),
            "num_clean": int(truly_clean.sum()), "num_noisy": int((~truly_clean).sum()), "auroc": auroc}


def plot_p_clean_hist(run_dir: str, out_dir: Optional[str] = None) -> str:
    """p_clean_hist.png (+ .json): the score of truly clean vs truly noisy samples; returns the PNG path."""
    data = p_clean_data(run_dir)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    edges = np.asarray(data["edges"])
    for counts, label, colour in ((data["clean_counts"], f"truly clean ({data['num_clean']})", "tab:green"),
                                  (data["noisy_counts"], f"truly noisy ({data['num_noisy']})", "tab:red")):
        axis.stairs(counts, edges, label=label, color=colour, fill=True, alpha=0.45)
    axis.set_xlabel("clean score (p_clean for DeFT)")
    axis.set_ylabel("samples")
    axis.legend()
    auroc = "n/a" if data["auroc"] is None else f"{data['auroc']:.3f}"
    axis.set_title(f"{_run_title(run_dir)}\nAUROC {auroc}")
    return _save(figure, os.path.join(out_dir or run_dir, "p_clean_hist.png"), data)


def _run_title(run_dir: str) -> str:
    parts = os.path.normpath(run_dir).split(os.sep)
    return "/".join(parts[-3:])


def run_figures(run_dir: str, out_dir: Optional[str] = None) -> list[str]:
    """Every figure a run supports: curves, and the histogram for a detector with true labels."""
    written = [plot_curves(run_dir, out_dir)]
    if all(os.path.isfile(os.path.join(run_dir, f)) for f in ("clean_scores.npy", "truly_clean.npy")):
        written.append(plot_p_clean_hist(run_dir, out_dir))
    return written


# ---------------------------------------------------------------- across runs
_NOISE = re.compile(r"(.+?)(0|1|0\.\d+|1\.0+)")


def sweep_data(cells: list[dict], metric: str, exclude: Sequence[str] = ()) -> dict[tuple[str, str], dict]:
    """{(dataset, noise mode): figure data} from the collector's cells: per method, ratio -> mean, std, n.

    Only synthetic noise (a mode and a ratio); methods in `exclude` are left out. A method run on
    several backbones gets one line per backbone, named 'method (backbone)'.
    """
    figures: dict = defaultdict(lambda: defaultdict(dict))
    for cell in cells:
        match = _NOISE.fullmatch(str(cell.get("noise") or ""))
        if cell["metric"] != metric or cell.get("mean") is None or not match or cell["method"] in exclude:
            continue
        figures[(cell["dataset"], match.group(1))][(cell["method"], cell["backbone"])][float(match.group(2))] = cell
    result = {}
    for (dataset, mode), lines in sorted(figures.items()):
        several = len({backbone for _, backbone in lines}) > 1
        series = {}
        for (method, backbone), points in sorted(lines.items()):
            ratios = sorted(points)
            series[f"{method} ({backbone})" if several else method] = {
                "x": ratios, "mean": [points[r]["mean"] for r in ratios],
                "std": [points[r]["std"] for r in ratios],  # None for a single run
                "n": [points[r]["n"] for r in ratios]}
        result[(dataset, mode)] = {"dataset": dataset, "noise_mode": mode, "metric": metric,
                                   "x_label": "noise ratio", "y_label": SWEEP_METRICS.get(metric, metric),
                                   "series": series}
    return result


def plot_sweep(data: dict, path: str) -> str:
    """One noise-ratio sweep figure (+ .json): a line per method, error bars = std over seeds."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    ratios = sorted({x for line in data["series"].values() for x in line["x"]})
    for name, line in data["series"].items():
        axis.errorbar(line["x"], line["mean"], yerr=[s or 0.0 for s in line["std"]], marker="o", capsize=3,
                      label=name)
    axis.set_xticks(ratios)
    axis.set_xlabel(f"noise ratio ({data['noise_mode']})")
    axis.set_ylabel(data["y_label"])
    axis.set_title(f"{data['dataset']}, {data['noise_mode']} noise")
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path, data)


def sweep_figures(cells: list[dict], out_dir: str, exclude: Sequence[str] = ()) -> list[str]:
    """Write <dataset>_<mode>_f1.png and <dataset>_<mode>_best_acc.png (+ .json) for every dataset and mode."""
    pyplot()  # fail before anything is written when matplotlib is missing
    written = []
    for metric in SWEEP_METRICS:
        for (dataset, mode), data in sweep_data(cells, metric, exclude).items():
            written.append(plot_sweep(data, os.path.join(out_dir, f"{dataset}_{mode}_{metric}.png")))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="curves (and the p_clean histogram) of run directories")
    run.add_argument("run_dirs", nargs="+", help="run directories (holding metrics.jsonl)")
    run.add_argument("--out", default=None, help="write the figures here instead of into each run directory")
    args = parser.parse_args(argv)
    try:
        for run_dir in args.run_dirs:
            out = os.path.join(args.out, *os.path.normpath(run_dir).split(os.sep)[-3:]) if args.out else None
            for path in run_figures(run_dir, out):
                print(path)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
