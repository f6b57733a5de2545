"""The results collector on a folder of synthetic runs (summary.json + config.yaml)."""
import csv
import io
import json
import math

import pytest
import yaml

from experiments.collect_results import (collect, find_unfinished, format_stats, main, noise_label, results_markdown,
                                   results_tables, seed_stats)
from experiments.paper_numbers import load_paper_numbers


def _run(root, name, summary, seed=0, mode="sym", ratio=0.2, backbone="ViT-B/16"):
    folder = root / name / "cifar100" / (f"seed{seed}" if mode == "real" else f"{mode}{ratio}_seed{seed}")
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"dataset": "cifar100", "noise": {"mode": mode, "ratio": ratio,
                                                                                      "actual_rate": ratio * 0.99},
                                                     **summary}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"dataset": "cifar100", "seed": seed, "noise_mode": mode,
                                                        "noise_ratio": ratio, "backbone": backbone}))
    return folder


CE_BEST = {0: 70.0, 1: 72.0, 2: 77.0}  # mean 73, sample std sqrt((9 + 1 + 16) / 2) = sqrt(13)


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "output"
    for ratio, (p, r) in {0.2: (0.95, 0.9), 0.4: (0.9, 0.8)}.items():
        _run(root, "phase1", {"script": "phase1", "mask_precision": p, "mask_recall": r, "mask_f1": 0.5,
                              **({"mask_auroc": 0.9} if ratio == 0.2 else {}),
                              "best_test_acc": 70.0, "last_test_acc": 69.0}, ratio=ratio)
        _run(root, "phase2", {"script": "phase2", "backbone": "ViT-B/16", "mask_method": "DeFT", "adaptation": "FFT",
                              "mask_precision": p, "best_test_acc": 80.0 + ratio, "last_test_acc": 79.0}, ratio=ratio)
    _run(root, "phase2_peft", {"script": "phase2", "backbone": "ViT-B/16", "mask_method": "DeFT",
                               "adaptation": "PEFT", "best_test_acc": 75.0, "last_test_acc": 74.0})  # Figure 3
    _run(root, "small_loss", {"script": "small_loss", "method": "SmallLoss", "mask_precision": 0.8,
                              "mask_recall": 0.7, "mask_f1": 0.75, "best_test_acc": 60.0, "last_test_acc": 60.0,
                              "clean_mask": "x"})
    _run(root, "baseline_gmm", {"script": "baseline", "method": "GMM", "clean_mask": "x", "mask_precision": 0.85,
                                "mask_recall": 0.6, "mask_f1": 0.7, "best_test_acc": 75.5, "last_test_acc": 74.25})
    for seed, acc in CE_BEST.items():  # three seeds of one cell: mean and sample std
        _run(root, "baseline_ce", {"script": "baseline", "method": "CE", "best_test_acc": acc,
                                   "last_test_acc": acc - 1}, seed=seed)
    _run(root, "baseline_labelmatch", {"script": "baseline", "method": "LabelMatch", "clean_mask": "x",
                                       "mask_precision": 0.99, "mask_recall": 0.5, "mask_f1": 0.66})
    _run(root, "phase2_resnet_from_gmm", {"script": "phase2", "backbone": "resnet", "mask_method": "GMM",
                                          "best_test_acc": 66.0, "last_test_acc": 65.0}, backbone="resnet")
    _run(root, "baseline_ce_resnet", {"script": "baseline", "method": "CE", "backbone": "resnet",
                                      "best_test_acc": 61.0, "last_test_acc": 60.5}, backbone="resnet")
    _run(root, "real_baseline_gmm", {"script": "real_baseline", "method": "GMM", "best_test_acc": 50.0,
                                     "last_test_acc": 49.0}, mode="real", ratio=0.4)  # CIFAR-100N
    _run(root, "something_else", {"script": "benchmark"})  # not a result table row
    (root / "unfinished" / "cifar100" / "sym0.2_seed0").mkdir(parents=True)  # no summary.json: skipped
    failed = root / "phase2" / "cifar100" / "idn0.4_seed0"  # a run that stopped before its first checkpoint
    failed.mkdir(parents=True)
    (failed / "log.txt").write_text("error: ...")
    staging = _run(root, "phase2", {"script": "phase2", "best_test_acc": 1.0}, ratio=0.6)  # --overwrite staging
    staging.rename(staging.parent / ".sym0.6_seed0.overwrite")
    return root


