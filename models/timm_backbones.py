"""Phase-2 backbones from timm (HotanLee/DeFT main_phase2.py:109-123) and how each one trains.

`backbone` names a CLIP model (`clip` = the official `ViT-B/16`, any official or open_clip name),
one of the official timm aliases `vit`, `resnet`, `convnext`, `mae`, or any other timm model name
(`resnet18`, `convnext_tiny.fb_in22k`, ...). Weights come from `weights_path` (a local file, as the
official `./model/weights/*` files) or from timm's pretrained tag when online (`timm_pretrained`);
`timm_pretrained: false` gives random weights (tests). `optimizer: auto` trains each backbone with
the official optimiser of the table below; CLIP and other timm models use SGD with the config's
lr, momentum and weight decay.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional

import open_clip
import timm
import torch
from torch import nn

from models.clip_loader import OFFICIAL_BACKBONES, PretrainedWeightsError
from utils.config import TIMM_ALIASES, Config
from utils.errors import UserError, weight_file_error_detail

CLIP_ALIAS = "clip"
CLIP_DEFAULT = "ViT-B/16"  # what `backbone: clip` means: the official CLIP model


@dataclass(frozen=True)
class TimmBackbone:
    """An official phase-2 backbone: timm model, where the official code expects its weights, optimiser."""

    model_name: str
    official_file: str
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float = 0.0


OFFICIAL_TIMM_BACKBONES = dict(zip(TIMM_ALIASES, (  # vit, resnet, convnext, mae
    TimmBackbone("vit_base_patch16_224.augreg_in1k", "./model/weights/vit.npz", "sgd", 1e-2, 1e-5),
    TimmBackbone("resnet50.a1_in1k", "./model/weights/resnet.pth", "adamw", 1e-3, 1e-5),
    TimmBackbone("convnext_tiny.fb_in1k", "./model/weights/convnext.pth", "adamw", 1e-4, 1e-4),
    TimmBackbone("vit_base_patch16_224.mae", "./model/weights/mae.pth", "adamw", 1e-4, 1e-3),
)))
# TURN (its paper's Table 8): linear-probing optimiser, lr and weight decay per pre-trained model.
TURN_LINEAR_PROBE = {
    "clip": ("adamw", 1e-3, 1e-6), "vit": ("sgd", 1e-2, 1e-3), "convnext": ("sgd", 1e-1, 1e-4),
    "mae": ("adamw", 1e-2, 1e-5), "resnet": ("adamw", 1e-3, 1e-5),
}


class UnknownBackboneError(UserError, ValueError):
    """`backbone` names neither a CLIP model nor a timm model."""


def is_clip_backbone(name: str) -> bool:
    """True for `clip`, the official CLIP names and open_clip model names; False for timm models."""
    if name == CLIP_ALIAS or name in OFFICIAL_BACKBONES or name in open_clip.list_models():
        return True
    if name in OFFICIAL_TIMM_BACKBONES or timm.is_model(name):
        return False
    raise UnknownBackboneError(
        f"unknown backbone {name!r}: use 'clip' (= {CLIP_DEFAULT}), a CLIP name ({', '.join(OFFICIAL_BACKBONES)} "
        f"or an open_clip model), one of {sorted(OFFICIAL_TIMM_BACKBONES)} (the official timm models), "
        "or any timm model name (timm.list_models())")


def clip_backbone_name(name: str) -> str:
    """`clip` -> the official ViT-B/16; any other CLIP name unchanged."""
    return CLIP_DEFAULT if name == CLIP_ALIAS else name


def timm_model_name(name: str) -> str:
    """The timm model of an official alias (`resnet` -> `resnet50.a1_in1k`), else the name itself."""
    return OFFICIAL_TIMM_BACKBONES[name].model_name if name in OFFICIAL_TIMM_BACKBONES else name


def backbone_run_suffix(name: str) -> str:
    """'' for CLIP backbones (the official phase-2 run path); '_<name>' for timm ones."""
    return "" if is_clip_backbone(name) else "_" + name.replace(os.sep, "-").replace("/", "-")


class TimmClassifier(nn.Module):
    """A timm model whose classifier was created fresh for C classes (timm's own head init)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def head(self) -> nn.Module:
        """The classifier (Linear for the official models); its parameters live inside `net`."""
        return self.net.get_classifier()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features (batch, num_features): the head's input."""
        return self.net.forward_head(self.net.forward_features(images), pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, C)."""
        return self.net(images)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter: the official timm phase 2 fine-tunes the whole network."""
        return list(self.net.parameters())


def build_timm_classifier(backbone: str, num_classes: int, resolution: int, pretrained: bool = True,
                          weights_path: Optional[str] = None,
                          device: torch.device | str = "cpu") -> TimmClassifier:
    """Create the timm model with a new C-way head (timm's own init), fp32, on `device`.

    Weights: `weights_path` when given (every weight but the classifier must be in the file), else
    timm's pretrained tag when `pretrained`, else random. Non-224 inputs give ViT-style models
    `img_size=resolution` (their position embeddings are resized when weights are loaded).
    """
    name = timm_model_name(backbone)
    if weights_path is not None and not os.path.isfile(weights_path):
        raise PretrainedWeightsError(f"weights_path {weights_path!r} is not a file; give the local weight "
                                     f"file of {name} (.pth, .safetensors, or a JAX .npz for ViTs)")
    try:
        net = _create(name, pretrained and weights_path is None, resolution, num_classes)
    except Exception as err:  # network, hub or cache failure: say how to get the weights
        official = OFFICIAL_TIMM_BACKBONES.get(backbone)
        where = f" (the official code expects {official.official_file})" if official else ""
        raise PretrainedWeightsError(
            f"could not get the pretrained weights of timm model {name} ({type(err).__name__}: {err}). "
            f"Without internet, download them elsewhere{where} and set `weights_path: /path/to/file` "
            "(--opts weights_path=...), or `timm_pretrained: false` for random weights") from err
    if weights_path is not None:
        if os.path.getsize(weights_path) == 0:
            raise PretrainedWeightsError(f"the weight file {weights_path} is empty (0 bytes); expected the weights "
                                         f"of timm model {name} (.pth, .safetensors, or a JAX .npz for ViTs)")
        try:
            load_weight_file(net, weights_path)
        except PretrainedWeightsError:
            raise
        except Exception as err:  # unreadable file, pickled objects (refused by weights_only), wrong shapes
            raise PretrainedWeightsError(
                f"could not load {weights_path} into timm model {name} ({type(err).__name__}: {weight_file_error_detail(err)}); "
                "the file must hold this model's weights, tensors only") from err
    return TimmClassifier(net).to(device)


def _create(name: str, pretrained: bool, resolution: int, num_classes: int) -> nn.Module:
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    native = pretrained_cfg.input_size[-1] if pretrained_cfg is not None else 224
    if resolution != native:
        try:  # ViTs need the input size (position embeddings); CNNs accept any size and no img_size
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, img_size=resolution)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)


