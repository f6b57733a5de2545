"""The DeFT phase-1 model: a PEFT-tuned CLIP image encoder against dual (positive/negative) prompts.

pos_logits = s·z·t+ᵀ and neg_logits = s·sg(z)·t-ᵀ (HotanLee/DeFT model/CLIP.py:262-263),
with z the normalised projected image feature and s = exp(logit_scale), frozen.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.clip_loader import image_dtype
from models.peft import CLIPImageEncoder, TuningConfig
from models.prompts import DualPromptLearner, TextEncoder


class DeFTModel(nn.Module):
    """Image encoder with a tuner, dual prompt learner and frozen text encoder."""

    def __init__(self, clip_model: nn.Module, class_names: Sequence[str], tokenizer, tuning: TuningConfig,
                 n_ctx: int = 16, class_token_position: str = "end") -> None:
        super().__init__()
        dtype = image_dtype(clip_model.visual)
        self.image_encoder = CLIPImageEncoder(clip_model.visual, tuning)
        self.prompt_learner = DualPromptLearner(class_names, n_ctx, clip_model.token_embedding, tokenizer,
                                                dtype, class_token_position)
        self.text_encoder = TextEncoder(clip_model)  # token_embedding is not kept: prompts are built once
        self.register_buffer("logit_scale", clip_model.logit_scale.detach().exp().float(), persistent=False)
        for param in self.text_encoder.parameters():
            param.requires_grad_(False)

    def trainable_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The two SGD parameter groups of the official phase 1: [tuner], [prompt contexts]."""
        return self.image_encoder.tuner_parameters(), [self.prompt_learner.pos_ctx, self.prompt_learner.neg_ctx]

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised positive and negative text features, each (C, embed_dim), from one 2C batch."""
        prompts = self.prompt_learner()
        features = self.text_encoder(prompts, self.prompt_learner.eot_positions())
        features = F.normalize(features.float(), dim=-1)
        num_classes = self.prompt_learner.num_classes
        return features[:num_classes], features[num_classes:]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised projected image features z, (batch, embed_dim), fp32."""
        features = self.image_encoder.project(self.image_encoder(images.to(image_dtype(self.image_encoder.visual))))
        return F.normalize(features.float(), dim=-1)

    def forward(self, images: torch.Tensor, text_features: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pos_logits, neg_logits), each (batch, C); pass cached `text_features` at evaluation."""
        pos_text, neg_text = text_features if text_features is not None else self.text_features()
        z = self.image_features(images)
        pos_logits = self.logit_scale * z @ pos_text.t()
        neg_logits = self.logit_scale * z.detach() @ neg_text.t()  # L_dp must not move the image side
        return pos_logits, neg_logits
