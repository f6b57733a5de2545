"""The one training engine every script uses: device, precision, data loading, the epoch loop,
evaluation, checkpoint/resume and the per-epoch metrics log.

A script supplies a `step(batch) -> (loss, stats)` function; `train_one_epoch` runs it over a
loader with autocast, gradient scaling, the non-finite-loss stop and a progress bar.
`Experiment` owns the run directory: it resumes from `checkpoint.pt`, and after each epoch
saves the checkpoint and rewrites `metrics.jsonl` from the history the checkpoint holds, so a
resumed run produces the same files as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import time
from collections import defaultdict
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils.config import Config, save_config
from utils.io import atomic_torch_save, atomic_write_json, atomic_write_text
from utils.losses import check_finite
from utils.run_dir import CHECKPOINT, CONFIG, METRICS, SUMMARY, prepare_run_dir, setup_logging

StepFn = Callable[[list], tuple[torch.Tensor, dict]]


# ---------------------------------------------------------------- device, precision, seeding
def resolve_device(name: str, gpuid: Optional[int] = None) -> torch.device:
    """`auto` -> CUDA (device `gpuid`) when available, else CPU; anything else as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", gpuid or 0)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device: auto or cpu")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """Pure fp16 (the official numerics) needs CUDA: CPU kernels for fp16 training are incomplete."""
    if precision == "fp16" and device.type != "cuda":
        raise RuntimeError("precision: fp16 (official pure fp16) needs a CUDA device; use amp or fp32 on CPU")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """fp16 autocast for `amp` on CUDA; a no-op otherwise (amp on CPU runs in fp32)."""
    if precision == "amp" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for `amp` on CUDA; disabled (a pass-through) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "amp" and device.type == "cuda")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); cudnn deterministic as in the official code."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch's shuffling and augmentation, so a resumed epoch replays exactly."""
    return (seed * 1_000_003 + epoch * 7919) % 2**31


# ---------------------------------------------------------------- data loading
def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int,
                device: torch.device) -> DataLoader:
    """DataLoader with its own generator (seeded per epoch by `Experiment`), drop_last=False."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      pin_memory=device.type == "cuda", drop_last=False,
                      generator=torch.Generator() if shuffle else None)


def to_device(batch: list, device: torch.device) -> list:
    """Move the tensors of a batch to `device` (non-blocking when pinned)."""
    return [item.to(device, non_blocking=True) if torch.is_tensor(item) else item for item in batch]


def start_epoch_rng(loader: DataLoader, seed: int, epoch: int) -> None:
    """Seed data order, augmentation and per-epoch draws (complementary labels) for `epoch`."""
    value = epoch_seed(seed, epoch)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    if loader.generator is not None:
        loader.generator.manual_seed(value)
    dataset = getattr(loader.dataset, "dataset", loader.dataset)  # unwrap a Subset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


# ---------------------------------------------------------------- one epoch
class MeanMeter:
    """Sample-weighted running means of named scalars."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def update(self, values: dict, n: int) -> None:
        for key, value in values.items():
            self.sums[key] += float(value) * n
            self.counts[key] += n

    def means(self) -> dict:
        return {key: self.sums[key] / max(self.counts[key], 1) for key in self.sums}