def load_weight_file(net: nn.Module, path: str) -> None:
    """Load a local weight file into a timm model; only the classifier may be absent (it stays new).

    A JAX `.npz` (the official vit.npz) goes through the model's own loader; PyTorch files through
    timm's state-dict reader and the model family's `checkpoint_filter_fn` (original layouts, ViT
    position-embedding resize). Unlike timm's pretrained loader, which turns strict loading off when
    the head changes, a file that lacks any backbone weight is an error, never a silent random init.
    """
    if path.endswith(".npz"):
        net.load_pretrained(path)
        return
    state = timm.models.load_state_dict(path)
    filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, net)
    classifiers = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
    prefixes = tuple(f"{c}." for c in ((classifiers,) if isinstance(classifiers, str) else classifiers))
    state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(prefixes)]
    if missing:
        raise PretrainedWeightsError(
            f"{path} lacks {len(missing)} of the model's weights (e.g. {missing[:3]}); it holds "
            f"{len(state)} other tensors (e.g. {list(state)[:3]}). Give a weight file of this model")


def optimizer_settings(cfg: Config) -> dict:
    """Keyword arguments of `utils.engine.make_optimizer` for the phase-2 / baseline model.

    `optimizer: auto`: the official table (HotanLee/DeFT main_phase2.py:109-120) for `vit`, `resnet`, `convnext`, `mae` (their lr and
    weight decay replace the config's, as in the official code), SGD with the config's lr, momentum
    and weight decay for CLIP and other timm models. `sgd` / `adamw`: that optimiser with the config's values.
    """
    official = OFFICIAL_TIMM_BACKBONES.get(cfg.backbone)
    if cfg.optimizer == "auto" and official is not None:
        return {"name": official.optimizer, "lr": official.lr, "weight_decay": official.weight_decay,
                "momentum": official.momentum}
    name = "sgd" if cfg.optimizer == "auto" else cfg.optimizer
    return {"name": name, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "momentum": cfg.momentum}


def linear_probe_settings(cfg: Config) -> dict:
    """TURN step 1 optimiser: `turn_lp_*` keys, each None = TURN's Table 8 row of the backbone.

    A backbone without a row (another timm model) falls back to the phase-2 optimiser settings.
    """
    key = CLIP_ALIAS if is_clip_backbone(cfg.backbone) else cfg.backbone
    fallback = optimizer_settings(cfg)
    name, lr, weight_decay = TURN_LINEAR_PROBE.get(key, (fallback["name"], fallback["lr"], fallback["weight_decay"]))
    return {"name": cfg.turn_lp_optimizer or name,
            "lr": lr if cfg.turn_lp_lr is None else cfg.turn_lp_lr,
            "weight_decay": weight_decay if cfg.turn_lp_weight_decay is None else cfg.turn_lp_weight_decay,
            "momentum": cfg.momentum}


def backbone_normalization(cfg: Config) -> Optional[tuple]:
    """(mean, std) for `normalize: backbone`: CLIP's statistics or the timm model's pretrained ones.

    None for the other `normalize` choices (the data module applies them itself).
    """
    if cfg.normalize != "backbone":
        return None
    if is_clip_backbone(cfg.backbone):
        return tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD)
    pretrained_cfg = timm.models.get_pretrained_cfg(timm_model_name(cfg.backbone))
    if pretrained_cfg is None:
        raise UnknownBackboneError(f"timm has no pretrained statistics for {cfg.backbone!r}; "
                                   "use normalize: dataset or clip")
    return tuple(pretrained_cfg.mean), tuple(pretrained_cfg.std)