@pytest.fixture
def paper(tmp_path):
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump({"numbers": [
        {"table": "2", "dataset": "cifar100", "noise": "sym0.2", "method": "DeFT", "backbone": "ViT-B/16",
         "metric": "best_acc", "value": 81.0, "source": "[P]"},
        {"table": "3", "dataset": "cifar100N", "noise": "real", "method": "UNICON", "backbone": "ViT-B/16",
         "metric": "best_acc", "value": 77.68, "source": "[NB]", "note": "unverified"},
        {"table": "1", "dataset": "cifar100", "noise": "sym0.4", "method": "DeFT", "metric": "recall",
         "value": 85.0, "source": "[P]"}]}))
    return load_paper_numbers(str(path))


def _table(markdown, title):
    section = markdown.split(f"## {title}\n\n")[1].split("\n\n")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines()]
    header = [c.strip() for c in rows[0]]
    return {r[0].strip(): dict(zip(header[1:], (c.strip() for c in r[1:]))) for r in rows[2:]}


def test_seed_statistics_are_the_mean_and_sample_std():
    stats = seed_stats(CE_BEST.values(), CE_BEST)
    assert (stats.mean, stats.n, stats.seeds) == (73.0, 3, (0, 1, 2))
    assert stats.std == pytest.approx(math.sqrt(13))  # ddof=1 by hand
    assert format_stats(stats) == "73.00 ± 3.61 (n=3)"
    assert format_stats(seed_stats([95.0])) == "95.00 (n=1)" and format_stats(None) == "-"


def test_detection_tables_per_metric_with_methods_by_noise(runs):
    markdown = results_markdown(collect(str(runs)))
    precision = _table(markdown, "cifar100: detection precision (%), backbone ViT-B/16")
    assert list(precision) == ["LabelMatch", "SmallLoss", "GMM", "DeFT"]  # the paper's row order
    assert precision["DeFT"] == {"sym0.2": "95.00 (n=1)", "sym0.4": "90.00 (n=1)"}
    assert precision["GMM"] == {"sym0.2": "85.00 (n=1)", "sym0.4": "-"}
    assert _table(markdown, "cifar100: detection recall (%), backbone ViT-B/16")["DeFT"]["sym0.4"] == "80.00 (n=1)"
    assert _table(markdown, "cifar100: detection F1 (%), backbone ViT-B/16")["SmallLoss"]["sym0.2"] == "75.00 (n=1)"
    auroc = _table(markdown, "cifar100: detection AUROC (%), backbone ViT-B/16")
    assert auroc == {"DeFT": {"sym0.2": "90.00 (n=1)", "sym0.4": "-"}}  # only runs that report it


