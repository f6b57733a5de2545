"""Load a CLIP model with open_clip: official names, open_clip names, tags or local checkpoints.

`backbone` accepts the official DeFT names (`ViT-B/16`, `ViT-B/32`, `ViT-L/14`: the QuickGELU
models with OpenAI weights) or any open_clip model name, including the tiny configs of
`models/configs/`. `pretrained` is an open_clip tag (`openai`, `laion2b_s34b_b88k`, ...), a local
checkpoint path (an OpenAI TorchScript `.pt`, an open_clip state dict or `.safetensors`), or
`none` for random weights (tests).
"""
from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from typing import Iterator, Optional

import open_clip
import torch

from utils.errors import UserError, weight_file_error_detail

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
open_clip.add_model_config(CONFIG_DIR)  # the tiny test/demo architectures become open_clip names

# Official DeFT names -> (open_clip model name, default pretrained tag).
OFFICIAL_BACKBONES = {
    "ViT-B/16": ("ViT-B-16-quickgelu", "openai"),
    "ViT-B/32": ("ViT-B-32-quickgelu", "openai"),
    "ViT-L/14": ("ViT-L-14-quickgelu", "openai"),
}
NO_WEIGHTS = ("", "none", "random")


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights could not be found or downloaded."""


def image_dtype(visual: torch.nn.Module) -> torch.dtype:
    """The dtype an open_clip image tower computes in: that of its stem convolution's weights.

    Not `next(visual.parameters())`: open_clip's fp16 conversion leaves `class_embedding`,
    `positional_embedding` and the LayerNorms in fp32, so the first parameter of a ViT says fp32
    while the convolution expects fp16 inputs.
    """
    return visual.conv1.weight.dtype


def resolve_backbone(backbone: str, pretrained: Optional[str]) -> tuple[str, Optional[str]]:
    """Map an official or open_clip name plus `pretrained` to (open_clip name, tag-or-path-or-None)."""
    if backbone in OFFICIAL_BACKBONES:
        name, default_tag = OFFICIAL_BACKBONES[backbone]
        pretrained = default_tag if pretrained is None else pretrained
    else:
        name = backbone
    if name not in open_clip.list_models():
        raise ValueError(
            f"unknown backbone {backbone!r}: use one of {sorted(OFFICIAL_BACKBONES)} or an open_clip "
            f"model name (open_clip.list_models(), e.g. 'ViT-B-16-quickgelu', 'deft-tiny-vit')")
    if pretrained is not None and pretrained.strip().lower() in NO_WEIGHTS:
        pretrained = None
    return name, pretrained


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's root-logger warning that a model built without weights is initialised randomly."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init_notice() -> Iterator[None]:
    notice = _RandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _load_weight_file(name: str, path: str, precision: str, device: torch.device | str) -> torch.nn.Module:
    """Build `name` from a local weight file, or raise PretrainedWeightsError naming the file."""
    expected = (f"an OpenAI TorchScript .pt, or an open_clip state dict (.pt, .pth, .bin) or .safetensors of {name}, "
                "holding tensors only")
    if os.path.getsize(path) == 0:
        raise PretrainedWeightsError(f"the CLIP weight file {path} is empty (0 bytes); expected {expected}")
    try:
        if _is_torchscript_archive(path):
            # OpenAI's original .pt files are TorchScript archives; open_clip rebuilds them.
            return open_clip.load_openai_model(path, precision=precision, device=device)
        return open_clip.create_model(name, pretrained=path, precision=precision, device=device)
    except Exception as err:  # truncated, garbage, pickled objects (refused by weights_only), wrong shapes
        raise PretrainedWeightsError(f"could not load the CLIP weight file {path} ({type(err).__name__}: "
                                     f"{weight_file_error_detail(err)}); expected {expected}") from None


def load_clip(backbone: str, pretrained: Optional[str] = None, precision: str = "fp32",
              device: torch.device | str = "cpu") -> torch.nn.Module:
    """Build an open_clip CLIP model with the requested weights, in fp32 (or pure fp16) on `device`.

    With no network, a tag fails at once (tests set HF_HUB_OFFLINE=1) with a message that says how
    to supply the weights as a local file.
    """
    name, pretrained = resolve_backbone(backbone, pretrained)
    oc_precision = "fp16" if precision == "fp16" else "fp32"
    if pretrained is None:
        with _quiet_random_init_notice():  # random weights are what was asked for ("none")
            model = open_clip.create_model(name, pretrained=None, precision=oc_precision, device=device)
    elif os.path.isfile(pretrained):
        model = _load_weight_file(name, pretrained, oc_precision, device)
    elif os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise PretrainedWeightsError(f"pretrained checkpoint file not found: {pretrained}")
    else:
        tags = [tag for model_name, tag in open_clip.list_pretrained() if model_name == name]
        if pretrained not in tags:
            raise PretrainedWeightsError(
                f"{pretrained!r} is neither a file nor a pretrained tag of {name} (tags: {tags})")
        try:
            model = open_clip.create_model(name, pretrained=pretrained, precision=oc_precision, device=device)
        except Exception as err:  # network, hub or cache failure: say how to get the weights
            raise PretrainedWeightsError(
                f"could not load the {pretrained!r} weights of {name} ({type(err).__name__}: {err}). "
                f"Without internet, download them elsewhere (for the official CLIP ViT-B/16: the OpenAI "
                f"file ViT-B-16.pt, or open_clip's hub copy) and set `pretrained: /path/to/file` in the "
                f"YAML or pass --opts pretrained=/path/to/file") from err
    model.eval()
    return model


def tokenizer_for(backbone: str):
    """open_clip tokenizer of the backbone (the CLIP BPE tokenizer for every supported model)."""
    name, _ = resolve_backbone(backbone, None)
    return open_clip.get_tokenizer(name)
