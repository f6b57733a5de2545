"""Why DeFT's phase 1 goes unstable on the shifted miniature: its selection per class, and three controls.

    make miniature-diagnosis     (= python tools/miniature_diagnosis.py; after make miniature-tables)

It runs after the grid and changes nothing in it: it reads the grid's DeFT phase-1 runs, and its controls
are diagnostics in their own folder (output/miniature_diagnosis/), never rows of a table.

1. Every DeFT phase-1 run of the grid: the positive-prompt test accuracy after the warm-up epoch, the
   final accuracy and mask F1, and per class the share of the samples given that label that the mask
   keeps; the classes kept at under half the overall rate are the ones the selection dropped.
2. The same per-class count for every detector's mask in the grid (label-match, small-loss, GMM, TURN,
   Robust Similarity, DeFT): whether dropping classes is DeFT's alone, and how far each detector goes.
3. Controls on the given cells (default sym 0.4 and sym 0.8, where DeFT lost) with the grid's seeds and
   settings, each removing one part of what happens after the warm-up epoch:
   - `no_switch`: warm-up in every epoch (L_sim on every given label, L_dp with the given labels; the
     selection is still made and scored);
   - `given_labels_in_dp`: L_sim on the selection after warm-up as in DeFT, but L_dp keeps the given
     labels instead of the pseudo-labels (the prediction for rejected samples);
   - `clean_labels`: DeFT unchanged on clean labels (noise none), where every sample should be kept.
   The controls use the grid's noisy labels: the tool checks the labels' hash against the grid run's mask.

Writes results/miniature/diagnosis.json and diagnosis.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import main_phase1  # noqa: E402
from datasets import build_datasets  # noqa: E402
from datasets.noise import labels_sha256  # noqa: E402
from lnl.selection import class_selection_rates, underselected_classes  # noqa: E402
from tools.miniature_regime import merge_opts  # noqa: E402
from tools.miniature_variants import DEFAULT_VARIANT, VARIANTS, get_variant  # noqa: E402
from utils.clean_mask import META_FILE, MASK_FILE, RARE_CLASS_RATE  # noqa: E402
from utils.config import Config, apply_overrides  # noqa: E402
from utils.io import atomic_write_json, atomic_write_text  # noqa: E402
from utils.run_dir import read_metrics  # noqa: E402

NUM_CLASSES = 10  # Fashion-MNIST
SCHEDULE = ("epochs=10", "warmup=1")  # the grid's phase-1 schedule (grids/miniature.yaml)
CONTROLS = {  # name -> (--opts beyond the grid's, for E epochs; noise of the cell (True) or none; what it removes)
    "no_switch": (lambda epochs: [f"warmup={epochs}"], True,
                  "warm-up in every epoch: L_sim on every given label, L_dp with the given labels"),
    "given_labels_in_dp": (lambda epochs: [f"noisy_prompt_labels_until={epochs}"], True,
                           "L_sim on the selection after warm-up, L_dp with the given labels (no pseudo-labels)"),
    "clean_labels": (lambda epochs: [], False, "DeFT unchanged on clean labels (noise none)"),
}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Read the grid's DeFT runs, run the controls, write the diagnosis JSON and Markdown; return the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=sorted(VARIANTS))
    parser.add_argument("--grid_output", default=str(ROOT / "output" / "miniature"),
                        help="the grid's output_dir (default output/miniature)")
    parser.add_argument("--cells", nargs="+", default=["sym0.4", "sym0.8"], help="noise cells of the controls")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--controls", nargs="*", default=list(CONTROLS), choices=list(CONTROLS))
    parser.add_argument("--output_dir", default=str(ROOT / "output" / "miniature_diagnosis"), help="the controls' runs")
    parser.add_argument("--out", default=None, help="the JSON (default <results>/diagnosis.json; .md beside it)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config keys for every control after the grid's, e.g. max_train_samples=64 (tests)")
    args = parser.parse_args(argv)
    variant = get_variant(args.variant)
    out = Path(args.out or ROOT / variant.results / "diagnosis.json")
    started = time.time()

    grid_root = Path(args.grid_output) / "phase1"
    grid_runs = sorted(p.parent for p in grid_root.glob("*/*/summary.json"))
    if not grid_runs:
        raise SystemExit(f"error: no DeFT phase-1 run under {grid_root}; run the grid first (make miniature-tables)")
    labels: dict[str, np.ndarray] = {}  # given labels by their hash: each labelling is rebuilt once
    grid = {run.name: run_record(run, labels) for run in grid_runs}
    print(f"== {len(grid)} DeFT phase-1 runs of the grid read from {grid_root}", flush=True)
    detectors = detector_summary(Path(args.grid_output), labels)

    base_opts = merge_opts(variant.grid_opts, ["num_workers=0", "progress=false", *SCHEDULE,
                                               f"output_dir={args.output_dir}"], args.opts)
    epochs = variant.config(opts=base_opts).epochs
    controls: dict[str, dict] = {}
    for name in args.controls:
        extra, noisy, _ = CONTROLS[name]
        for cell in (args.cells if noisy else ["none0.0"]):
            mode, ratio = split_cell(cell)
            for seed in args.seeds:
                opts = merge_opts(base_opts, extra(epochs), [f"seed={seed}", f"output_dir={args.output_dir}/{name}"])
                print(f"== control {name}: {cell}, seed {seed}", flush=True)
                main_phase1.main(["--cfg", str(variant.peft), "--noise_mode", mode, "--noise_ratio", ratio,
                                  "--overwrite", "--opts", *opts])
                run = Path(args.output_dir) / name / "phase1" / "fashion_mnist" / f"{cell}_seed{seed}"
                record = run_record(run, labels)
                if noisy:
                    same_labels(record, grid.get(run.name), run.name)
                controls.setdefault(name, {})[run.name] = record

    diagnosis = {
        "variant": variant.name,
        "what": "DeFT phase 1 on the grid's cells: per-class selection of the grid's runs, and controls that each "
                "remove one part of the post-warm-up objective (diagnostics run after the grid; no table uses them)",
        "rare_class_rule": f"kept at under {RARE_CLASS_RATE:g} x the mask's overall rate",
        "grid_output": os.path.relpath(args.grid_output, ROOT),
        "grid": grid,
        "detectors": detectors,
        "controls": {name: {"what": CONTROLS[name][2], "runs": runs} for name, runs in controls.items()},
        "seed_order_agreement": seed_order_agreement(grid),
        "command": " ".join(["python tools/miniature_diagnosis.py", *(argv if argv is not None else sys.argv[1:])]),
        "seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    atomic_write_json(str(out), diagnosis)
    atomic_write_text(str(out.with_suffix(".md")), markdown(diagnosis))
    print(f"-> {out} and {out.with_suffix('.md')}", flush=True)
    return diagnosis


def split_cell(cell: str) -> tuple[str, str]:
    """'sym0.4' -> ('sym', '0.4')."""
    mode = cell.rstrip("0123456789.")
    return mode, cell[len(mode):]


def run_labels(run: Path, labels: dict[str, np.ndarray]) -> np.ndarray:
    """The given labels a run's mask was made on: from `labels` (by hash), else rebuilt from its config.yaml and
    checked against the mask's hash (and kept in `labels`)."""
    meta = json.loads((run / META_FILE).read_text(encoding="utf-8"))
    if meta["given_labels_sha256"] in labels:
        return labels[meta["given_labels_sha256"]]
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    given = np.asarray(build_datasets(apply_overrides(Config(), config, str(run / "config.yaml"))).train.given_labels)
    if labels_sha256(given) != meta["given_labels_sha256"]:
        raise SystemExit(f"error: {run}: the labels rebuilt from its config.yaml are not the ones its mask was made on")
    labels[meta["given_labels_sha256"]] = given
    return given


