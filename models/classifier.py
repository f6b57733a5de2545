"""Phase-2 (and baseline) CLIP classifier: the visual tower, a tuner, and a new linear head.

The head reads the un-projected CLS feature f(x) (HotanLee/DeFT model/CLIP.py:268-270). It starts
from PyTorch's default Linear init (official) or from zero-shot text features (`head_init: text`,
W = T·Pᵀ so that head(f) = T·(fP)ᵀ, the zero-shot classifier before normalisation).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.clip_loader import image_dtype
from models.peft import CLIPImageEncoder, TuningConfig
from models.zero_shot import TEMPLATE_SETS, zero_shot_classifier

class CLIPClassifier(nn.Module):
    """f(x) from a (tuned or fully fine-tuned) CLIP visual tower, then Linear(width, C)."""

    def __init__(self, clip_model: nn.Module, num_classes: int, tuning: TuningConfig,
                 head_init: str = "random", class_names: Sequence[str] = (), tokenizer=None) -> None:
        super().__init__()
        visual = clip_model.visual
        dtype = image_dtype(visual)
        self.image_encoder = CLIPImageEncoder(visual, tuning)
        width = visual.conv1.weight.shape[0]
        self.head = nn.Linear(width, num_classes).to(device=visual.conv1.weight.device, dtype=dtype)
        if head_init == "text":
            if tokenizer is None or len(class_names) != num_classes:
                raise ValueError("head_init: text needs the tokenizer and one class name per class")
            text = zero_shot_classifier(clip_model, tokenizer, class_names, TEMPLATE_SETS["simple"])  # (C, embed_dim)
            with torch.no_grad():
                self.head.weight.copy_((text @ visual.proj.float().t()).to(dtype))  # (C, width)
        elif head_init != "random":
            raise ValueError(f"head_init must be 'random' or 'text', got {head_init!r}")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Tuner (or fine-tuned blocks) plus the head."""
        return self.image_encoder.tuner_parameters() + list(self.head.parameters())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The head's input f(x) (batch, width): what TURN's linear probing pre-extracts."""
        return self.image_encoder(images.to(self.head.weight.dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, C)."""
        dtype = self.head.weight.dtype
        return self.head(self.image_encoder(images.to(dtype)))