def test_accuracy_tables_show_mean_std_and_n_over_seeds(runs):
    markdown = results_markdown(collect(str(runs)))
    best = _table(markdown, "cifar100: test accuracy, best (%), backbone ViT-B/16")
    assert list(best) == ["CE", "GMM", "DeFT", "DeFT-PEFT"]  # phase 1, small-loss, label-match are not rows
    assert best["CE"]["sym0.2"] == "73.00 ± 3.61 (n=3)"
    assert best["DeFT"] == {"sym0.2": "80.20 (n=1)", "sym0.4": "80.40 (n=1)"}  # PEFT runs are not averaged in
    assert best["DeFT-PEFT"] == {"sym0.2": "75.00 (n=1)", "sym0.4": "-"}
    last = _table(markdown, "cifar100: test accuracy, last (%), backbone ViT-B/16")
    assert last["CE"]["sym0.2"] == "72.00 ± 3.61 (n=3)" and last["GMM"]["sym0.2"] == "74.25 (n=1)"
    resnet = _table(markdown, "cifar100: test accuracy, best (%), backbone resnet")
    assert resnet == {"CE": {"sym0.2": "61.00 (n=1)"}, "GMM+FFT": {"sym0.2": "66.00 (n=1)"}}
    by_backbone = _table(markdown, "cifar100, sym0.2: test accuracy by backbone, best (%)")
    assert list(by_backbone) == ["resnet", "ViT-B/16"]
    assert by_backbone["resnet"] == {"CE": "61.00 (n=1)", "GMM": "-", "DeFT": "-", "DeFT-PEFT": "-",
                                     "GMM+FFT": "66.00 (n=1)"}
    assert by_backbone["ViT-B/16"]["CE"] == "73.00 ± 3.61 (n=3)"


def test_real_noise_runs_form_the_table3_layout_with_cifar100n_named(runs):
    markdown = results_markdown(collect(str(runs)))
    real = _table(markdown, "real-world noise: test accuracy, best (%), backbone ViT-B/16")
    assert real == {"GMM": {"cifar100N": "50.00 (n=1)"}}
    assert "real" not in _table(markdown, "cifar100: test accuracy, best (%), backbone ViT-B/16")["GMM"]


def test_the_paper_value_and_the_difference_beside_ours(runs, paper):
    markdown = results_markdown(collect(str(runs)), paper)
    best = _table(markdown, "cifar100: test accuracy, best (%), backbone ViT-B/16")
    assert best["DeFT, paper"] == {"sym0.2": "81.00", "sym0.4": "-"}  # cells the paper does not give stay empty
    assert best["DeFT, Δ"] == {"sym0.2": "-0.80", "sym0.4": "-"}  # 80.20 - 81.00
    assert "CE, paper" not in best
    recall = _table(markdown, "cifar100: detection recall (%), backbone ViT-B/16")
    assert recall["DeFT, paper"]["sym0.4"] == "85.00" and recall["DeFT, Δ"]["sym0.4"] == "-5.00"  # 80 - 85
    real = _table(markdown, "real-world noise: test accuracy, best (%), backbone ViT-B/16")
    assert real["UNICON"] == {"cifar100N": "-"} and real["UNICON, paper"] == {"cifar100N": "77.68"}  # paper-only row
    assert list(real) == ["GMM", "UNICON", "UNICON, paper"]


def test_adaptation_ablation_table_of_figure3(runs):
    markdown = results_markdown(collect(str(runs)))
    best = _table(markdown, "cifar100: adaptation ablation (Figure 3), test accuracy best (%), backbone ViT-B/16")
    assert best == {"sym0.2": {"no adaptation": "70.00 (n=1)", "PEFT": "75.00 (n=1)", "FFT": "80.20 (n=1)"},
                    "sym0.4": {"no adaptation": "70.00 (n=1)", "PEFT": "-", "FFT": "80.40 (n=1)"}}
    last = _table(markdown, "cifar100: adaptation ablation (Figure 3), test accuracy last (%), backbone ViT-B/16")
    assert last["sym0.2"] == {"no adaptation": "69.00 (n=1)", "PEFT": "74.00 (n=1)", "FFT": "79.00 (n=1)"}


def test_folders_without_summary_are_counted_not_averaged(runs):
    assert find_unfinished(str(runs)) == ["phase2/cifar100/idn0.4_seed0", "unfinished/cifar100/sym0.2_seed0"]
    markdown = results_markdown(collect(str(runs)), unfinished=find_unfinished(str(runs)))
    assert "2 folders skipped (no summary.json: unfinished or failed runs): phase2/cifar100/idn0.4_seed0" in markdown
    assert "idn0.4" not in _table(markdown, "cifar100: test accuracy, best (%), backbone ViT-B/16")["DeFT"]
    assert all("sym0.6" not in r["noise"] for r in collect(str(runs)))  # the hidden staging folder is no run


