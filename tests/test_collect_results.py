"""The results collector on a folder of synthetic runs (summary.json + config.yaml)."""
import csv
import io
import json

import pytest
import yaml

from utils.collect_results import collect, main, noise_label, results_markdown


def _run(root, name, summary, seed=0, mode="sym", ratio=0.2, backbone="ViT-B/16"):
    folder = root / name / "cifar100" / f"{mode}{ratio}_seed{seed}"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"dataset": "cifar100", "noise": {"mode": mode, "ratio": ratio,
                                                                                      "actual_rate": ratio * 0.99},
                                                     **summary}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"dataset": "cifar100", "seed": seed, "noise_mode": mode,
                                                        "noise_ratio": ratio, "backbone": backbone}))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "output"
    for ratio, (p, r) in {0.2: (0.95, 0.9), 0.4: (0.9, 0.8)}.items():
        _run(root, "phase1", {"script": "phase1", "mask_precision": p, "mask_recall": r, "mask_f1": 0.5,
                              "best_test_acc": 70.0, "last_test_acc": 69.0}, ratio=ratio)
        _run(root, "phase2", {"script": "phase2", "backbone": "ViT-B/16", "mask_method": "DeFT",
                              "mask_precision": p, "best_test_acc": 80.0 + ratio, "last_test_acc": 79.0}, ratio=ratio)
    _run(root, "small_loss", {"script": "small_loss", "method": "SmallLoss", "mask_precision": 0.8,
                              "mask_recall": 0.7, "mask_f1": 0.75, "best_test_acc": 60.0, "last_test_acc": 60.0,
                              "clean_mask": "x"})
    _run(root, "baseline_gmm", {"script": "baseline", "method": "GMM", "clean_mask": "x", "mask_precision": 0.85,
                                "mask_recall": 0.6, "mask_f1": 0.7, "best_test_acc": 75.5, "last_test_acc": 74.25})
    for seed, acc in ((0, 70.0), (1, 72.0)):  # two seeds of one cell are averaged
        _run(root, "baseline_ce", {"script": "baseline", "method": "CE", "best_test_acc": acc,
                                   "last_test_acc": acc - 1}, seed=seed)
    _run(root, "baseline_labelmatch", {"script": "baseline", "method": "LabelMatch", "clean_mask": "x",
                                       "mask_precision": 0.99, "mask_recall": 0.5, "mask_f1": 0.66})
    _run(root, "phase2_resnet_from_gmm", {"script": "phase2", "backbone": "resnet", "mask_method": "GMM",
                                          "best_test_acc": 66.0, "last_test_acc": 65.0}, backbone="resnet")
    _run(root, "baseline_ce_resnet", {"script": "baseline", "method": "CE", "backbone": "resnet",
                                      "best_test_acc": 61.0, "last_test_acc": 60.5}, backbone="resnet")
    _run(root, "real_baseline_gmm", {"script": "real_baseline", "method": "GMM", "best_test_acc": 50.0,
                                     "last_test_acc": 49.0}, mode="real", ratio=0.0)
    _run(root, "something_else", {"script": "benchmark"})  # not a result table row
    (root / "unfinished" / "cifar100" / "sym0.2_seed0").mkdir(parents=True)  # no summary.json: skipped
    return root


def _table(markdown, title):
    section = markdown.split(f"## {title}\n\n")[1].split("\n\n")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines()]
    header = [c.strip() for c in rows[0]]
    return {r[0].strip(): dict(zip(header[1:], (c.strip() for c in r[1:]))) for r in rows[2:]}


def test_detection_table_has_methods_by_noise_with_precision_and_recall(runs):
    markdown = results_markdown(collect(str(runs)))
    table = _table(markdown, "cifar100: detection, precision / recall (%)")
    assert list(table) == ["LabelMatch", "SmallLoss", "GMM", "DeFT"]  # the paper's row order
    assert table["DeFT"] == {"sym0.2": "95.00 / 90.00", "sym0.4": "90.00 / 80.00"}
    assert table["GMM"] == {"sym0.2": "85.00 / 60.00", "sym0.4": "-"}
    assert _table(markdown, "cifar100: detection, F1 (%)")["SmallLoss"]["sym0.2"] == "75.00"


def test_accuracy_tables_per_backbone_and_the_backbone_table(runs):
    markdown = results_markdown(collect(str(runs)))
    clip = _table(markdown, "cifar100: test accuracy, best / last (%), backbone ViT-B/16")
    assert list(clip) == ["CE", "GMM", "DeFT"]  # phase 1, small-loss and label-match are not accuracy rows
    assert clip["CE"]["sym0.2"] == "71.00 / 70.00 (n=2)"
    assert clip["GMM"]["real"] == "50.00 / 49.00" and clip["DeFT"]["sym0.4"] == "80.40 / 79.00"
    assert list(clip["CE"]) == ["real", "sym0.2", "sym0.4"]
    resnet = _table(markdown, "cifar100: test accuracy, best / last (%), backbone resnet")
    assert resnet == {"CE": {"sym0.2": "61.00 / 60.50"}, "GMM+FFT": {"sym0.2": "66.00 / 65.00"}}
    by_backbone = _table(markdown, "cifar100, sym0.2: test accuracy by backbone, best / last (%)")
    assert by_backbone["resnet"] == {"CE": "61.00 / 60.50", "GMM": "-", "DeFT": "-", "GMM+FFT": "66.00 / 65.00"}
    assert by_backbone["ViT-B/16"]["DeFT"] == "80.20 / 79.00"


def test_cli_writes_markdown_and_one_csv_row_per_run(runs, tmp_path, capsys):
    main([str(runs), "--out", str(tmp_path / "tables")])
    markdown = (tmp_path / "tables" / "results.md").read_text()
    assert "## cifar100: detection" in markdown and "## cifar100: detection" in capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "tables" / "results.csv").read_text())))
    assert len(rows) == 12  # 13 summaries, one of them from an unknown script
    gmm = next(r for r in rows if r["run_dir"].startswith("baseline_gmm"))
    assert (gmm["method"], gmm["role"], gmm["noise"], gmm["seed"]) == ("GMM", "both", "sym0.2", "0")
    assert float(gmm["precision"]) == pytest.approx(85.0) and float(gmm["best_acc"]) == 75.5


def test_noise_labels_and_an_empty_folder(tmp_path):
    assert (noise_label("sym", 0.2), noise_label("idn", 0.4), noise_label("real", 0.4), noise_label("", 0.0)) == \
        ("sym0.2", "idn0.4", "real", "none")
    assert results_markdown(collect(str(tmp_path))) == "No finished runs found.\n"
