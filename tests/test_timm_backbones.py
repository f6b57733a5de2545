"""Phase 2 on timm backbones: names, the official optimiser table, weights from a local file, and
main_phase2.py --backbone {resnet, vit, convnext, mae} end to end on CPU with random weights.

The end-to-end runs swap each official alias's timm model for a small member of the same family
(resnet10t, vit_tiny, convnext_atto) so that they stay fast on two cores; the official models are
built on the meta device, which checks their names and heads without allocating them.
"""
import dataclasses

import numpy as np
import pytest
import torch

import main_phase2
from datasets import build_datasets
from models import timm_backbones
from models.clip_loader import PretrainedWeightsError
from models.timm_backbones import (OFFICIAL_TIMM_BACKBONES, UnknownBackboneError, backbone_normalization,
                                   backbone_run_suffix, build_timm_classifier, clip_backbone_name, is_clip_backbone,
                                   linear_probe_settings, optimizer_settings)
from fixtures.world import build_smoke_world
from utils.clean_mask import mask_metadata, save_clean_mask
from utils.config import Config, apply_overrides, load_yaml
from utils.run_dir import read_metrics

NOISE = ["--noise_mode", "sym", "--noise_ratio", "0.4"]
SMALL_STAND_INS = {"resnet": "resnet10t", "vit": "vit_tiny_patch16_224", "convnext": "convnext_atto",
                   "mae": "vit_tiny_patch16_224"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """20 training images and a hand-made clean mask (every second sample) in phase 1's format."""
    world = build_smoke_world(tmp_path_factory.mktemp("timm"), per_class_train=2, per_class_test=1, epochs=1)
    cfg = apply_overrides(Config(), {**load_yaml(world["fft"]), "noise_mode": "sym", "noise_ratio": 0.4}, "t")
    data = build_datasets(cfg)
    mask = np.arange(len(data.train)) % 2 == 0
    run = world["root"] / "mask"
    run.mkdir()
    world["mask"] = save_clean_mask(str(run), mask, mask_metadata(cfg, data, len(data.train), "test", "every second",
                                                                  "hand-made", method="DeFT"))
    return world


@pytest.fixture
def small_models(monkeypatch):
    for alias, name in SMALL_STAND_INS.items():
        monkeypatch.setitem(OFFICIAL_TIMM_BACKBONES, alias,
                            dataclasses.replace(OFFICIAL_TIMM_BACKBONES[alias], model_name=name))


def _cfg(**values) -> Config:
    return apply_overrides(Config(), values, "test")


def test_backbone_names_resolve_to_clip_or_timm_with_a_clear_error_otherwise():
    for name in ("clip", "ViT-B/16", "ViT-B-16-quickgelu", "deft-tiny-vit"):
        assert is_clip_backbone(name), name
    for name in ("resnet", "vit", "convnext", "mae", "resnet18", "resnet50.a1_in1k"):
        assert not is_clip_backbone(name), name
    assert clip_backbone_name("clip") == "ViT-B/16" and clip_backbone_name("ViT-L/14") == "ViT-L/14"
    with pytest.raises(UnknownBackboneError, match=r"unknown backbone 'resnet-50'.*'clip'.*\['convnext', 'mae'"):
        is_clip_backbone("resnet-50")
    assert backbone_run_suffix("clip") == "" and backbone_run_suffix("deft-tiny-vit") == ""
    assert backbone_run_suffix("resnet") == "_resnet" and backbone_run_suffix("resnet50.a1_in1k") == "_resnet50.a1_in1k"


def test_official_table_and_optimizer_settings():
    table = {alias: (b.model_name, b.optimizer, b.lr, b.weight_decay, b.momentum)
             for alias, b in OFFICIAL_TIMM_BACKBONES.items()}
    assert table == {"vit": ("vit_base_patch16_224.augreg_in1k", "sgd", 1e-2, 1e-5, 0.0),
                     "resnet": ("resnet50.a1_in1k", "adamw", 1e-3, 1e-5, 0.0),
                     "convnext": ("convnext_tiny.fb_in1k", "adamw", 1e-4, 1e-4, 0.0),
                     "mae": ("vit_base_patch16_224.mae", "adamw", 1e-4, 1e-3, 0.0)}
    config = {"lr": 5e-4, "weight_decay": 5e-4, "momentum": 0.9}
    assert optimizer_settings(_cfg(backbone="resnet", **config)) == \
        {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-5, "momentum": 0.0}
    assert optimizer_settings(_cfg(backbone="vit", **config))["momentum"] == 0.0  # official: plain SGD
    assert optimizer_settings(_cfg(backbone="clip", **config)) == {"name": "sgd", **config}
    assert optimizer_settings(_cfg(backbone="resnet18", **config)) == {"name": "sgd", **config}
    assert optimizer_settings(_cfg(backbone="resnet", optimizer="adamw", **config)) == {"name": "adamw", **config}
    # TURN step 1: TURN's Table 8 per backbone unless the turn_lp_* keys say otherwise
    assert (linear_probe_settings(_cfg(backbone="deft-tiny-vit"))["name"],
            linear_probe_settings(_cfg(backbone="deft-tiny-vit"))["lr"]) == ("adamw", 1e-3)
    assert linear_probe_settings(_cfg(backbone="convnext", turn_lp_lr=0.5))["lr"] == 0.5
    assert linear_probe_settings(_cfg(backbone="convnext"))["name"] == "sgd"


@pytest.mark.parametrize("alias", ["resnet", "vit", "convnext", "mae"])
def test_official_models_build_with_a_fresh_head(alias):
    with torch.device("meta"):
        model = build_timm_classifier(alias, num_classes=7, resolution=224, pretrained=False, device="meta")
    name = OFFICIAL_TIMM_BACKBONES[alias].model_name
    assert model.net.pretrained_cfg["hf_hub_id"] == f"timm/{name}"
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 7


def test_local_weight_file_is_loaded_and_the_head_is_new(tmp_path):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False)  # 1000-class "pretrained" weights
    path = tmp_path / "resnet.pth"
    torch.save(source.state_dict(), path)
    model = build_timm_classifier("resnet10t", num_classes=10, resolution=32, pretrained=False, weights_path=str(path))
    assert torch.equal(model.net.conv1[0].weight, source.conv1[0].weight)
    assert model.head.out_features == 10
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(model(images), model.head(model.features(images)), atol=1e-5)