def test_cli_writes_markdown_run_csv_and_cell_csv(runs, tmp_path, paper, capsys):
    paper_file = tmp_path / "paper.yaml"
    main([str(runs), "--out", str(tmp_path / "tables"), "--paper", str(paper_file)])
    markdown = (tmp_path / "tables" / "results.md").read_text()
    out = capsys.readouterr().out
    assert "## cifar100: detection precision" in markdown and "## cifar100: detection precision" in out
    assert "2 folders skipped" in out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "tables" / "results.csv").read_text())))
    assert len(rows) == 14  # 15 finished summaries (the hidden staging folder is none), one of an unknown script
    gmm = next(r for r in rows if r["run_dir"].startswith("baseline_gmm"))
    assert (gmm["method"], gmm["role"], gmm["noise"], gmm["seed"]) == ("GMM", "both", "sym0.2", "0")
    assert float(gmm["precision"]) == pytest.approx(85.0) and float(gmm["best_acc"]) == 75.5
    cells = list(csv.DictReader(io.StringIO((tmp_path / "tables" / "results_cells.csv").read_text())))
    key = ("dataset", "noise", "backbone", "method", "metric")
    by_key = {tuple(c[k] for k in key): c for c in cells}
    assert len(by_key) == len(cells)  # one row per distinct cell
    ce = by_key[("cifar100", "sym0.2", "ViT-B/16", "CE", "best_acc")]
    assert float(ce["mean"]) == pytest.approx(73.0) and float(ce["std"]) == pytest.approx(math.sqrt(13))
    assert (ce["n"], ce["seeds"], ce["paper"], ce["delta"]) == ("3", "0 1 2", "", "")
    deft = by_key[("cifar100", "sym0.2", "ViT-B/16", "DeFT", "best_acc")]
    assert (float(deft["paper"]), float(deft["delta"]), deft["paper_source"]) == (81.0, pytest.approx(-0.8), "[P]")
    unicon = by_key[("cifar100N", "real", "ViT-B/16", "UNICON", "best_acc")]
    assert (unicon["mean"], unicon["n"], float(unicon["paper"]), unicon["paper_note"]) == ("", "0", 77.68, "unverified")
    single = by_key[("cifar100", "sym0.2", "ViT-B/16", "DeFT", "precision")]
    assert (single["std"], single["n"]) == ("", "1")  # one run: no spread


def test_shipped_paper_numbers_appear_in_the_real_noise_table(tmp_path):
    root = tmp_path / "output" / "real_phase2" / "clothing1m" / "seed0"
    root.mkdir(parents=True)
    (root / "summary.json").write_text(json.dumps({"script": "real_phase2", "dataset": "clothing1m",
                                                   "backbone": "ViT-B/16", "mask_method": "DeFT",
                                                   "adaptation": "FFT", "best_test_acc": 70.0, "last_test_acc": 69.0}))
    (root / "config.yaml").write_text(yaml.safe_dump({"dataset": "clothing1m", "seed": 0, "noise_ratio": 0.385}))
    rows = collect(str(tmp_path / "output"))
    markdown = results_markdown(rows, load_paper_numbers())
    real = _table(markdown, "real-world noise: test accuracy, best (%), backbone ViT-B/16")
    assert real["DeFT"] == {"clothing1m": "70.00 (n=1)"}
    assert real["DeFT, paper"] == {"clothing1m": "72.44"} and real["DeFT, Δ"] == {"clothing1m": "-2.44"}
    assert real["ELR, paper"] == {"clothing1m": "72.14"}  # the paper's best baseline, not run here
    _, cells = results_tables(rows, load_paper_numbers())
    assert {c["method"] for c in cells} == {"DeFT", "ELR"}  # no column without a run of ours (cifar100N, webvision)


