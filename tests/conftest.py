"""Shared fixtures: a tiny open_clip model (random weights) and offline settings."""
from __future__ import annotations

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a pretrained tag must fail at once, not retry
torch.set_num_threads(2)

TINY = "deft-tiny-vit"


@pytest.fixture
def tiny_clip():
    """A tiny open_clip CLIP model with seeded random weights, fp32, CPU, eval mode."""
    from models.clip_loader import load_clip

    torch.manual_seed(0)
    return load_clip(TINY, "none")


@pytest.fixture
def tiny_tokenizer():
    from models.clip_loader import tokenizer_for

    return tokenizer_for(TINY)
