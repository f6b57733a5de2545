"""Collect the summary.json files of many runs into the paper's table layouts, with the spread over
seeds and the paper's numbers beside ours (Markdown and CSV; figures with --figures).

    python -m experiments.collect_results output/                 # prints Markdown, writes output/results.{md,csv}
    python -m experiments.collect_results output/ --out tables/ --figures
    python -m experiments.collect_results output/ --paper my_numbers.yaml   # or --paper none

Every cell is `mean ± std (n=k)` over the seeds of that cell (sample standard deviation, ddof=1;
a single run shows no ± part). Where results/paper_numbers.yaml holds the paper's number for a
cell, the row "<name>, paper" gives it and "<name>, Δ" ours minus the paper's; methods the paper
reports but we do not run (UNICON, ...) appear as rows with our cells empty ("-").
Tables (synthetic noise: one set per dataset, columns = noise settings; real noise: one set across
datasets, columns = datasets, as the paper's Tables 3 and 8):
- Detection (Tables 1 / 8): precision, recall, F1 and AUROC (%), one table each, methods as rows:
  DeFT (phase 1), SmallLoss, GMM, TURN, LabelMatch, RobustSimilarity: every run that saved a clean mask.
- Accuracy (Tables 2 / 3): best and last test accuracy (%), one table per backbone. Rows: the trained
  baselines (CE, GCE, ELR, SCE, GMM, TURN), the sister methods (RobustSimilarity: its prompt
  matrix, one row per block count, "RobustSimilarity (m=6)", so the seed's m ablation reads off
  the DTD table; CoReg: its two networks' ensemble, in the column of its annotation, `clip_annotation`),
  DeFT (phase 2), DeFT-PEFT (phase 2 with the PEFT YAML), "<method>+FFT" (phase 2 on another
  method's mask).
- Backbones (Table 4): backbones x methods, for each dataset and noise setting with runs on more than one.
- Adaptation ablation (Figure 3): noise settings x {no adaptation (phase 1's own test accuracy), PEFT, FFT}.
Outputs: results.md; results.csv (one row per run); results_cells.csv (one row per table cell:
mean, std, n, seeds, the paper's value and source, the difference). Folders without summary.json
(unfinished or failed runs) are not runs: they are counted and named, never averaged.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Optional

import yaml

from utils.config import REAL_NOISE_DATASETS
from utils.errors import UserError
from utils.io import atomic_write_text
from experiments.paper_numbers import DEFAULT_PATH as PAPER_PATH, PaperNumber, PaperNumbers, empty, load_paper_numbers
from utils.methods import method_of
from utils.run_dir import CHECKPOINT, CONFIG, LOG, SUMMARY

CSV_FIELDS = ("dataset", "noise", "noise_mode", "noise_ratio", "actual_noise_rate", "seed", "backbone", "method",
              "role", "adaptation", "script", "precision", "recall", "f1", "auroc", "num_selected", "best_acc",
              "last_acc", "run_dir")
CELL_FIELDS = ("dataset", "noise", "backbone", "method", "metric", "mean", "std", "n", "seeds", "paper",
               "paper_table", "paper_source", "paper_note", "delta")
DETECTION_ORDER = ("LabelMatch", "SmallLoss", "GMM", "TURN", "RobustSimilarity", "RoLT", "UNICON", "LongReMix",
                   "ProMix", "DeFT")
ACCURACY_ORDER = ("CE", "GCE", "ELR", "SCE", "GMM", "TURN", "RobustSimilarity", "CoReg", "RoLT", "UNICON",
                  "LongReMix", "ProMix", "DeFT", "DeFT-PEFT")
BACKBONE_ORDER = ("resnet", "mae", "vit", "ViT-B/16", "convnext")  # the paper's Table 4 rows
DETECTION_METRICS = ("precision", "recall", "f1", "auroc")
ACCURACY_METRICS = ("best_acc", "last_acc")
METRIC_NAMES = {"precision": "precision", "recall": "recall", "f1": "F1", "auroc": "AUROC", "best_acc": "best",
                "last_acc": "last"}
NOISE_ORDER = ("sym", "asym", "asym_cifar10", "asym_cifar100", "str", "idn")  # the paper: sym, then inst (idn)
NO_ADAPTATION = "DeFT (no adaptation)"  # phase 1's own test accuracy: Figure 3's "w/o adap." bar
ABLATION_COLUMNS = {NO_ADAPTATION: "no adaptation", "DeFT-PEFT": "PEFT", "DeFT": "FFT"}
CIFAR_N_DEFAULT_KEYS = {"cifar100": "noisy_label", "cifar10": "worse_label"}
RUN_FOLDER = re.compile(r"(^|_)seed\d+$")
VARIANT = re.compile(r"(.+) \(m=(\d+)\)")  # Robust Similarity with m prompt blocks
# the tables' word for a method's role in utils/methods.py
TABLE_OF_ROLE = {"detector": "detection", "trainer": "accuracy", "both": "both"}
ANNOTATION = "clip_annotation"  # Co-Reg's noise: candidate labels annotated by CLIP, no dataset label used


# ---------------------------------------------------------------- runs
def find_summaries(root: str) -> list[str]:
    """Every summary.json under `root` (sorted, so the output does not depend on the file system)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # staging folders of --overwrite
        if SUMMARY in files:
            found.append(os.path.join(folder, SUMMARY))
    return sorted(found)