def test_vit_weights_from_224_are_resized_to_a_small_input(tmp_path):
    import timm

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    model = build_timm_classifier("vit_tiny_patch16_224", 10, resolution=32, weights_path=str(path))
    assert model.net.pos_embed.shape == (1, 1 + 4, 192)  # 2x2 patches + class token
    assert torch.equal(model.net.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_npz_files_use_the_models_own_loader(tmp_path):
    seen = []

    class FakeNet:
        def load_pretrained(self, path):
            seen.append(path)

    path = str(tmp_path / "vit.npz")
    timm_backbones.load_weight_file(FakeNet(), path)
    assert seen == [path]


def test_weight_errors_say_what_to_do(tmp_path):
    import timm

    with pytest.raises(PretrainedWeightsError, match="is not a file"):
        build_timm_classifier("resnet10t", 10, 32, weights_path=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"not": torch.zeros(1)}, wrong)
    with pytest.raises(PretrainedWeightsError, match=r"wrong.pth lacks \d+ of the model's weights"):
        build_timm_classifier("resnet10t", 10, 32, weights_path=str(wrong))
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)  # other shapes
    with pytest.raises(PretrainedWeightsError, match="could not load .*other.pth into timm model resnet10t") as err:
        build_timm_classifier("resnet10t", 10, 32, weights_path=str(other))
    assert "\n" not in str(err.value)  # one error line, however long torch's message
    empty, garbage = tmp_path / "empty.pth", tmp_path / "garbage.pth"
    empty.write_bytes(b"")
    garbage.write_bytes(b"garbage bytes, not weights")
    with pytest.raises(PretrainedWeightsError, match=r"empty.pth is empty \(0 bytes\); expected the weights"):
        build_timm_classifier("resnet10t", 10, 32, weights_path=str(empty))
    with pytest.raises(PretrainedWeightsError, match="garbage.pth .*not a tensor-only file") as err:
        build_timm_classifier("resnet10t", 10, 32, weights_path=str(garbage))
    assert "weights_only=False" not in str(err.value)  # never the advice to run the file's code
    # offline (HF_HUB_OFFLINE=1 in the tests): the tag cannot be fetched
    with pytest.raises(PretrainedWeightsError, match="weights_path: /path/to/file.*timm_pretrained: false"):
        build_timm_classifier("resnet10t", 10, 32, pretrained=True)


