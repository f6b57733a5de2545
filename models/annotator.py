"""CLIP as an annotator (Co-Reg): per-template zero-shot predictions and their cache.

Each prompt template is filled with every class name and encoded by the text tower; an image's
distribution under template t is softmax(s · z · t_cᵀ) over the classes (Figure 1 of the paper).
What is kept per image: the top-1 label of every template (T, N) and the template-averaged
distribution (N, C), from which `lnl.coreg.candidate_sets` builds the candidate sets, plus the
averaged distribution on the test images (the annotator's own test accuracy). Annotating is the
expensive part (one image pass, T·C captions), so it is cached on disk with what it depends on.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.zero_shot import class_captions
from utils import distributed
from utils.errors import UserError
from utils.io import atomic_torch_save, atomic_write_json

CACHE_VERSION = 1


class AnnotationCacheError(UserError, ValueError):
    """An annotation cache file is damaged or belongs to other settings."""


@dataclass
class Annotation:
    """CLIP's annotation of the training images (and its predictions on the test images)."""

    template_top1: torch.Tensor  # (T, N) int64: each template's predicted label
    mean_probs: torch.Tensor  # (N, C) float32: the template-averaged distribution
    test_mean_probs: torch.Tensor  # (N_test, C) float32
    metadata: dict


@torch.no_grad()

def template_probabilities(image_features: torch.Tensor, text_features: torch.Tensor,
                           logit_scale: float) -> torch.Tensor:
    """(N, D) image and (T, C, D) text features (both normalised) -> (T, N, C) per-template softmax."""
    logits = logit_scale * torch.einsum("nd,tcd->tnc", image_features.float(), text_features.float())
    return logits.softmax(dim=-1)

def template_text_features(clip_model: nn.Module, tokenizer: Callable, class_names: Sequence[str],
                           templates: Sequence[str]) -> torch.Tensor:
    """(T, C, D) normalised text features, one row of classes per template."""
    device = clip_model.logit_scale.device
    tokens = tokenizer(class_captions(class_names, templates)).to(device)  # template-major
    features = F.normalize(clip_model.encode_text(tokens).float(), dim=-1)
    return features.view(len(templates), len(class_names), -1)


@torch.no_grad()
def annotate_images(text_features: torch.Tensor, image_features: torch.Tensor, logit_scale: float,
                    chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(each template's top-1 (T, N), the mean distribution (N, C)) from normalised features.

    Images are taken `chunk` at a time: all T·N·C probabilities of CIFAR-100 at once are 540 MB.
    """
    top1, mean = [], []
    for start in range(0, len(image_features), chunk):
        probs = template_probabilities(image_features[start:start + chunk], text_features, logit_scale)  # (T, n, C)
        top1.append(probs.argmax(dim=-1).cpu())
        mean.append(probs.mean(dim=0).cpu())
    return torch.cat(top1, dim=1), torch.cat(mean)


def cache_path(cache_dir: str, metadata: dict) -> str:
    """<cache_dir>/<dataset>_<hash of the metadata>.pt: one file per annotation setting."""
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{metadata['dataset']}_{digest}.pt")


def load_or_annotate(cache_dir: str, metadata: dict, compute: Callable[[], Annotation],
                     log: Callable[[str], None] = print) -> tuple[Annotation, str, bool]:
    """The cached annotation for `metadata`, or a fresh one written to the cache (rank 0).

    Returns (annotation, cache file, whether the cache was reused). A file whose metadata differs
    from `metadata` (a hash collision or a hand-copied file) is refused, never silently used.
    """
    metadata = {"cache_version": CACHE_VERSION, **metadata}
    path = cache_path(cache_dir, metadata)
    if os.path.isfile(path):
        annotation = _read(path, metadata)
        log(f"CLIP annotation reused from {path}")
        return annotation, path, True
    annotation = compute()
    annotation.metadata = metadata
    if distributed.is_main():
        atomic_torch_save(path, {"metadata": metadata, "template_top1": annotation.template_top1.cpu(),
                                 "mean_probs": annotation.mean_probs.cpu(),
                                 "test_mean_probs": annotation.test_mean_probs.cpu()})
        atomic_write_json(path[:-3] + ".json", metadata)  # readable beside the tensors
    log(f"CLIP annotation cached in {path}")
    return annotation, path, False


def _read(path: str, metadata: dict) -> Annotation:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, damaged or not a tensor file
        raise AnnotationCacheError(f"the annotation cache {path} cannot be read ({type(err).__name__}: {err}); "
                                   "delete it and run again to annotate afresh") from None
    if not isinstance(state, dict) or state.get("metadata") != metadata:
        raise AnnotationCacheError(f"the annotation cache {path} was made with other settings than this run's "
                                   f"({json.dumps(metadata, sort_keys=True)[:300]}...); delete it and run again")
    return Annotation(state["template_top1"].long(), state["mean_probs"].float(), state["test_mean_probs"].float(),
                      metadata)


def weights_fingerprint(pretrained: Optional[str]) -> Optional[dict]:
    """What identifies a local weight file (size and modification time); a tag stands for itself."""
    if pretrained and os.path.isfile(pretrained):
        stat = os.stat(pretrained)
        return {"file": os.path.abspath(pretrained), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return None
