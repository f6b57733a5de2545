"""Zero-shot CLIP classification: prompt-ensemble text classifiers and predictions.

Used by CLIP label-match (a sample is "clean" when the zero-shot prediction equals its given
label, the detection baseline of the paper's Table 1) and by the offline miniature.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.clip_loader import image_dtype

# Prompt sets. `clip_ensemble` is the 7-template subset OpenAI's CLIP notebook selected for ImageNet;
# `miniature` are the captions the offline tiny CLIP is pre-trained with (tools/pretrain_tiny_clip.py).
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "simple": ("a photo of a {}.",),
    "clip_ensemble": ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                      "a {} in a video game.", "art of the {}.", "a photo of the small {}."),
    "miniature": ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a product photo of a {}.",
                  "a black and white photo of a {}."),
    # Co-Reg's annotation prompts (its official default, the 27 "imagenet_templates_small").
    "imagenet_small": ("a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
                       "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
                       "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
                       "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
                       "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
                       "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
                       "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
                       "a photo of a cool {}", "a photo of a small {}"),
}


def class_captions(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every class name (underscores become spaces); template-major order."""
    return [t.format(name.replace("_", " ")) for t in templates for name in class_names]


@torch.no_grad()
def zero_shot_classifier(clip_model: nn.Module, tokenizer: Callable, class_names: Sequence[str],
                         templates: Sequence[str]) -> torch.Tensor:
    """(C, embed_dim) classifier: per class, the normalised mean of its normalised caption features."""
    device = clip_model.logit_scale.device
    tokens = tokenizer(class_captions(class_names, templates)).to(device)
    features = F.normalize(clip_model.encode_text(tokens).float(), dim=-1)  # (T*C, embed_dim)
    features = features.view(len(templates), len(class_names), -1).mean(dim=0)
    return F.normalize(features, dim=-1)


def zero_shot_logits(clip_model: nn.Module, classifier: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(batch, C) scaled cosine similarities between images and the class classifier."""
    image_features = F.normalize(clip_model.encode_image(images.to(image_dtype(clip_model.visual))).float(),
                                 dim=-1)
    return clip_model.logit_scale.exp().float() * image_features @ classifier.t()

