"""Collect the summary.json files of many runs into the paper's table layouts (Markdown and CSV).

    python -m utils.collect_results output/                 # prints Markdown, writes output/results.{md,csv}
    python -m utils.collect_results output/ --out tables/

Tables (one per dataset; several seeds of one cell are averaged, "n=k" says how many):
- Detection (paper Table 1 / 8): methods x noise settings, "precision / recall" (%), then F1 (%).
  Rows: DeFT (phase 1), SmallLoss, GMM, TURN, LabelMatch: every run that saved a clean mask.
- Accuracy (paper Tables 2 / 3): methods x noise settings, "best / last" test accuracy (%), one
  table per backbone. Rows: the trained baselines (CE, GCE, ELR, SCE, GMM, TURN) and phase 2
  (DeFT; "<method>+FFT" for phase 2 on another method's mask).
- Backbones (paper Table 4): backbones x methods, "best / last", for each noise setting that has
  runs on more than one backbone.
`results.csv` holds one row per run with every figure, for other layouts.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
from collections import defaultdict
from typing import Iterable, Optional

import yaml

from utils.io import atomic_write_text
from utils.run_dir import CONFIG, SUMMARY

CSV_FIELDS = ("dataset", "noise", "noise_mode", "noise_ratio", "actual_noise_rate", "seed", "backbone", "method",
              "role", "script", "precision", "recall", "f1", "num_selected", "best_acc", "last_acc", "run_dir")
DETECTION_ORDER = ("LabelMatch", "SmallLoss", "GMM", "TURN", "DeFT")
ACCURACY_ORDER = ("CE", "GCE", "ELR", "SCE", "GMM", "TURN", "DeFT")


def find_summaries(root: str) -> list[str]:
    """Every summary.json under `root` (sorted, so the output does not depend on the file system)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # staging folders of --overwrite
        if SUMMARY in files:
            found.append(os.path.join(folder, SUMMARY))
    return sorted(found)


def run_row(summary_path: str, root: str) -> Optional[dict]:
    """One CSV row for a run: where it is, what it ran, and its figures (percentages); None if unknown."""
    with open(summary_path, encoding="utf-8") as handle:
        summary = json.load(handle)
    run_dir = os.path.dirname(summary_path)
    config = _read_config(os.path.join(run_dir, CONFIG))
    script = str(summary.get("script", ""))
    method, role = _method_and_role(script, summary)
    if method is None:
        return None
    noise = summary.get("noise") or {}
    mode = config.get("noise_mode", noise.get("mode", ""))
    ratio = config.get("noise_ratio", noise.get("ratio"))
    precision, recall, f1 = (summary.get(f"mask_{k}") for k in ("precision", "recall", "f1"))
    return {
        "dataset": summary.get("dataset", config.get("dataset", "")),
        "noise": noise_label(mode, ratio),
        "noise_mode": mode, "noise_ratio": ratio, "actual_noise_rate": noise.get("actual_rate"),
        "seed": config.get("seed"),
        "backbone": summary.get("backbone", config.get("backbone", "")),
        "method": method, "role": role, "script": script,
        "precision": _percent(precision), "recall": _percent(recall), "f1": _percent(f1),
        "num_selected": summary.get("num_selected"),
        "best_acc": summary.get("best_test_acc"), "last_acc": summary.get("last_test_acc"),
        "run_dir": os.path.relpath(run_dir, root),
    }


def _method_and_role(script: str, summary: dict) -> tuple[Optional[str], str]:
    """(method name, 'detection' | 'accuracy' | 'both'), from the script and what the summary holds."""
    base = script[len("real_"):] if script.startswith("real_") else script
    if base == "phase1":
        return "DeFT", "detection"
    if base == "phase2":
        mask_method = summary.get("mask_method", "DeFT")
        return ("DeFT" if mask_method == "DeFT" else f"{mask_method}+FFT"), "accuracy"
    if base == "small_loss":
        return "SmallLoss", "detection"
    if base == "baseline":
        method = summary.get("method")
        has_mask = "clean_mask" in summary
        has_acc = "best_test_acc" in summary
        return method, ("both" if has_mask and has_acc else "detection" if has_mask else "accuracy")
    return None, ""


def noise_label(mode: Optional[str], ratio) -> str:
    """'sym0.2', 'idn0.4'; 'real' for real-world noise; 'none' without noise."""
    if mode == "real":
        return "real"
    if not mode or mode == "none":
        return "none"
    return f"{mode}{float(ratio):g}" if ratio is not None else mode