def mask_by_class(mask: np.ndarray, given: np.ndarray, num_classes: int) -> dict:
    """The share kept overall and per class (%), and the classes kept at under half the overall share."""
    rates = class_selection_rates(mask, given, num_classes)
    overall = float(mask.mean())
    return {"kept": round(100 * overall, 2),
            "kept_per_class": [None if np.isnan(r) else round(100 * float(r), 1) for r in rates],
            "rare_classes": underselected_classes(rates, overall, RARE_CLASS_RATE)}


def run_record(run: Path, labels: dict[str, np.ndarray]) -> dict:
    """What one DeFT phase-1 run says about its selection, per class included."""
    records = read_metrics(str(run))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    meta = json.loads((run / META_FILE).read_text(encoding="utf-8"))
    warmup = int(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["warmup"])
    given = run_labels(run, labels)
    return {
        "test_acc_after_warmup": round(records[min(max(warmup, 1), len(records)) - 1]["test_acc"], 2),
        "last_test_acc": round(summary["last_test_acc"], 2),
        "mask_f1": None if summary.get("mask_f1") is None else round(100 * summary["mask_f1"], 2),
        **mask_by_class(np.load(run / MASK_FILE), given, NUM_CLASSES),
        "given_labels_sha256": meta["given_labels_sha256"],
        "run": os.path.relpath(run, ROOT),
    }


def detector_summary(grid_output: Path, labels: dict[str, np.ndarray]) -> dict:
    """Per detector (the `method` of each clean_mask.json under the grid): how many runs keep some class at under
    half the overall share, how many such classes in all and at most in one run, the lowest class share and the
    smallest mask (%)."""
    found: dict[str, list[dict]] = {}
    for meta_path in sorted(grid_output.glob(f"*/*/*/{META_FILE}")):
        run = meta_path.parent
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        record = mask_by_class(np.load(run / MASK_FILE), run_labels(run, labels), NUM_CLASSES)
        found.setdefault(meta.get("method") or run.parent.parent.name, []).append(record)
    return {method: {"runs": len(rs), "runs_with_dropped_classes": sum(1 for r in rs if r["rare_classes"]),
                     "dropped_classes": sum(len(r["rare_classes"]) for r in rs),
                     "most_dropped_in_a_run": max(len(r["rare_classes"]) for r in rs),
                     "lowest_class_share": min(min(v for v in r["kept_per_class"] if v is not None) for r in rs),
                     "smallest_mask": min(r["kept"] for r in rs)}
            for method, rs in sorted(found.items())}