def find_unfinished(root: str) -> list[str]:
    """Run folders without summary.json (unfinished or failed runs), relative to `root`; hidden folders skipped."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        looks_like_run = RUN_FOLDER.search(os.path.basename(folder)) or {CONFIG, LOG, CHECKPOINT} & set(files)
        if folder != root and looks_like_run and SUMMARY not in files:
            found.append(os.path.relpath(folder, root))
    return sorted(found)


def run_row(summary_path: str, root: str) -> Optional[dict]:
    """One CSV row for a run: where it is, what it ran, and its figures (percentages); None if unknown."""
    with open(summary_path, encoding="utf-8") as handle:
        summary = json.load(handle)
    run_dir = os.path.dirname(summary_path)
    config = _read_config(os.path.join(run_dir, CONFIG))
    script = str(summary.get("script", ""))
    method, role = method_of(script, summary, config)
    role = TABLE_OF_ROLE.get(role, role)
    if method is None:
        return None
    noise = summary.get("noise") or {}
    dataset = summary.get("dataset", config.get("dataset", ""))
    mode = config.get("noise_mode", noise.get("mode", ""))
    if dataset in REAL_NOISE_DATASETS:
        mode = "real"
    if noise.get("mode") == ANNOTATION:  # Co-Reg: labels from CLIP, not the dataset's (noisy) ones
        mode = ANNOTATION
    ratio = config.get("noise_ratio", noise.get("ratio"))
    scores = {k: _percent(summary.get(f"mask_{k}")) for k in DETECTION_METRICS}
    return {
        "dataset": dataset_label(dataset, mode, config.get("cifar_n_label_key")),
        "noise": noise_label(mode, ratio),
        "noise_mode": mode, "noise_ratio": ratio, "actual_noise_rate": noise.get("actual_rate"),
        "seed": config.get("seed"),
        "backbone": summary.get("backbone", config.get("backbone", "")),
        "method": method, "role": role, "adaptation": summary.get("adaptation", ""), "script": script,
        **scores,
        "num_selected": summary.get("num_selected"),
        "best_acc": summary.get("best_test_acc"), "last_acc": summary.get("last_test_acc"),
        "run_dir": os.path.relpath(run_dir, root),
    }


def noise_label(mode: Optional[str], ratio) -> str:
    """'sym0.2', 'idn0.4'; 'real' for real-world noise; 'clip_annotation' for Co-Reg's CLIP labels;
    'none' without noise."""
    if mode in ("real", ANNOTATION):
        return mode
    if not mode or mode == "none":
        return "none"
    return f"{mode}{float(ratio):g}" if ratio is not None else mode


def dataset_label(dataset: str, mode: Optional[str], label_key: Optional[str] = None) -> str:
    """The dataset as the paper names it: CIFAR with human labels is cifar100N / cifar10N (-<label set>)."""
    if mode != "real" or dataset not in CIFAR_N_DEFAULT_KEYS:
        return dataset
    official = not label_key or label_key == CIFAR_N_DEFAULT_KEYS[dataset]
    return f"{dataset}N" + ("" if official else f"-{label_key}")


def _read_config(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _percent(value) -> Optional[float]:
    return None if value is None else 100.0 * float(value)


def collect(root: str) -> list[dict]:
    """One row per finished run under `root` (runs of unknown scripts are skipped)."""
    rows = [run_row(path, root) for path in find_summaries(root)]
    return [r for r in rows if r is not None]


# ---------------------------------------------------------------- cells: mean, std, n
@dataclass(frozen=True)
class Stats:
    """The seeds of one cell: mean, sample standard deviation (None for one run), count, seeds."""

    mean: float
    std: Optional[float]
    n: int
    seeds: tuple


def seed_stats(values: Iterable[float], seeds: Iterable = ()) -> Optional[Stats]:
    """Mean and sample standard deviation (ddof=1) of `values`; None without values."""
    values = [float(v) for v in values]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stats(statistics.fmean(values), std, len(values), tuple(seeds))


def format_stats(stats: Optional[Stats]) -> str:
    """'95.00 ± 1.41 (n=2)', '95.00 (n=1)', '-' for no runs."""
    if stats is None:
        return "-"
    spread = f" ± {stats.std:.2f}" if stats.std is not None else ""
    return f"{stats.mean:.2f}{spread} (n={stats.n})"


def _stats_of(rows: list[dict], metric: str) -> Optional[Stats]:
    rows = [r for r in rows if r.get(metric) is not None]
    return seed_stats((r[metric] for r in rows), sorted((r["seed"] for r in rows), key=str))


# ---------------------------------------------------------------- tables
@dataclass(frozen=True)
class TableSpec:
    """A table: its title, the fields all its cells share, and which fields run down and across."""

    title: str
    fixed: dict  # dataset / noise / backbone / metric values every cell has
    row_field: str  # method | backbone | noise
    col_field: str  # noise | method | dataset
    row_order: tuple = ()
    col_order: tuple = ()
    col_names: Optional[dict] = None  # header text of some columns


def _ordered(names: Iterable[str], preferred: tuple) -> list[str]:
    """`preferred` first (a variant, "RobustSimilarity (m=4)", in its method's place, by m), the rest sorted."""
    names = set(names)
    first = sorted((n for n in names if _variant(n)[0] in preferred),
                   key=lambda n: (preferred.index(_variant(n)[0]), _variant(n)[1]))
    return first + sorted(names - set(first), key=lambda n: (n.endswith("+FFT") or n.endswith("+PEFT"), n))


def _variant(name: str) -> tuple[str, int]:
    """("RobustSimilarity", 4) for "RobustSimilarity (m=4)"; (name, -1) for a name without a variant."""
    match = VARIANT.fullmatch(name)
    return (match.group(1), int(match.group(2))) if match else (name, -1)


def _noise_key(label: str) -> tuple:
    """Sort key of a noise label: the paper's mode order (sym before inst), then the ratio; 'real' last."""
    match = re.fullmatch(r"(.+?)(0|1|0\.\d+|1\.0+)", label)
    if not match:
        return (1, 0, label, 0.0)
    mode = match.group(1)
    rank = NOISE_ORDER.index(mode) if mode in NOISE_ORDER else len(NOISE_ORDER)
    return (0, rank, mode, float(match.group(2)))


def _column_order(values: Iterable[str], spec: TableSpec) -> list[str]:
    if spec.col_field == "noise":
        return sorted(set(values), key=_noise_key)
    if spec.col_order:
        return [c for c in spec.col_order if c in set(values)]
    order = {"method": ACCURACY_ORDER, "backbone": BACKBONE_ORDER}.get(spec.col_field, ())
    return _ordered(values, order)


def _row_order(values: Iterable[str], spec: TableSpec) -> list[str]:
    if spec.row_field == "noise":
        return sorted(set(values), key=_noise_key)
    return _ordered(values, spec.row_order)


def _matches(number: PaperNumber, fixed: dict) -> bool:
    for key, value in fixed.items():
        own = getattr(number, key)
        if key == "backbone" and own is None:
            continue
        if own != value:
            return False
    return True


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def build_table(spec: TableSpec, rows: list[dict], paper: PaperNumbers) -> tuple[str, list[dict]]:
    """The Markdown of one table (with paper and Δ rows where the paper has numbers) and its cells."""
    metric = spec.fixed["metric"]
    scope = [r for r in rows if all(r[k] == v for k, v in spec.fixed.items() if k != "metric")]
    mine = [r for r in scope if r.get(metric) is not None]
    groups: dict = defaultdict(list)
    for r in mine:
        groups[(r[spec.row_field], r[spec.col_field])].append(r)
    columns = _column_order({r[spec.col_field] for r in scope}, spec)  # the same columns for every metric
    reported: dict[tuple, PaperNumber] = {}
    for number in paper.numbers:
        place = (getattr(number, spec.row_field), getattr(number, spec.col_field))
        if place[1] in columns and _matches(number, spec.fixed):
            reported.setdefault(place, number)
    row_names = _row_order({r[spec.row_field] for r in mine} | {p[0] for p in reported}, spec)
    body, cells = [], []
    for name in row_names:
        ours = {col: _stats_of(groups.get((name, col), []), metric) for col in columns}
        body.append([name] + [format_stats(ours[col]) for col in columns])
        papers = {col: reported.get((name, col)) for col in columns}
        deltas = {col: ours[col].mean - papers[col].value for col in columns if ours[col] and papers[col]}
        if any(papers.values()):
            body.append([f"{name}, paper"] + [f"{papers[c].value:.2f}" if papers[c] else "-" for c in columns])
        if deltas:
            body.append([f"{name}, Δ"] + [f"{deltas[c]:+.2f}" if c in deltas else "-" for c in columns])
        for col in columns:
            if ours[col] is None and papers[col] is None:
                continue
            key = {**spec.fixed, spec.row_field: name, spec.col_field: col}
            cells.append(_cell_record(key, ours[col], papers[col]))
    header = [spec.row_field] + [(spec.col_names or {}).get(c, c) for c in columns]
    return f"## {spec.title}\n\n" + markdown_table(header, body), cells


def _cell_record(key: dict, stats: Optional[Stats], number: Optional[PaperNumber]) -> dict:
    return {"dataset": key.get("dataset"), "noise": key.get("noise"), "backbone": key.get("backbone"),
            "method": key.get("method"), "metric": key["metric"],
            "mean": stats.mean if stats else None, "std": stats.std if stats else None,
            "n": stats.n if stats else 0, "seeds": " ".join(str(s) for s in stats.seeds) if stats else "",
            "paper": number.value if number else None, "paper_table": number.table if number else None,
            "paper_source": number.source if number else None, "paper_note": number.note if number else None,
            "delta": stats.mean - number.value if stats and number else None}


def table_specs(rows: list[dict]) -> list[tuple[TableSpec, list[dict]]]:
    """Every table the runs fill, each with the rows it draws from, in reading order."""
    detection = [r for r in rows if r["role"] in ("detection", "both")]
    trained = [r for r in rows if r["role"] in ("accuracy", "both")]
    specs: list[tuple[TableSpec, list[dict]]] = []

    def present(subset, metric):
        return any(r.get(metric) is not None for r in subset)

    synthetic = sorted({r["dataset"] for r in rows if r["noise"] != "real"})
    for dataset in synthetic:
        det = [r for r in detection if r["dataset"] == dataset and r["noise"] != "real"]
        for backbone in sorted({r["backbone"] for r in det}):
            subset = [r for r in det if r["backbone"] == backbone]
            for metric in DETECTION_METRICS:
                if present(subset, metric):
                    specs.append((TableSpec(f"{dataset}: detection {METRIC_NAMES[metric]} (%), backbone {backbone}",
                                            {"dataset": dataset, "backbone": backbone, "metric": metric},
                                            "method", "noise", DETECTION_ORDER), subset))
        acc = [r for r in trained if r["dataset"] == dataset and r["noise"] != "real"]
        for backbone in sorted({r["backbone"] for r in acc}):
            subset = [r for r in acc if r["backbone"] == backbone]
            for metric in ACCURACY_METRICS:
                if present(subset, metric):
                    title = f"{dataset}: test accuracy, {METRIC_NAMES[metric]} (%), backbone {backbone}"
                    specs.append((TableSpec(title, {"dataset": dataset, "backbone": backbone, "metric": metric},
                                            "method", "noise", ACCURACY_ORDER), subset))
    for kind_rows, what, metrics, order in ((detection, "detection", DETECTION_METRICS, DETECTION_ORDER),
                                            (trained, "test accuracy,", ACCURACY_METRICS, ACCURACY_ORDER)):
        real = [r for r in kind_rows if r["noise"] == "real"]
        for backbone in sorted({r["backbone"] for r in real}):
            subset = [r for r in real if r["backbone"] == backbone]
            for metric in metrics:
                if present(subset, metric):
                    title = f"real-world noise: {what} {METRIC_NAMES[metric]} (%), backbone {backbone}"
                    specs.append((TableSpec(title, {"noise": "real", "backbone": backbone, "metric": metric},
                                            "method", "dataset", order), subset))
    for dataset in sorted({r["dataset"] for r in trained}):
        acc = [r for r in trained if r["dataset"] == dataset]
        for noise in sorted({r["noise"] for r in acc}, key=_noise_key):
            subset = [r for r in acc if r["noise"] == noise]
            if len({r["backbone"] for r in subset}) > 1:
                for metric in ACCURACY_METRICS:
                    title = f"{dataset}, {noise}: test accuracy by backbone, {METRIC_NAMES[metric]} (%)"
                    specs.append((TableSpec(title, {"dataset": dataset, "noise": noise, "metric": metric},
                                            "backbone", "method", BACKBONE_ORDER), subset))
    return specs + _ablation_specs(rows)


def _ablation_specs(rows: list[dict]) -> list[tuple[TableSpec, list[dict]]]:
    """Figure 3 per dataset: no adaptation (phase 1's test accuracy) / PEFT / FFT, where PEFT runs exist."""
    specs = []
    for dataset in sorted({r["dataset"] for r in rows if r["method"] == "DeFT-PEFT"}):
        phase1 = [{**r, "method": NO_ADAPTATION} for r in rows
                  if r["dataset"] == dataset and r["script"].endswith("phase1") and r["best_acc"] is not None]
        for backbone in sorted({r["backbone"] for r in phase1}):
            subset = [r for r in phase1 if r["backbone"] == backbone] + [
                r for r in rows if r["dataset"] == dataset and r["backbone"] == backbone
                and r["method"] in ("DeFT", "DeFT-PEFT") and r["role"] == "accuracy"]
            for metric in ACCURACY_METRICS:
                title = (f"{dataset}: adaptation ablation (Figure 3), test accuracy {METRIC_NAMES[metric]} (%), "
                         f"backbone {backbone}")
                specs.append((TableSpec(title, {"dataset": dataset, "backbone": backbone, "metric": metric},
                                        "noise", "method",
                                        col_order=tuple(ABLATION_COLUMNS), col_names=ABLATION_COLUMNS), subset))
    return specs


LEGEND = ("Cells: mean ± sample standard deviation (ddof=1) over seeds, n = number of runs (one run: no ±); "
          "'-': no run. Rows '<name>, paper': the number the paper reports (results/paper_numbers.yaml; "
          "source tags in results_cells.csv); '<name>, Δ': ours − paper. Accuracy 'best' is the maximum over "
          "epochs on the test set (the official 'Best Acc'), 'last' the final epoch.")


def results_tables(rows: list[dict], paper: Optional[PaperNumbers] = None) -> tuple[list[str], list[dict]]:
    """The Markdown tables of `rows` and one record per distinct table cell."""
    paper = paper if paper is not None else empty()
    sections, cells, seen = [], [], set()
    for spec, subset in table_specs(rows):
        markdown, table_cells = build_table(spec, subset, paper)
        sections.append(markdown)
        for cell in table_cells:
            key = tuple(cell[k] for k in ("dataset", "noise", "backbone", "method", "metric"))
            if key not in seen:
                seen.add(key)
                cells.append(cell)
    return sections, cells


def results_markdown(rows: list[dict], paper: Optional[PaperNumbers] = None, unfinished: Iterable[str] = ()) -> str:
    """results.md: the legend, skipped folders, and every table of `rows`."""
    unfinished = list(unfinished)
    note = ""
    if unfinished:
        shown = ", ".join(unfinished[:10]) + (", ..." if len(unfinished) > 10 else "")
        note = f"{len(unfinished)} folders skipped (no summary.json: unfinished or failed runs): {shown}"
    if not rows:
        return (note + "\n\n" if note else "") + "No finished runs found.\n"
    sections, _ = results_tables(rows, paper)
    head = f"{len(rows)} runs." + (f" {note}" if note else "")
    return "\n\n".join([LEGEND, head, *sections]) + "\n"


def _csv(fields: tuple, records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def results_csv(rows: list[dict]) -> str:
    """results.csv: one row per run."""
    return _csv(CSV_FIELDS, rows)


def cells_csv(cells: list[dict]) -> str:
    """results_cells.csv: one row per table cell (mean, std, n, seeds, paper value and source, difference)."""
    return _csv(CELL_FIELDS, [{k: _plain(v) for k, v in c.items()} for c in cells])


def _plain(value):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def main(argv: Optional[list[str]] = None) -> str:
    """Write results.md, results.csv, results_cells.csv (and figures/ with --figures); return the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder holding run directories (e.g. output/)")
    parser.add_argument("--out", default=None, help="where to write the tables (default: root)")
    parser.add_argument("--paper", default=PAPER_PATH,
                        help="the paper's numbers (YAML; default results/paper_numbers.yaml); 'none' leaves them out")
    parser.add_argument("--figures", action="store_true",
                        help="also draw the noise-ratio sweep figures into OUT/figures (needs matplotlib)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        raise SystemExit(f"error: {args.root} is not a folder; pass the output directory of the runs")
    try:
        paper = empty() if args.paper == "none" else load_paper_numbers(args.paper)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    rows = collect(args.root)
    unfinished = find_unfinished(args.root)
    markdown = results_markdown(rows, paper, unfinished)
    _, cells = results_tables(rows, paper)
    out = args.out or args.root
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "results.md"), markdown)
    atomic_write_text(os.path.join(out, "results.csv"), results_csv(rows))
    atomic_write_text(os.path.join(out, "results_cells.csv"), cells_csv(cells))
    print(markdown)
    print(f"{len(rows)} runs, {len(cells)} table cells, {len(unfinished)} folders skipped (no summary.json) -> "
          f"{os.path.join(out, 'results.md')}, results.csv, results_cells.csv")
    if args.figures:
        from experiments import plots

        try:
            written = plots.sweep_figures(cells, os.path.join(out, "figures"), exclude=(NO_ADAPTATION,))
        except plots.PlotsUnavailable as err:
            print(f"warning: figures not written: {err}", file=sys.stderr)
        else:
            print(f"{len(written)} figures -> {os.path.join(out, 'figures')}")
    return markdown


if __name__ == "__main__":
    main()