def _read_config(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _percent(value) -> Optional[float]:
    return None if value is None else 100.0 * float(value)


# ---------------------------------------------------------------- tables
def _mean(values: Iterable) -> Optional[float]:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _cell(rows: list[dict], keys: tuple[str, ...]) -> str:
    """'a / b' of the seed means of `keys` (two decimals); '-' where missing; 'n=k' for several runs."""
    parts = [_mean(r[k] for r in rows) for k in keys]
    text = " / ".join("-" if p is None else f"{p:.2f}" for p in parts)
    return text + (f" (n={len(rows)})" if len(rows) > 1 else "")


def _ordered(names: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    names = set(names)
    first = [n for n in preferred if n in names]
    return first + sorted(names - set(first), key=lambda n: (n.endswith("+FFT"), n))


def _noise_order(rows: list[dict]) -> dict:
    """Sort key of each noise label: (mode, ratio)."""
    return {r["noise"]: (str(r["noise_mode"] or ""), float(r["noise_ratio"] or 0.0)) for r in rows}


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _grid(rows: list[dict], row_key: str, col_key: str, keys: tuple[str, ...], row_order: tuple[str, ...],
          first_header: str) -> str:
    groups: dict = defaultdict(list)
    for r in rows:
        groups[(r[row_key], r[col_key])].append(r)
    row_names = _ordered({r[row_key] for r in rows}, row_order)
    if col_key == "noise":
        col_names = sorted({r["noise"] for r in rows}, key=_noise_order(rows).get)
    else:  # methods as columns (the backbone table)
        col_names = _ordered({r[col_key] for r in rows}, ACCURACY_ORDER)
    body = [[name] + [_cell(groups[(name, col)], keys) if groups.get((name, col)) else "-" for col in col_names]
            for name in row_names]
    return markdown_table([first_header] + col_names, body)


def results_markdown(rows: list[dict]) -> str:
    """The detection, accuracy and backbone tables of `rows`, per dataset."""
    sections = []
    for dataset in sorted({r["dataset"] for r in rows}):
        data_rows = [r for r in rows if r["dataset"] == dataset]
        detection = [r for r in data_rows if r["role"] in ("detection", "both") and r["precision"] is not None]
        if detection:
            sections.append(f"## {dataset}: detection, precision / recall (%)\n\n"
                            + _grid(detection, "method", "noise", ("precision", "recall"), DETECTION_ORDER, "method"))
            sections.append(f"## {dataset}: detection, F1 (%)\n\n"
                            + _grid(detection, "method", "noise", ("f1",), DETECTION_ORDER, "method"))
        trained = [r for r in data_rows if r["role"] in ("accuracy", "both") and r["best_acc"] is not None]
        for backbone in sorted({r["backbone"] for r in trained}):
            subset = [r for r in trained if r["backbone"] == backbone]
            sections.append(f"## {dataset}: test accuracy, best / last (%), backbone {backbone}\n\n"
                            + _grid(subset, "method", "noise", ("best_acc", "last_acc"), ACCURACY_ORDER, "method"))
        order = _noise_order(trained)
        for noise in sorted({r["noise"] for r in trained}, key=order.get):
            subset = [r for r in trained if r["noise"] == noise]
            if len({r["backbone"] for r in subset}) > 1:
                sections.append(f"## {dataset}, {noise}: test accuracy by backbone, best / last (%)\n\n"
                                + _grid(subset, "backbone", "method", ("best_acc", "last_acc"), (), "backbone"))
    return "\n\n".join(sections) + "\n" if sections else "No finished runs found.\n"


def results_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def collect(root: str) -> list[dict]:
    """One row per finished run under `root` (runs of unknown scripts are skipped)."""
    rows = [run_row(path, root) for path in find_summaries(root)]
    return [r for r in rows if r is not None]


def main(argv: Optional[list[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder holding run directories (e.g. output/)")
    parser.add_argument("--out", default=None, help="where to write results.md and results.csv (default: root)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        raise SystemExit(f"error: {args.root} is not a folder; pass the output directory of the runs")
    rows = collect(args.root)
    markdown = results_markdown(rows)
    out = args.out or args.root
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "results.md"), markdown)
    atomic_write_text(os.path.join(out, "results.csv"), results_csv(rows))
    print(markdown)
    print(f"{len(rows)} runs -> {os.path.join(out, 'results.md')}, {os.path.join(out, 'results.csv')}")
    return markdown


if __name__ == "__main__":
    main()
