"""Robust Similarity's prompt matrix on a frozen CLIP: m learnable prompt blocks for every class.

Block b has its own `n_ctx` context vectors (CoOp; shared by the classes, or one set per class
with `ctx_per_class`), drawn from N(0, 0.02²), followed by the class name: "[ctx_b] name.".
The m·C prompts go through CLIP's frozen text tower in one batch; each block b is a classifier
logits_b = s · z · t_bᵀ over the frozen, normalised image feature z (Robust Similarity,
"Prompt Similarities By Matrix Learners", steps 1-2). Only the contexts train.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.clip_loader import image_dtype
from models.prompts import TextEncoder


class PromptMatrix(nn.Module):
    """Contexts of m blocks, (m, C or 1, n_ctx, width); returns the (m·C, L, width) prompt embeddings."""

    def __init__(self, class_names: Sequence[str], blocks: int, n_ctx: int, token_embedding: nn.Embedding,
                 tokenizer: Callable, dtype: torch.dtype, ctx_per_class: bool = False) -> None:
        super().__init__()
        if blocks < 1 or n_ctx < 1:
            raise ValueError(f"a prompt matrix needs at least one block and one context token, got {blocks}, {n_ctx}")
        names = [name.replace("_", " ") for name in class_names]
        width = token_embedding.weight.shape[1]
        self.blocks = blocks
        self.n_ctx = n_ctx
        rows = len(names) if ctx_per_class else 1
        self.ctx = nn.Parameter(torch.empty(blocks, rows, n_ctx, width, dtype=dtype).normal_(std=0.02))
        # "P P ... P name." : each placeholder is one BPE token, replaced by a context vector.
        token_ids = tokenizer([" ".join(["P"] * n_ctx) + f" {name}." for name in names])  # (C, context_length)
        device = token_embedding.weight.device
        with torch.no_grad():
            embedded = token_embedding(token_ids.to(device)).to(dtype)  # (C, context_length, width)
        self.register_buffer("token_prefix", embedded[:, :1], persistent=False)  # start token
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx:], persistent=False)  # name, ".", end, padding
        self.register_buffer("token_ids", token_ids, persistent=False)
        # the causal mask hides everything after the end-of-text token (the largest id) from it
        self.seq_len = int(token_ids.argmax(dim=-1).max()) + 1

    @property
    def num_classes(self) -> int:
        return self.token_prefix.shape[0]

    def eot_positions(self) -> torch.Tensor:
        """Index of the end-of-text token of each of the m·C prompts (block-major order)."""
        return self.token_ids.argmax(dim=-1).repeat(self.blocks)

    def forward(self) -> torch.Tensor:
        """(m·C, seq_len, width): block 0's prompts of all classes, then block 1's, ..."""
        classes = self.num_classes
        ctx = self.ctx.expand(-1, classes, -1, -1)  # (m, C, n_ctx, width)
        prefix = self.token_prefix.unsqueeze(0).expand(self.blocks, -1, -1, -1)
        suffix = self.token_suffix.unsqueeze(0).expand(self.blocks, -1, -1, -1)
        prompts = torch.cat([prefix, ctx, suffix], dim=2)  # (m, C, context_length, width)
        return prompts.reshape(self.blocks * classes, *prompts.shape[2:])[:, :self.seq_len]


class RobustSimilarityModel(nn.Module):
    """Frozen CLIP image and text towers with a prompt matrix; forward gives (batch, m, C) logits."""

    def __init__(self, clip_model: nn.Module, class_names: Sequence[str], tokenizer: Callable, blocks: int,
                 n_ctx: int = 16, ctx_per_class: bool = False) -> None:
        super().__init__()
        self.visual = clip_model.visual
        dtype = image_dtype(self.visual)
        self.prompt_matrix = PromptMatrix(class_names, blocks, n_ctx, clip_model.token_embedding, tokenizer, dtype,
                                          ctx_per_class)
        self.text_encoder = TextEncoder(clip_model)
        self.register_buffer("logit_scale", clip_model.logit_scale.detach().exp().float(), persistent=False)
        for module in (self.visual, self.text_encoder):
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "RobustSimilarityModel":
        """Only the prompts train: the frozen image tower stays in eval mode (BatchNorm of ResNet CLIPs)."""
        super().train(mode)
        self.visual.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The contexts of the m blocks."""
        return [self.prompt_matrix.ctx]

    def text_features(self) -> torch.Tensor:
        """Normalised text features of every block and class, (m, C, embed_dim), fp32."""
        features = self.text_encoder(self.prompt_matrix(), self.prompt_matrix.eot_positions())
        features = F.normalize(features.float(), dim=-1)
        return features.view(self.prompt_matrix.blocks, self.prompt_matrix.num_classes, -1)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised frozen image features z, (batch, embed_dim), fp32."""
        return F.normalize(self.visual(images.to(image_dtype(self.visual))).float(), dim=-1)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(batch, m, C) = s · z · t_bᵀ for every block b."""
        return self.logit_scale * torch.einsum("nd,mcd->nmc", image_features.float(), text_features)

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Block logits (batch, m, C); pass cached `text_features` at evaluation."""
        text_features = self.text_features() if text_features is None else text_features
        return self.logits(self.image_features(images), text_features)