def same_labels(control: dict, grid_run: Optional[dict], name: str) -> None:
    """A control must run on the grid's noisy labels, or it says nothing about the grid's run."""
    if grid_run is not None and control["given_labels_sha256"] != grid_run["given_labels_sha256"]:
        raise SystemExit(f"error: the control {name} drew other noisy labels than the grid's run of that cell")


def seed_order_agreement(grid: dict) -> dict:
    """Per noise cell with two or more seeds: does the seed with the higher after-warm-up accuracy end with the
    higher mask F1?"""
    by_cell: dict[str, list[dict]] = {}
    for name, record in grid.items():
        by_cell.setdefault(name.rsplit("_seed", 1)[0], []).append(record)
    agree = [cell for cell, rs in by_cell.items() if len(rs) > 1 and
             max(rs, key=lambda r: r["test_acc_after_warmup"]) is max(rs, key=lambda r: r["mask_f1"] or 0)]
    compared = [cell for cell, rs in by_cell.items() if len(rs) > 1]
    return {"agree": len(agree), "cells": len(compared), "disagree": sorted(set(compared) - set(agree))}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def markdown(diagnosis: dict) -> str:
    """The diagnosis as two Markdown tables and the seed-order count."""
    lines = [f"# DeFT phase 1 on the {diagnosis['variant']} miniature: selection per class, and controls", "",
             f"Command: `{diagnosis['command']}` ({diagnosis['seconds']:.0f} s). Diagnostics run after the grid "
             "(its runs in " f"`{diagnosis['grid_output']}`); no table uses them. A class is *dropped* when its mask "
             f"keeps it at under {RARE_CLASS_RATE:g} × the mask's overall rate (per class: the share of the samples "
             "given that label that the mask keeps).", "",
             "## The grid's DeFT phase-1 runs", "",
             "| run | test acc after warm-up | last test acc | mask F1 | kept % | dropped classes | kept % per class 0..9 |",
             "|---|---|---|---|---|---|---|"]
    for name, r in diagnosis["grid"].items():
        per_class = " ".join("-" if v is None else f"{v:.0f}" for v in r["kept_per_class"])
        dropped = f"{len(r['rare_classes'])}" + (f" ({', '.join(map(str, r['rare_classes']))})" if r["rare_classes"] else "")
        lines.append(f"| {name} | {r['test_acc_after_warmup']:.1f} | {r['last_test_acc']:.1f} | "
                     f"{r['mask_f1'] if r['mask_f1'] is not None else '-'} | {r['kept']:.1f} | {dropped} | {per_class} |")
    order = diagnosis["seed_order_agreement"]
    lines += ["", f"In {order['agree']} of {order['cells']} noise cells the seed with the higher test accuracy after "
              "the warm-up epoch ends with the higher mask F1" +
              (f" (not in {', '.join(order['disagree'])})." if order["disagree"] else "."), ""]
    lines += ["## Every detector's masks in the grid, per class", "",
              "| detector | runs | runs that drop a class | classes dropped in all | most in one run | "
              "lowest class share % | smallest mask % |", "|---|---|---|---|---|---|---|"]
    for method, d in diagnosis["detectors"].items():
        lines.append(f"| {method} | {d['runs']} | {d['runs_with_dropped_classes']} | {d['dropped_classes']} | "
                     f"{d['most_dropped_in_a_run']} | {d['lowest_class_share']:.0f} | {d['smallest_mask']:.0f} |")
    lines.append("")
    if diagnosis["controls"]:
        lines += ["## Controls (the grid's cells, seeds, labels and settings; one part of the objective removed)", "",
                  "| variant | what | cell | mask F1 (per seed) | last test acc (per seed) | dropped classes (per seed) |",
                  "|---|---|---|---|---|---|"]
        cells = sorted({name.rsplit("_seed", 1)[0] for c in diagnosis["controls"].values() for name in c["runs"]})
        rows = [("DeFT (the grid's runs)", "as in the tables", diagnosis["grid"])] + \
               [(name, c["what"], c["runs"]) for name, c in diagnosis["controls"].items()]
        for label, what, runs in rows:
            for cell in cells:
                chosen = [r for name, r in sorted(runs.items()) if name.rsplit("_seed", 1)[0] == cell]
                if not chosen:
                    continue
                f1s = [r["mask_f1"] or 0.0 for r in chosen]
                accs = [r["last_test_acc"] for r in chosen]
                dropped = ", ".join(str(len(r["rare_classes"])) for r in chosen)
                lines.append(f"| {label} | {what} | {cell} | {_mean_sd(f1s)} ({', '.join(f'{v:.1f}' for v in f1s)}) | "
                             f"{_mean_sd(accs)} ({', '.join(f'{v:.1f}' for v in accs)}) | {dropped} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
