"""tools/miniature_regime.py (the clean-label regime of a miniature) on a tiny setting, and the named variants
of tools/miniature_variants.py: the JSON it writes holds what its run folders and an independent zero-shot
computation say."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import tools.pretrain_tiny_clip as pretrain_tool
from datasets.fashion_mnist import read_fashion_mnist
from datasets.rendering import Rendering, render
from models.clip_loader import load_clip, tokenizer_for
from models.zero_shot import TEMPLATE_SETS
from fixtures.runs import require_fashion_mnist
from tools import miniature_regime
from tools.miniature_variants import VARIANTS, get_variant
from utils.config import load_yaml
from tools.linear_probe import C_GRID

ROOT = Path(__file__).resolve().parent.parent
DATA = "./data/fashion-mnist"


def test_the_shifted_variant_differs_from_the_in_distribution_one_only_in_the_rendering():
    old, new = VARIANTS["in_distribution"], VARIANTS["shifted"]
    for kind in ("peft", "fft"):
        before, after = load_yaml(str(getattr(old, kind))), load_yaml(str(getattr(new, kind)))
        assert {k: v for k, v in after.items() if not k.startswith("render_")} == before
        assert (after["render_size"], after["render_floor"]) == (10, 50)
    # One pre-training serves both, with the settings (the cache key) the in-distribution demo always used.
    assert old.settings() == new.settings() == pretrain_tool.PretrainSettings(data_path=DATA)
    assert old.checkpoint() == new.checkpoint() == ROOT / "output" / "demo" / "tiny_clip" / "fashion_mnist_clip.pt"
    with pytest.raises(ValueError, match="in_distribution"):
        get_variant("shfited")


def test_the_pretraining_tool_takes_a_variant_and_flags_override_it(monkeypatch):
    calls = []
    monkeypatch.setattr(pretrain_tool, "pretrain_cached", lambda settings, out, force=False: calls.append((settings, out)))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the test process's threads alone
    pretrain_tool.main(["--variant", "shifted", "--epochs", "1"])
    settings, out = calls[-1]
    assert out == VARIANTS["shifted"].checkpoint()
    assert settings == pretrain_tool.PretrainSettings(data_path=DATA, epochs=1)
    pretrain_tool.main(["--out", "elsewhere.pt"])
    assert calls[-1] == (pretrain_tool.PretrainSettings(), Path("elsewhere.pt"))


def _zero_shot_by_hand(checkpoint: Path, test_images: int, resolution: int) -> float:
    """Zero-shot accuracy on the reader's fixed test draw, rendered and resized here, scored by the pre-training
    tool's own zero-shot routine (not the regime's)."""
    images, labels = read_fashion_mnist(DATA, "test")
    kept = np.sort(np.random.default_rng(0).permutation(len(labels))[:test_images])
    rendered = render(images[kept], Rendering(size=10, floor=50))
    resized = np.stack([np.asarray(Image.fromarray(x).resize((resolution, resolution), Image.BILINEAR)) for x in rendered])
    tensor = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0
    model = load_clip("deft-tiny-vit", str(checkpoint))
    return pretrain_tool.zero_shot_accuracy(model, tokenizer_for("deft-tiny-vit"), tensor,
                                            torch.from_numpy(labels[kept]), TEMPLATE_SETS["miniature"])


def test_the_regime_command_writes_the_four_clean_numbers_of_its_runs(tmp_path):
    require_fashion_mnist(DATA)
    checkpoint, runs, out = tmp_path / "clip.pt", tmp_path / "runs", tmp_path / "regime.json"
    returned = miniature_regime.main([
        "--variant", "shifted", "--seeds", "0", "--epochs", "1", "--out", str(out), "--output_dir", str(runs),
        "--opts", "max_train_samples=64", "max_test_samples=50", "backbone=deft-tiny-vit", "resolution=32",
        "batch_size=32", f"pretrained={checkpoint}",
        "--pretrain", "num_images=256", "epochs=1", "batch_size=128"])
    regime = json.loads(out.read_text())
    assert regime == json.loads(json.dumps(returned))
    assert regime["seeds"] == [0] and regime["variant"] == "shifted" and "10 px" in regime["miniature"]
    assert regime["std"] == {name: None for name in miniature_regime.MEASURES}  # one seed: no spread
    assert checkpoint.is_file() and json.loads(checkpoint.with_suffix(".json").read_text())["settings"]["num_images"] == 256

    for name, script in (("clean_peft", "phase1"), ("clean_fft", "baseline_ce")):
        run = runs / script / "fashion_mnist" / "none0.0_seed0"
        summary = json.loads((run / "summary.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert regime[name] == round(summary["last_test_acc"], 2) == regime["per_seed"][name][0]
        assert regime["best_epoch"][name] == [round(summary["best_test_acc"], 2)]
        assert (config["noise_mode"], config["noise_ratio"], config["render_size"], config["render_floor"]) == \
            ("none", 0.0, 10, 50)
        assert (config["max_train_samples"], config["max_test_samples"], config["epochs"]) == (64, 50, 1)
        assert str(run.relative_to(runs)) in regime["runs"][name][0]
        assert regime["seconds"][name][0] > 0
    peft_config = yaml.safe_load((runs / "phase1" / "fashion_mnist" / "none0.0_seed0" / "config.yaml").read_text())
    assert peft_config["warmup"] == peft_config["epochs"]  # L_sim on every sample, no selection

    assert regime["zero_shot"] == pytest.approx(_zero_shot_by_hand(checkpoint, 50, 32), abs=0.01)
    assert 0 <= regime["linear_probe"] <= 100 and regime["settings"]["linear_probe_C"][0] in C_GRID
    assert regime["gaps"]["clean_fft_minus_zero_shot"] == pytest.approx(regime["clean_fft"] - regime["zero_shot"], abs=0.011)
    met = regime["targets"]["met"]
    assert met["zero_shot"] == (35 <= regime["zero_shot"] <= 65)
    assert met["clean_peft"] == (regime["clean_peft"] - regime["zero_shot"] >= 8)