def test_backbone_normalization():
    assert backbone_normalization(_cfg(backbone="resnet")) is None  # normalize: dataset (official)
    assert backbone_normalization(_cfg(backbone="resnet", normalize="backbone")) == \
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert backbone_normalization(_cfg(backbone="vit", normalize="backbone")) == ((0.5,) * 3, (0.5,) * 3)
    mean, _ = backbone_normalization(_cfg(backbone="clip", normalize="backbone"))
    assert mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


@pytest.mark.parametrize("alias", ["resnet", "vit", "convnext", "mae"])
def test_phase2_trains_on_each_official_backbone(world, small_models, alias):
    summary = main_phase2.main(["--cfg", world["fft"], *NOISE, "--backbone", alias, "--clean_mask", world["mask"],
                                "--overwrite", "--opts", "timm_pretrained=false", "normalize=backbone"])
    run = world["output"] / f"phase2_{alias}" / "cifar10" / "sym0.4_seed0"
    assert summary["backbone"] == alias and summary["num_train_samples"] == 10
    assert [r["epoch"] for r in read_metrics(str(run))] == [1]
    group = torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]
    official = OFFICIAL_TIMM_BACKBONES[alias]
    assert group["initial_lr"] == official.lr and group["weight_decay"] == official.weight_decay
    assert ("betas" in group) == (official.optimizer == "adamw")


def test_phase2_loads_a_local_weight_file_and_fails_clearly_offline(world, small_models, tmp_path):
    import timm

    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), path)
    summary = main_phase2.main(["--cfg", world["fft"], *NOISE, "--backbone", "resnet", "--clean_mask", world["mask"],
                                "--opts", f"weights_path={path}", f"output_dir={tmp_path / 'out'}"])
    assert summary["best_test_acc"] >= 0
    with pytest.raises(PretrainedWeightsError, match=r"model/weights/resnet.pth.*weights_path"):
        main_phase2.main(["--cfg", world["fft"], *NOISE, "--backbone", "resnet", "--clean_mask", world["mask"],
                          "--opts", f"output_dir={tmp_path / 'offline'}"])


def test_backbone_clip_means_the_official_vit_b16(monkeypatch):
    import models.build

    seen = {}
    monkeypatch.setattr(models.build, "build_clip_classifier",
                        lambda cfg, names, device: seen.setdefault("backbone", cfg.backbone))
    models.build.build_classifier(_cfg(backbone="clip"), ["a", "b"], torch.device("cpu"))
    assert seen["backbone"] == "ViT-B/16"


def test_grad_checkpointing_uses_timms_switch_and_gives_the_same_gradients(small_models, monkeypatch):
    import torch.utils.checkpoint

    from models.build import build_classifier

    calls = []
    real = torch.utils.checkpoint.checkpoint
    # timm's checkpoint_seq calls torch.utils.checkpoint.checkpoint through the module: count the blocks it wraps
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    gradients = {}
    for enabled in (False, True):
        torch.manual_seed(0)
        cfg = _cfg(backbone="vit", resolution=32, timm_pretrained=False, grad_checkpointing=enabled)
        model = build_classifier(cfg, ["a", "b", "c"], torch.device("cpu"))  # vit_tiny stand-in: no dropout, no BN
        model.train()
        calls.clear()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        assert model.net.grad_checkpointing == enabled and len(calls) == (len(model.net.blocks) if enabled else 0)
        gradients[enabled] = [p.grad for p in model.trainable_parameters()]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(gradients[False], gradients[True]))


def test_turn_probes_and_fine_tunes_a_timm_backbone(world, small_models, tmp_path):
    import main_turn

    summary = main_turn.main(["--cfg", world["fft"], *NOISE, "--backbone", "resnet", "--opts", "timm_pretrained=false",
                              "turn_lp_epochs=2", "turn_fft_epochs=1", "turn_tau=0.0", f"output_dir={tmp_path}"])
    run = tmp_path / "turn_resnet" / "cifar10" / "sym0.4_seed0"
    probe = torch.load(run / "checkpoint.pt", weights_only=True)["extra"]["linear_probe"]
    assert probe["optimizer"] == {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-5, "momentum": 0.9}  # TURN Table 8
    assert len(probe["losses"]) == 2 and summary["lp_test_acc"] == probe["test_acc"]
    assert summary["backbone"] == "resnet" and (run / "clean_mask.npy").is_file()
