"""DeFT's dual prompt learner and the frozen CLIP text encoder that reads it.

Each polarity has `n_ctx` context vectors shared by all classes (CoOp, class-shared), drawn from
N(0, 0.02²); the class name follows ("end"), sits in the middle, or comes first
(HotanLee/DeFT model/text_encoder.py:50-53, :94-148). Positive and negative prompts of all C classes are encoded in one
batch of 2C sequences, cut after the longest real prompt: under the causal mask the tokens up to
the end-of-text token never see the padding, so the result equals the 77-token pass.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


class DualPromptLearner(nn.Module):
    """Learnable positive and negative contexts; returns the 2C prompt embeddings."""

    def __init__(self, class_names: Sequence[str], n_ctx: int, token_embedding: nn.Embedding,
                 tokenizer: Callable, dtype: torch.dtype, class_token_position: str = "end") -> None:
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"CLASS_TOKEN_POSITION must be one of {CLASS_TOKEN_POSITIONS}, "
                             f"got {class_token_position!r}")
        names = [name.replace("_", " ") for name in class_names]
        width = token_embedding.weight.shape[1]
        self.n_ctx = n_ctx
        self.class_token_position = class_token_position
        self.pos_ctx = nn.Parameter(torch.empty(n_ctx, width, dtype=dtype).normal_(std=0.02))
        self.neg_ctx = nn.Parameter(torch.empty(n_ctx, width, dtype=dtype).normal_(std=0.02))

        # "P P ... P name." : each placeholder is one BPE token, later replaced by a context vector.
        prompts = [" ".join(["P"] * n_ctx) + f" {name}." for name in names]
        token_ids = tokenizer(prompts)  # (C, context_length)
        device = token_embedding.weight.device
        with torch.no_grad():
            embedded = token_embedding(token_ids.to(device)).to(dtype)  # (C, context_length, width)
        # The negative prompts share these buffers: "N" and "P" are both single tokens, so every
        # other position (start token, name, ".", end token, padding) is the same.
        self.register_buffer("token_prefix", embedded[:, :1], persistent=False)
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx:], persistent=False)
        self.register_buffer("token_ids", token_ids, persistent=False)
        inner = getattr(tokenizer, "tokenizer", tokenizer)  # open_clip's SimpleTokenizer has .encode
        self.name_lens = [len(inner.encode(name)) for name in names]
        # Everything after the end-of-text token is padding the causal mask hides from it.
        self.seq_len = int(token_ids.argmax(dim=-1).max()) + 1

    @property
    def num_classes(self) -> int:
        return self.token_prefix.shape[0]

    def eot_positions(self) -> torch.Tensor:
        """Index of the end-of-text token (the largest id) of each of the 2C prompts."""
        eot = self.token_ids.argmax(dim=-1)
        return torch.cat([eot, eot])

    def _assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """(C, context_length, width) prompt embeddings with `ctx` at the configured position."""
        num_classes = self.num_classes
        ctx = ctx.unsqueeze(0).expand(num_classes, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.class_token_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        half = self.n_ctx // 2
        rows = []
        for i, name_len in enumerate(self.name_lens):
            name, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
            if self.class_token_position == "middle":
                parts = [prefix[i:i + 1], ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], rest]
            else:  # front
                parts = [prefix[i:i + 1], name, ctx[i:i + 1], rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)

    def forward(self, truncate: bool = True) -> torch.Tensor:
        """(2C, L, width): positive prompts of all classes, then negative prompts; L = seq_len if truncated."""
        prompts = torch.cat([self._assemble(self.pos_ctx), self._assemble(self.neg_ctx)], dim=0)
        return prompts[:, :self.seq_len] if truncate else prompts


class TextEncoder(nn.Module):
    """CLIP's text transformer applied to prompt embeddings (frozen; gradients reach the prompts)."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.positional_embedding = clip_model.positional_embedding
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)

    def forward(self, prompts: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """prompts (N, L, width) -> text features (N, embed_dim), not normalised."""
        length = prompts.shape[1]
        x = prompts + self.positional_embedding[:length].to(prompts.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_positions]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection
