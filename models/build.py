"""Build the models of each script from a Config."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from models.classifier import CLIPClassifier
from models.clip_loader import load_clip, tokenizer_for
from models.deft import DeFTModel
from models.peft import TuningConfig
from models.prompt_matrix import RobustSimilarityModel
from models.timm_backbones import build_timm_classifier, clip_backbone_name, is_clip_backbone
from utils.config import Config


def tuning_config(cfg: Config) -> TuningConfig:
    """The PEFT / fine-tuning keys of the config as a TuningConfig."""
    return TuningConfig(
        vpt_shallow=cfg.vpt_shallow, vpt_deep=cfg.vpt_deep, vpt_len=cfg.vpt_len, lora=cfg.lora,
        lora_dim=cfg.lora_dim, adapter=cfg.adapter, adapter_dim=cfg.adapter_dim,
        adapter_mode=cfg.adapter_mode, ssf=cfg.ssf, bias_tuning=cfg.bias_tuning, partial=cfg.partial,
        finetune=cfg.finetune, finetune_scope=cfg.finetune_scope)


def load_frozen_clip(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The configured CLIP with every parameter frozen; `grad_checkpointing` switches on open_clip's
    activation checkpointing in both towers (our PEFT block forward honours the same switch)."""
    clip_model = load_clip(cfg.backbone, cfg.pretrained, cfg.precision, device)
    if cfg.grad_checkpointing:
        clip_model.set_grad_checkpointing(True)
    for param in clip_model.parameters():
        param.requires_grad_(False)
    return clip_model


def build_deft_model(cfg: Config, class_names: Sequence[str], device: torch.device) -> DeFTModel:
    """Phase-1 detector: pretrained CLIP, frozen, with the configured tuner and dual prompts."""
    clip_model = load_frozen_clip(cfg, device)
    model = DeFTModel(clip_model, class_names, tokenizer_for(cfg.backbone), tuning_config(cfg),
                      n_ctx=cfg.N_CTX, class_token_position=cfg.CLASS_TOKEN_POSITION)
    return model.to(device)


def build_robust_similarity_model(cfg: Config, class_names: Sequence[str], device: torch.device) -> RobustSimilarityModel:
    """Robust Similarity: frozen CLIP (image and text towers) with a prompt matrix of rs_blocks blocks."""
    clip_model = load_frozen_clip(cfg, device)
    model = RobustSimilarityModel(clip_model, class_names, tokenizer_for(cfg.backbone), cfg.rs_blocks, n_ctx=cfg.N_CTX,
                                  ctx_per_class=cfg.rs_ctx_per_class)
    return model.to(device)


def build_clip_classifier(cfg: Config, class_names: Sequence[str], device: torch.device) -> CLIPClassifier:
    """Phase-2 / baseline classifier: pretrained CLIP visual tower, tuner or FFT, new linear head."""
    clip_model = load_frozen_clip(cfg, device)
    model = CLIPClassifier(clip_model, len(class_names), tuning_config(cfg), cfg.head_init, class_names,
                           tokenizer_for(cfg.backbone))
    return model.to(device)


def build_classifier(cfg: Config, class_names: Sequence[str], device: torch.device) -> nn.Module:
    """Phase-2 / baseline classifier on any backbone: a CLIP visual tower + head, or a timm model.

    Both kinds have `features(images)`, `head`, `trainable_parameters()` and return logits.
    """
    if is_clip_backbone(cfg.backbone):
        cfg = dataclasses.replace(cfg, backbone=clip_backbone_name(cfg.backbone))
        return build_clip_classifier(cfg, class_names, device)
    model = build_timm_classifier(cfg.backbone, len(class_names), cfg.resolution, cfg.timm_pretrained,
                                  cfg.weights_path, device)
    if cfg.grad_checkpointing:
        model.net.set_grad_checkpointing(True)  # timm's own switch
    return model


def count_parameters(params) -> int:
    """Number of elements in an iterable of parameters."""
    return sum(p.numel() for p in params)
