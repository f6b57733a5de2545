"""The one training engine every script uses: device, precision, the epoch loop and evaluation.

A script supplies `step(batch, weights_only) -> StepOutput`: per-sample loss values and weights for
each named term, plus per-sample outputs to keep (decisions such as "selected"). The engine turns
the terms into the loss of the *global* batch,

    loss = sum over terms t of  sum_i w_ti * v_ti / sum_i w_ti   (i over the valid samples of the
                                                                   global batch, on every rank)

so that a selection-weighted mean (L_sim after warm-up, small-loss, GMM's clean CE) is the same in
one process, in N processes (torchrun) and with gradient accumulation (`micro_batch_size`): the
denominators are summed over ranks and micro-batches before any backward. With micro-batches the
engine first calls the step with `weights_only=True` under no_grad to learn the weights (a step
whose weights do not depend on the forward returns them without running the model), then runs the
differentiable pass micro-batch by micro-batch. A term may instead give a `batch_rule` that decides
the weights from the values of the whole global batch (small-loss: keep the smallest losses).
A part of the forward that does not depend on the images (DeFT's text features) can be `shared`:
it is computed and back-propagated once per global batch, not once per micro-batch.

Per-sample outputs are kept by global sample index and summed over ranks at the end of the epoch;
padding added by the sampler never counts, and every sample must be decided exactly once.
The run directory, checkpoints and resume live in `utils/experiment.py`.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import resource
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils import distributed
from utils.config import Config
from utils.loader import batches, dataset_size, make_loader


# ---------------------------------------------------------------- device, precision, seeding
def resolve_device(name: str, gpuid: Optional[int] = None) -> torch.device:
    """`auto` -> CUDA when available (under torchrun: this process's LOCAL_RANK, else `gpuid`), else CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device: auto or cpu")
        if distributed.launched_by_torchrun():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        elif device.index is None:
            device = torch.device("cuda", gpuid or 0)
        torch.cuda.set_device(device)
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


def trained_precision(model: nn.Module, precision: str, device: torch.device) -> str:
    """What actually trains in which precision: dtypes of the trainable tensors and the autocast.

    `precision: fp16` converts only open_clip models; a timm backbone or Co-Reg's student networks
    stay fp32, and this line says so (in log.txt, config.yaml and summary.json).
    """
    counts: dict[str, int] = defaultdict(int)
    for param in model.parameters():
        if param.requires_grad:
            counts[str(param.dtype).replace("torch.", "")] += 1
    tensors = ", ".join(f"{dtype} ({count} tensors)" for dtype, count in sorted(counts.items())) or "none"
    compute = "fp16 autocast" if precision == "amp" and device.type == "cuda" else "no autocast"
    return f"precision {precision} on {device.type}: trainable parameters {tensors}; {compute}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); cudnn deterministic as in the official code."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


# ---------------------------------------------------------------- what a step returns
@dataclass
class LossTerm:
    """One mean of the loss: sum_i w_i * v_i / sum_i w_i over the valid samples of the global batch."""

    values: Optional[torch.Tensor]  # (b,) per-sample values; None only in a weights-only pass
    weights: Optional[torch.Tensor] = None  # (b,) non-negative weights (a 0/1 selection); None: all ones
    batch_rule: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # global-batch values -> weights


@dataclass
class StepOutput:
    """The loss terms of a (micro-)batch and the per-sample outputs to keep by sample index."""

    terms: dict[str, LossTerm]
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (b, ...) tensor


StepFn = Callable[..., StepOutput]  # step(batch, weights_only) or, with `shared`, step(batch, weights_only, shared)


@dataclass
class EpochResult:
    """Mean loss terms of the epoch (`loss`, `loss_<term>`) and per-sample outputs over the dataset.

    `per_sample[name]` has one row per sample of the (base) dataset, in dataset order; besides the
    step's own outputs it holds `weight_<term>` (the weight each sample had in that term) and
    `batch` (the global batch a sample was in). `seen` marks the samples this epoch visited.
    """

    record: dict
    per_sample: dict[str, np.ndarray]
    seen: np.ndarray


# ---------------------------------------------------------------- one epoch
def train_one_epoch(step: StepFn, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, precision: str, device: torch.device, epoch: int,
                    progress: bool = True, micro_batch_size: Optional[int] = None,
                    shared: Optional[Callable[[], Any]] = None) -> EpochResult:
    """One pass over `loader`: per global batch, the loss of `step`'s terms, backward, update.

    `shared` is a part of the forward that does not depend on the images (DeFT: the text features
    of the 2C prompts). It runs once per global batch, whatever the number of micro-batches, and
    `step` receives it as a third argument; its backward also runs once, with the gradient the
    micro-batches accumulated on it.
    """
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    recorder = PerSampleRecorder(dataset_size(loader))
    term_sums: dict[str, float] = defaultdict(float)  # sum over batches of (batch term mean x batch size)
    num_seen = 0
    # disable=None: tqdm draws only on a terminal, so log files stay free of progress lines
    bar = tqdm(batches(loader, device), total=len(loader), desc=f"epoch {epoch}", leave=False,
               disable=None if progress and distributed.is_main() else True, dynamic_ncols=True)
    for batch_idx, batch in enumerate(bar):
        chunks = _chunks(len(batch), micro_batch_size)
        decided: Optional[_Weights] = None
        if len(chunks) > 1:  # learn every weight of the global batch before the first backward
            with torch.no_grad(), autocast(precision, device):
                extra = () if shared is None else (shared(),)
                weights_pass = [step(batch.slice(a, b), True, *extra) for a, b in chunks]
            decided = _decide_weights(_concat_terms([o.terms for o in weights_pass]), batch.valid)

        optimizer.zero_grad(set_to_none=True)
        shared_part = None if shared is None else _SharedForward(shared, precision, device)
        term_means: Optional[torch.Tensor] = None  # this rank's share of each term's batch mean
        outputs = []
        for a, b in chunks:
            with autocast(precision, device):
                extra = () if shared_part is None else (shared_part.leaves,)
                out = step(batch.slice(a, b), False, *extra)
            if decided is None:  # one chunk: decide now, between forward and backward
                decided = _decide_weights(out.terms, batch.valid)
            contributions = torch.stack([
                (decided.weights[name][a:b] * term.values.float()).sum() / decided.denominators[name]
                for name, term in out.terms.items()])
            scaler.scale(contributions.sum()).backward()
            term_means = contributions.detach() if term_means is None else term_means + contributions.detach()
            outputs.append(out)
        if shared_part is not None:
            shared_part.backward()
        # The global batch's loss (each rank holds its share): stop every rank together on NaN/inf.
        term_means = distributed.all_reduce_sum(term_means.to(distributed.collective_device())).cpu()
        check_finite(term_means.sum(), f"epoch {epoch}, batch {batch_idx}")
        distributed.sum_gradients(parameters)
        scaler.step(optimizer)
        scaler.update()

        names = list(outputs[0].terms)
        for name, value in zip(names, term_means.tolist()):
            term_sums[name] += value * decided.num_valid
        num_seen += decided.num_valid
        per_sample = {key: torch.cat([o.per_sample[key] for o in outputs]) for key in outputs[0].per_sample}
        per_sample.update({f"weight_{name}": w for name, w in decided.weights.items()})
        per_sample["batch"] = torch.full((len(batch),), batch_idx)
        recorder.add(batch.indices, batch.valid, per_sample)
        bar.set_postfix(loss=f"{sum(term_sums.values()) / max(num_seen, 1):.3f}")

    record = {"loss": sum(term_sums.values()) / max(num_seen, 1)}
    if len(term_sums) > 1:
        record.update({f"loss_{name}": total / max(num_seen, 1) for name, total in term_sums.items()})
    per_sample, seen = recorder.gather(expected=len(loader.dataset))
    return EpochResult(record, per_sample, seen)


class _SharedForward:
    """A forward part shared by the micro-batches: computed once with its graph; the micro-batches
    see detached leaves, and `backward` pushes the gradient they accumulated through it once."""

    def __init__(self, fn: Callable[[], Any], precision: str, device: torch.device) -> None:
        with autocast(precision, device):
            value = fn()
        self.single = torch.is_tensor(value)
        self.outputs = (value,) if self.single else tuple(value)
        leaves = tuple(t.detach().requires_grad_(t.requires_grad) for t in self.outputs)
        self.leaves = leaves[0] if self.single else leaves
        self._leaves = leaves

    def backward(self) -> None:
        pairs = [(out, leaf.grad) for out, leaf in zip(self.outputs, self._leaves)
                 if out.requires_grad and leaf.grad is not None]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])