def test_noise_columns_in_the_papers_order(tmp_path):
    for mode, ratio in (("idn", 0.2), ("sym", 0.6), ("sym", 0.2)):
        _run(tmp_path, "phase1", {"script": "phase1", "mask_precision": 0.9}, mode=mode, ratio=ratio)
    markdown = results_markdown(collect(str(tmp_path)))
    assert list(_table(markdown, "cifar100: detection precision (%), backbone ViT-B/16")["DeFT"]) == \
        ["sym0.2", "sym0.6", "idn0.2"]  # sym before inst (idn), as Tables 1 and 2


def test_noise_labels_and_an_empty_folder(tmp_path):
    assert (noise_label("sym", 0.2), noise_label("idn", 0.4), noise_label("real", 0.4), noise_label("", 0.0)) == \
        ("sym0.2", "idn0.4", "real", "none")
    assert results_markdown(collect(str(tmp_path))) == "No finished runs found.\n"


def test_the_sister_methods_have_rows(tmp_path):
    root = tmp_path / "output"
    for seed, (f1, acc) in enumerate([(0.8, 60.0), (0.9, 64.0)]):
        _run(root, "robust_similarity_m2", {"script": "robust_similarity", "method": "RobustSimilarity", "clean_mask": "x",
                                            "rs_blocks": 2,
                                         "mask_precision": 0.9, "mask_recall": 0.8, "mask_f1": f1,
                                         "best_test_acc": acc, "last_test_acc": acc}, seed=seed)
    coreg = _run(root, "coreg", {"script": "coreg", "method": "CoReg", "best_test_acc": 71.0, "last_test_acc": 70.0},
                 mode="none", ratio=0.0)
    summary = json.loads((coreg / "summary.json").read_text())
    (coreg / "summary.json").write_text(json.dumps({**summary, "noise": {"mode": "clip_annotation"}}))
    rows = {r["method"]: r for r in collect(str(root))}
    assert rows["RobustSimilarity (m=2)"]["role"] == "both" and rows["CoReg"]["role"] == "accuracy"
    assert rows["CoReg"]["noise"] == "clip_annotation"
    markdown = results_markdown(collect(str(root)))
    assert "| RobustSimilarity (m=2) | 85.00 ± 7.07 (n=2) |" in markdown  # F1: mean 85, sd of (80, 90)
    assert "| CoReg |" in markdown and "clip_annotation" in markdown


def test_robust_similarity_gets_one_row_per_block_count(tmp_path):
    """Robust Similarity's ablation varies m at one noise setting and seed: each m is its own run (m is in
    the run name) and its own row, ordered by m."""
    root = tmp_path / "output"
    for blocks, acc in ((6, 61.0), (1, 57.0), (2, 58.0)):  # written out of order on purpose
        _run(root, f"robust_similarity_m{blocks}", {"script": "robust_similarity", "method": "RobustSimilarity",
                                                       "rs_blocks": blocks, "clean_mask": "x", "mask_f1": 0.5,
                                                       "best_test_acc": acc, "last_test_acc": acc - 1.0},
             mode="sym", ratio=0.125, seed=1)
    rows = collect(str(root))
    assert sorted(r["method"] for r in rows) == ["RobustSimilarity (m=1)", "RobustSimilarity (m=2)",
                                                 "RobustSimilarity (m=6)"]
    best = _table(results_markdown(rows), "cifar100: test accuracy, best (%), backbone ViT-B/16")
    assert list(best) == ["RobustSimilarity (m=1)", "RobustSimilarity (m=2)", "RobustSimilarity (m=6)"]
    assert best["RobustSimilarity (m=6)"] == {"sym0.125": "61.00 (n=1)"}  # not the mean of the three m
