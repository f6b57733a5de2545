"""Pre-train a tiny CLIP contrastively on Fashion-MNIST, the "pretrained weights" of the offline miniature.

    python tools/pretrain_tiny_clip.py [--out output/demo/tiny_clip/fashion_mnist_clip.pt]
    python tools/pretrain_tiny_clip.py --variant shifted      # a miniature's settings and checkpoint path

Uses open_clip's model code (`deft-mini-vit`: 4-layer width-128 ViT, patch 7 at 28 px; 2-layer
width-128 text tower) and open_clip's `ClipLoss`, on the pre-training part of the Fashion-MNIST
training images only (DeFT later sees the disjoint downstream part). Each image is paired with
its class name in one of several caption templates. Seeded (data order, templates, augmentation,
init), though CPU BLAS may sum in a different order from run to run, so two runs can differ in the
last digits; cached: a checkpoint whose settings match is reused. Reports zero-shot test accuracy.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import open_clip  # noqa: E402

from datasets.fashion_mnist import CLASS_NAMES, pretrain_downstream_split, read_fashion_mnist  # noqa: E402
from datasets.transforms import NORMALIZATION  # noqa: E402
from models.clip_loader import load_clip, tokenizer_for  # noqa: E402
from models.prompts import TextEncoder  # noqa: E402
from models.zero_shot import TEMPLATE_SETS, class_captions, zero_shot_classifier, zero_shot_logits  # noqa: E402
from utils.io import atomic_torch_save, atomic_write_json  # noqa: E402

DEFAULT_OUT = ROOT / "output" / "demo" / "tiny_clip" / "fashion_mnist_clip.pt"


@dataclass
class PretrainSettings:
    """Everything that decides the checkpoint (a cached file is reused only if all of it matches)."""

    model: str = "deft-mini-vit"
    data_path: str = "./data/fashion-mnist"
    pretrain_split: int = 30000  # training images reserved for pre-training (the rest is downstream)
    num_images: int = 20000  # how many of them to train on
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    templates: str = "miniature"
    resolution: int = 28
    seed: int = 0
    max_shift: int = 2  # random translation in pixels (augmentation)


def load_split(data_path: str, indices: np.ndarray | None, split: str, resolution: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float (N, 3, R, R) in [0, 1] (resized like the demo's test transform) and labels."""
    images, labels = read_fashion_mnist(data_path, split, download=True)
    if indices is not None:
        images, labels = images[indices], labels[indices]
    resized = [np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BILINEAR)) for img in images]
    tensor = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255.0
    return tensor, torch.from_numpy(labels)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Apply the Fashion-MNIST normalisation the demo configs use."""
    mean, std = NORMALIZATION["fashion_mnist"]
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def augment(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation (black fill) and horizontal flip, batched."""
    batch, _, size, _ = images.shape
    shift = (torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator).float() * 2 / size)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    flip = torch.rand(batch, generator=generator) < 0.5
    moved[flip] = moved[flip].flip(-1)
    return moved