def train_one_epoch(step: StepFn, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, precision: str, device: torch.device,
                    epoch: int, progress: bool = True) -> dict:
    """Run `step` on every batch with backward and optimiser step; return the mean stats."""
    meter = MeanMeter()
    # disable=None: tqdm draws only on a terminal, so log files stay free of progress lines
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if progress else True, dynamic_ncols=True)
    for batch_idx, batch in enumerate(bar):
        batch = to_device(batch, device)
        with autocast(precision, device):
            loss, stats = step(batch)
        check_finite(loss, f"epoch {epoch}, batch {batch_idx}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        stats = {"loss": float(loss.detach()), **stats}
        meter.update(stats, len(batch[0]))
        bar.set_postfix({k: f"{v:.3f}" for k, v in meter.means().items() if k.startswith("loss")})
    return meter.means()


@torch.no_grad()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, precision: str,
            device: torch.device, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `fn` to every batch's images; return (outputs, labels) on the CPU in loader order."""
    outputs, labels = [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        images = batch[0].to(device, non_blocking=True)
        with autocast(precision, device):
            outputs.append(fn(images).float().cpu())
        labels.append(batch[1])
    return torch.cat(outputs), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def make_test_loaders(data, batch_size: int, num_workers: int, device: torch.device) -> dict[str, DataLoader]:
    """{'test_acc': the test set, 'test_acc_<name>': each extra test set (WebVision: ImageNet val)}."""
    sets = {"test_acc": data.test, **{f"test_acc_{name}": s for name, s in data.extra_tests.items()}}
    return {key: make_loader(s, batch_size, False, num_workers, device) for key, s in sets.items()}


def evaluate(model: nn.Module, loaders: dict[str, DataLoader], precision: str, device: torch.device,
             forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict[str, float]:
    """Top-1 accuracy (%) of `forward` (default: the model) on every loader, in eval mode."""
    model.eval()
    result = {key: accuracy(*predict(forward or model, loader, precision, device)) for key, loader in loaders.items()}
    model.train()
    return result


def accuracy_summary(history: list[dict]) -> dict:
    """Best (max over epochs, as the paper reports) and last value of every test accuracy."""
    summary = {}
    for key in (k for k in history[-1] if k.startswith("test_acc")):
        suffix = key[len("test_acc"):]
        summary[f"best_test_acc{suffix}"] = max(r[key] for r in history)
        summary[f"last_test_acc{suffix}"] = history[-1][key]
    return summary


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- runs, checkpoints, resume
def trainable_state(model: nn.Module) -> dict:
    """State of the parameters that train (the checkpoint need not repeat the frozen backbone)."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


class Experiment:
    """One run: its directory, logger, device, precision, and the checkpointed epoch loop."""

    def __init__(self, cfg: Config, script: str, run_dir: str, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.cfg = cfg
        self.script = script
        self.run_dir = run_dir
        self.resuming = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        self.log = setup_logging(run_dir)
        config_path = os.path.join(run_dir, CONFIG)
        if self.resuming:
            _check_same_config(cfg, config_path)
        save_config(cfg, config_path)
        self.device = resolve_device(cfg.device, cfg.gpuid)
        check_precision(cfg.precision, self.device)
        self.history: list[dict] = []
        self.extra: dict = {}  # script state that must survive a resume (e.g. the last selection)
        self.log.info(f"{script}: run directory {run_dir} on {self.device} ({cfg.precision})")
        seed_everything(cfg.seed)

    def epochs(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler,
               loader: DataLoader) -> Iterator[int]:
        """Yield the epochs still to run (all, or those after the checkpoint when resuming).

        Before each epoch the RNGs are seeded from (seed, epoch); after the caller has appended
        that epoch's record with `end_epoch`, the scheduler steps and the checkpoint is saved.
        """
        self._model, self._optimizer, self._scheduler, self._scaler = model, optimizer, scheduler, scaler
        first = 1
        if self.resuming:
            first = self._load_checkpoint() + 1
            self.log.info(f"resuming after epoch {first - 1}")
        for epoch in range(first, self.cfg.epochs + 1):
            start_epoch_rng(loader, self.cfg.seed, epoch)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self._epoch_start = time.time()
            yield epoch
            if len(self.history) != epoch:
                raise RuntimeError(f"epoch {epoch} ended without end_epoch(record)")
            if self.cfg.lr_schedule == "cosine":
                scheduler.step()  # once per epoch, after testing (official)
            self._save_checkpoint(epoch)

    def end_epoch(self, epoch: int, record: dict) -> None:
        """Add lr, time and memory to `record`, log it and keep it in the history."""
        record = {"epoch": epoch, **record,
                  "lr": self._optimizer.param_groups[0]["lr"],
                  "seconds": round(time.time() - self._epoch_start, 2),
                  "peak_memory_mb": round(peak_memory_mb(self.device), 1)}
        self.history.append(record)
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        self.log.info(shown)

    def _save_checkpoint(self, epoch: int) -> None:
        state = {"epoch": epoch, "model": trainable_state(self._model),
                 "optimizer": self._optimizer.state_dict(), "scheduler": self._scheduler.state_dict(),
                 "scaler": self._scaler.state_dict(), "history": self.history, "extra": self.extra}
        atomic_torch_save(os.path.join(self.run_dir, CHECKPOINT), state)
        lines = "".join(_json_line(record) for record in self.history)
        atomic_write_text(os.path.join(self.run_dir, METRICS), lines)

    def _load_checkpoint(self) -> int:
        state = torch.load(os.path.join(self.run_dir, CHECKPOINT), map_location="cpu", weights_only=False)
        missing = self._model.load_state_dict(state["model"], strict=False)
        if missing.unexpected_keys:
            raise RuntimeError(f"checkpoint does not fit the model: unexpected {missing.unexpected_keys[:5]}")
        self._optimizer.load_state_dict(state["optimizer"])
        self._scheduler.load_state_dict(state["scheduler"])
        self._scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.extra = dict(state["extra"])
        return int(state["epoch"])

    def finish(self, summary: dict) -> None:
        """Write summary.json last: its presence marks the run as finished."""
        atomic_write_json(os.path.join(self.run_dir, SUMMARY), summary)
        self.log.info(f"finished: {os.path.join(self.run_dir, SUMMARY)}")


def _check_same_config(cfg: Config, path: str) -> None:
    """A resumed run must continue with the configuration it started with."""
    with open(path, encoding="utf-8") as handle:
        saved = yaml.safe_load(handle)
    changed = {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if saved.get(k) != v}
    if changed:
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise RuntimeError(f"--resume with a different configuration than {path} ({details}); "
                           "resume with the same flags or start again with --overwrite")


def _json_line(record: dict) -> str:
    return json.dumps(record) + "\n"


def make_optimizer(groups: list[list[nn.Parameter]], name: str, lr: float, weight_decay: float,
                   momentum: float = 0.0) -> torch.optim.Optimizer:
    """`sgd` (with `momentum`) or `adamw` (PyTorch's default betas and eps), one group per list."""
    params = [{"params": g} for g in groups if g]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config):
    """CosineAnnealingLR(T_max=epochs, eta_min=0), stepped once per epoch (constant: never stepped)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=0.0)