def _chunks(size: int, micro_batch_size: Optional[int]) -> list[tuple[int, int]]:
    """(start, stop) of each micro-batch of a batch of `size` samples."""
    step = size if not micro_batch_size or micro_batch_size >= size else micro_batch_size
    return [(start, min(start + step, size)) for start in range(0, max(size, 1), step)]


def _concat_terms(parts: list[dict[str, LossTerm]]) -> dict[str, LossTerm]:
    """The terms of a whole batch from those of its micro-batches (weights-only pass)."""
    merged = {}
    for name, first in parts[0].items():
        terms = [p[name] for p in parts]
        values = None if first.values is None else torch.cat([t.values for t in terms])
        weights = None if first.weights is None else torch.cat([t.weights for t in terms])
        merged[name] = LossTerm(values, weights, first.batch_rule)
    return merged


@dataclass
class _Weights:
    weights: dict[str, torch.Tensor]  # name -> (b,) float weights of this rank's samples, 0 on padding
    denominators: dict[str, torch.Tensor]  # name -> global sum of weights (1 where it is 0: an empty mean is 0)
    num_valid: int  # real samples in the global batch


def _decide_weights(terms: dict[str, LossTerm], valid: torch.Tensor) -> _Weights:
    """Each term's weights on this rank and its global denominator (summed over the ranks)."""
    valid_f = valid.float()
    weights = {}
    for name, term in terms.items():
        if term.batch_rule is not None:
            weights[name] = _batch_rule_weights(term, valid)
        elif term.weights is not None:
            weights[name] = term.weights.detach().float() * valid_f
        else:
            weights[name] = valid_f
    totals = torch.stack([w.sum() for w in weights.values()] + [valid_f.sum()])
    totals = distributed.all_reduce_sum(totals.to(distributed.collective_device())).to(valid.device)
    denominators = {name: torch.where(total > 0, total, torch.ones_like(total))
                    for name, total in zip(weights, totals[:-1])}
    return _Weights(weights, denominators, int(totals[-1].item()))


