"""tools/miniature_diagnosis.py on a tiny setting: what it says of a grid's DeFT run is what the run's mask and
labels say, and its controls run on the grid's labels with one part of the objective removed."""
import dataclasses
import json

import numpy as np
import pytest
import yaml

import main_phase1
from datasets import build_datasets
from fixtures.runs import require_fashion_mnist
from tools import miniature_diagnosis
from tools.miniature_regime import merge_opts
from tools.miniature_variants import get_variant
from tools.pretrain_tiny_clip import pretrain_cached
from utils.config import Config, apply_overrides

DATA = "./data/fashion-mnist"


def test_the_diagnosis_reads_the_grid_runs_per_class_and_runs_its_controls_on_the_grid_labels(tmp_path, capsys):
    require_fashion_mnist(DATA)
    variant, checkpoint = get_variant("shifted"), tmp_path / "clip.pt"
    tiny = ["max_train_samples=64", "max_test_samples=50", "backbone=deft-tiny-vit", "resolution=32",
            "batch_size=32", f"pretrained={checkpoint}", "num_workers=0", "progress=false", "epochs=2"]
    settings = variant.settings(variant.config(opts=tiny))
    pretrain_cached(dataclasses.replace(settings, num_images=256, epochs=1, batch_size=128), checkpoint)

    with pytest.raises(SystemExit, match="no DeFT phase-1 run under"):
        miniature_diagnosis.main(["--grid_output", str(tmp_path / "nothing"), "--out", str(tmp_path / "d.json")])

    grid = tmp_path / "grid"
    main_phase1.main(["--cfg", str(variant.peft), "--noise_mode", "sym", "--noise_ratio", "0.4", "--opts",
                      *merge_opts(tiny, ["warmup=1", f"output_dir={grid}"])])
    out = tmp_path / "diagnosis.json"
    returned = miniature_diagnosis.main([
        "--grid_output", str(grid), "--cells", "sym0.4", "--seeds", "0", "--controls", "given_labels_in_dp",
        "clean_labels", "--output_dir", str(tmp_path / "controls"), "--out", str(out), "--opts", *tiny])
    diagnosis = json.loads(out.read_text())
    assert diagnosis == json.loads(json.dumps(returned))

    # The grid run, by hand: the mask, the labels rebuilt from its config, per class the share kept
    run = grid / "phase1" / "fashion_mnist" / "sym0.4_seed0"
    record = diagnosis["grid"]["sym0.4_seed0"]
    mask = np.load(run / "clean_mask.npy")
    cfg = apply_overrides(Config(), yaml.safe_load((run / "config.yaml").read_text()), "test")
    given = np.asarray(build_datasets(cfg).train.given_labels)
    by_hand = [round(100 * float(mask[given == c].mean()), 1) if (given == c).any() else None for c in range(10)]
    assert record["kept_per_class"] == by_hand
    assert record["kept"] == round(100 * float(mask.mean()), 2)
    overall = mask.mean()
    assert record["rare_classes"] == [c for c in range(10) if by_hand[c] is not None
                                      and mask[given == c].mean() < 0.5 * overall]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    assert record["test_acc_after_warmup"] == round(metrics[0]["test_acc"], 2)  # warmup = 1
    assert record["mask_f1"] == round(100 * summary["mask_f1"], 2)
    assert summary["selected_frac_per_class"] == pytest.approx([None if v is None else mask[given == c].mean()
                                                                for c, v in enumerate(by_hand)])

    # Every detector's masks in the grid, summarised the same way (here DeFT's one run)
    assert diagnosis["detectors"] == {"DeFT": {
        "runs": 1, "runs_with_dropped_classes": int(bool(record["rare_classes"])),
        "dropped_classes": len(record["rare_classes"]), "most_dropped_in_a_run": len(record["rare_classes"]),
        "lowest_class_share": min(v for v in by_hand if v is not None), "smallest_mask": record["kept"]}}

    # The controls: the grid's labels, the schedule given, one part removed
    given_in_dp = diagnosis["controls"]["given_labels_in_dp"]["runs"]["sym0.4_seed0"]
    assert given_in_dp["given_labels_sha256"] == record["given_labels_sha256"]
    control_cfg = yaml.safe_load((tmp_path / "controls" / "given_labels_in_dp" / "phase1" / "fashion_mnist" /
                                  "sym0.4_seed0" / "config.yaml").read_text())
    assert (control_cfg["epochs"], control_cfg["warmup"], control_cfg["noisy_prompt_labels_until"]) == (2, 1, 2)
    clean = diagnosis["controls"]["clean_labels"]["runs"]["none0.0_seed0"]
    clean_cfg = yaml.safe_load((tmp_path / "controls" / "clean_labels" / "phase1" / "fashion_mnist" /
                                "none0.0_seed0" / "config.yaml").read_text())
    assert (clean_cfg["noise_mode"], clean_cfg["warmup"]) == ("none", 1)
    assert set(diagnosis["controls"]) == {"given_labels_in_dp", "clean_labels"} and clean["kept"] >= 0

    table = out.with_suffix(".md").read_text()
    assert f"| sym0.4_seed0 | {record['test_acc_after_warmup']:.1f} | {record['last_test_acc']:.1f} |" in table
    assert "| given_labels_in_dp |" in table and "| DeFT (the grid's runs) |" in table
