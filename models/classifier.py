"""Phase-2 (and baseline) CLIP classifier: the visual tower, a tuner, and a new linear head.

The head reads the un-projected CLS feature f(x) (official-behaviour.md §1.3, §2.4). It starts
from PyTorch's default Linear init (official) or from zero-shot text features (`head_init: text`,
W = T·Pᵀ so that head(f) = T·(fP)ᵀ, the zero-shot classifier before normalisation).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.peft import CLIPImageEncoder, TuningConfig

ZERO_SHOT_TEMPLATE = "a photo of a {}."


@torch.no_grad()
def zero_shot_text_features(clip_model: nn.Module, tokenizer, class_names: Sequence[str],
                            template: str = ZERO_SHOT_TEMPLATE) -> torch.Tensor:
    """Normalised text features (C, embed_dim) of `template` filled with each class name."""
    device = clip_model.logit_scale.device
    tokens = tokenizer([template.format(name.replace("_", " ")) for name in class_names]).to(device)
    return F.normalize(clip_model.encode_text(tokens).float(), dim=-1)


class CLIPClassifier(nn.Module):
    """f(x) from a (tuned or fully fine-tuned) CLIP visual tower, then Linear(width, C)."""

    def __init__(self, clip_model: nn.Module, num_classes: int, tuning: TuningConfig,
                 head_init: str = "random", class_names: Sequence[str] = (), tokenizer=None) -> None:
        super().__init__()
        visual = clip_model.visual
        dtype = visual.conv1.weight.dtype
        self.image_encoder = CLIPImageEncoder(visual, tuning)
        width = visual.conv1.weight.shape[0]
        self.head = nn.Linear(width, num_classes).to(device=visual.conv1.weight.device, dtype=dtype)
        if head_init == "text":
            if tokenizer is None or len(class_names) != num_classes:
                raise ValueError("head_init: text needs the tokenizer and one class name per class")
            text = zero_shot_text_features(clip_model, tokenizer, class_names)  # (C, embed_dim)
            with torch.no_grad():
                self.head.weight.copy_((text @ visual.proj.float().t()).to(dtype))  # (C, width)
        elif head_init != "random":
            raise ValueError(f"head_init must be 'random' or 'text', got {head_init!r}")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Tuner (or fine-tuned blocks) plus the head."""
        return self.image_encoder.tuner_parameters() + list(self.head.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, C)."""
        dtype = self.head.weight.dtype
        return self.head(self.image_encoder(images.to(dtype)))