def _batch_rule_weights(term: LossTerm, valid: torch.Tensor) -> torch.Tensor:
    """Apply `term.batch_rule` to the values of the global batch, in single-process order."""
    device = distributed.collective_device()
    values = distributed.interleave_ranks(term.values.detach().float().to(device)).to(valid.device)
    is_real = distributed.interleave_ranks(valid.to(device)).to(valid.device)
    global_weights = torch.zeros_like(values)
    global_weights[is_real] = term.batch_rule(values[is_real]).float()
    # this rank's samples sit at positions rank, rank + W, ... of the interleaved batch
    return global_weights[distributed.rank()::distributed.world_size()]


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Stop the run with a message on a NaN or infinite loss."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(
            f"non-finite loss ({value}) at {where}; stopped before the update. Every finished epoch is "
            "checkpointed: continue from the last one with a lower learning rate, e.g. --resume --opts "
            "lr=<lower> (recorded in config_history.jsonl), or, if no epoch finished, run again with a lower "
            "lr; precision: fp32 may also help")


class PerSampleRecorder:
    """Per-sample outputs written by dataset index; summed over the ranks at the end of the epoch."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.values: dict[str, torch.Tensor] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.count = torch.zeros(num_samples, dtype=torch.int64)

    def add(self, indices: torch.Tensor, valid: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        keep = valid.cpu()
        idx = indices.cpu()[keep]
        self.count[idx] += 1
        for name, tensor in outputs.items():
            tensor = tensor.detach().cpu()
            if name not in self.values:
                self.values[name] = torch.zeros((self.num_samples, *tensor.shape[1:]), dtype=torch.float64)
                self.dtypes[name] = tensor.dtype
            self.values[name][idx] = tensor[keep].double()

    def gather(self, expected: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Sum over ranks; check that each of the `expected` samples was decided exactly once."""
        device = distributed.collective_device()
        count = distributed.all_reduce_sum(self.count.to(device)).cpu()
        most = int(count.max()) if len(count) else 0
        if most > 1 or int(count.sum()) != expected:
            raise RuntimeError(f"per-sample outputs cover {int((count > 0).sum())} samples with at most {most} "
                               f"decisions each; expected {expected} samples decided once")
        result = {}
        for name, values in self.values.items():
            total = distributed.all_reduce_sum(values.to(device)).cpu()
            result[name] = total.to(self.dtypes[name]).numpy()
        return result, count.numpy() > 0


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, precision: str,
            device: torch.device, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `fn` to every image of an unshuffled loader; (outputs, labels) on the CPU in dataset order.

    Under torchrun each rank scores its shard; the shards are gathered and the padding dropped,
    so every rank returns the outputs of the whole dataset, each sample exactly once.
    """
    outputs, labels = [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not (progress and distributed.is_main()),
                      dynamic_ncols=True):
        images = batch[0].to(device, non_blocking=True)
        with autocast(precision, device):
            outputs.append(fn(images).float().cpu())
        labels.append(batch[1])
    outputs, labels = torch.cat(outputs), torch.cat(labels)
    if distributed.world_size() > 1:
        gather_device = distributed.collective_device()
        num_samples = len(loader.dataset)
        outputs = distributed.interleave_ranks(outputs.to(gather_device))[:num_samples].cpu()
        labels = distributed.interleave_ranks(labels.to(gather_device))[:num_samples].cpu()
    return outputs, labels


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def make_test_loaders(data, batch_size: int, num_workers: int, device: torch.device) -> dict[str, DataLoader]:
    """{'test_acc': the test set, 'test_acc_<name>': each extra test set (WebVision: ImageNet val)}."""
    sets = {"test_acc": data.test, **{f"test_acc_{name}": s for name, s in data.extra_tests.items()}}
    return {key: make_loader(s, batch_size, False, num_workers, device, persistent=True) for key, s in sets.items()}


def evaluate(model: nn.Module, loaders: dict[str, DataLoader], precision: str, device: torch.device,
             forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict[str, float]:
    """Top-1 accuracy (%) of `forward` (default: the model) on every loader, in eval mode."""
    distributed.broadcast_buffers(model)  # rank 0's BatchNorm statistics on every rank, as DDP
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


# ---------------------------------------------------------------- optimisers
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