class CaptionBank:
    """All class captions tokenised once; encodes only the distinct captions a batch needs."""

    def __init__(self, clip_model, tokenizer, templates: tuple[str, ...]) -> None:
        self.num_templates = len(templates)
        tokens = tokenizer(class_captions(CLASS_NAMES, templates))  # (T*C, 77), template-major
        self.eot = tokens.argmax(dim=-1)
        self.tokens = tokens[:, : int(self.eot.max()) + 1]  # the causal mask never looks past EOT
        self.token_embedding = clip_model.token_embedding
        self.encoder = TextEncoder(clip_model)

    def features(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """Normalised text features of the given captions, each distinct caption encoded once."""
        unique, inverse = torch.unique(caption_ids, return_inverse=True)
        embedded = self.token_embedding(self.tokens[unique])
        return F.normalize(self.encoder(embedded, self.eot[unique]), dim=-1)[inverse]


@torch.no_grad()
def zero_shot_accuracy(clip_model, tokenizer, images: torch.Tensor, labels: torch.Tensor, templates) -> float:
    """Top-1 zero-shot accuracy (%) with the template ensemble."""
    clip_model.eval()
    classifier = zero_shot_classifier(clip_model, tokenizer, CLASS_NAMES, templates)
    correct = 0
    for start in range(0, len(images), 1000):
        logits = zero_shot_logits(clip_model, classifier, normalize(images[start:start + 1000]))
        correct += int((logits.argmax(dim=1) == labels[start:start + 1000]).sum())
    return 100.0 * correct / len(images)


def pretrain(settings: PretrainSettings, out: Path, log=print) -> dict:
    """Train, evaluate and save; return the metadata written next to the checkpoint."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    pretrain_part, _ = pretrain_downstream_split(60000, settings.pretrain_split)
    subset = np.random.default_rng(settings.seed).permutation(pretrain_part)[: settings.num_images]
    images, labels = load_split(settings.data_path, np.sort(subset), "train", settings.resolution)
    test_images, test_labels = load_split(settings.data_path, None, "test", settings.resolution)

    model = load_clip(settings.model, "none")
    tokenizer = tokenizer_for(settings.model)
    templates = TEMPLATE_SETS[settings.templates]
    bank = CaptionBank(model, tokenizer, templates)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(images) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=total,
                                                    pct_start=0.1, anneal_strategy="cos")
    started = time.time()
    model.train()
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            batch = normalize(augment(images[idx], settings.max_shift, generator))
            template = torch.randint(bank.num_templates, (len(idx),), generator=generator)
            text = bank.features(template * len(CLASS_NAMES) + labels[idx])
            image = F.normalize(model.encode_image(batch), dim=-1)
            loss = loss_fn(image, text, model.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        log(f"pre-training epoch {epoch}/{settings.epochs}: loss {float(loss.detach()):.3f} "
            f"({time.time() - started:.0f} s)")
    accuracy = zero_shot_accuracy(model, tokenizer, test_images, test_labels, templates)
    meta = {"settings": asdict(settings), "zero_shot_test_acc": accuracy, "steps": total,
            "seconds": round(time.time() - started, 1), "checkpoint": str(out)}
    atomic_torch_save(str(out), model.state_dict())
    atomic_write_json(str(out.with_suffix(".json")), meta)
    log(f"zero-shot test accuracy {accuracy:.2f}% -> {out}")
    return meta


def pretrain_cached(settings: PretrainSettings, out: Path, force: bool = False, log=print) -> dict:
    """Reuse `out` when its recorded settings match, else pre-train."""
    meta_path = out.with_suffix(".json")
    if not force and out.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == asdict(settings):
            log(f"reusing pre-trained tiny CLIP {out} (zero-shot test accuracy {meta['zero_shot_test_acc']:.2f}%)")
            return meta
    return pretrain(settings, out, log)


def main(argv: list[str] | None = None) -> None:
    """Pre-train with the defaults, or a miniature variant's settings (tools/miniature_variants.py), or flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=None,
                        help="a miniature variant (in_distribution, shifted): its settings and its YAMLs' checkpoint")
    parser.add_argument("--out", default=None, help=f"checkpoint path (default: the variant's, else {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="pre-train even if a matching checkpoint exists")
    for key, value in asdict(PretrainSettings()).items():  # only the flags given override the base settings
        parser.add_argument(f"--{key}", type=type(value), default=argparse.SUPPRESS, help=f"default {value}")
    args = parser.parse_args(argv)
    given = {key: getattr(args, key) for key in asdict(PretrainSettings()) if hasattr(args, key)}
    settings, out = PretrainSettings(), DEFAULT_OUT
    if args.variant is not None:
        from tools.miniature_variants import get_variant  # here: that module imports this one

        variant = get_variant(args.variant)
        settings, out = variant.settings(), variant.checkpoint()
    settings = replace(settings, **given)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    pretrain_cached(settings, Path(args.out) if args.out else out, force=args.force)


if __name__ == "__main__":
    main()
