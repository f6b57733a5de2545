"""Multi-process training under `torchrun --nproc_per_node N`: the process group and exchanges.

Every script calls `init_distributed` through `Experiment`; without torchrun (no WORLD_SIZE in the
environment) nothing is initialised and every helper here is the single-process identity, so the
same code runs on one CPU, one GPU or N GPUs. Backend: NCCL on CUDA, gloo on CPU. Only rank 0
writes files (`is_main`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Who this process is: its rank, the number of processes, and its local rank on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE > 1 for this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (idempotent); single process: DistInfo()."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if not launched_by_torchrun():
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    # A long timeout: rank 0 may spend minutes writing a noise cache while the others wait.
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    """Leave the process group (end of a script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files and logs (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world_size() > 1:
        dist.barrier()


def collective_device() -> torch.device:
    """Where tensors for collectives live: the current CUDA device under NCCL, else the CPU."""
    if world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the ranks, in place; returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Stack every rank's `tensor` (same shape on all ranks): (world_size, *shape)."""
    if world_size() == 1:
        return tensor.unsqueeze(0)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def interleave_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Rank shards -> sample order: rank r's j-th element holds position r + world_size * j.

    This is how `EpochSampler` (like DistributedSampler) deals positions out to the ranks, so
    gathering and interleaving restores the single-process order of a batch or a dataset.
    """
    as_bytes = tensor.dtype == torch.bool  # gather bools as uint8 (not every backend reduces bool)
    gathered = all_gather_rows(tensor.to(torch.uint8) if as_bytes else tensor)  # (world, n, ...)
    result = gathered.transpose(0, 1).reshape(-1, *tensor.shape[1:])
    return result.bool() if as_bytes else result


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s Python object on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result, or its error, to every rank.

    An error on rank 0 (e.g. a run directory that may not be replaced) is raised on every rank
    with the same type and message, so the whole job stops with it instead of hanging in the
    next collective.
    """
    if world_size() == 1:
        return fn()
    outcome: tuple[Optional[T], Optional[BaseException]] = (None, None)
    if is_main():
        try:
            outcome = (fn(), None)
        except Exception as err:  # handed to the other ranks, then raised here too
            outcome = (None, err)
    result, error = broadcast_object(outcome if is_main() else None)
    if error is not None:
        raise error
    return result


def sum_gradients(parameters: list[torch.nn.Parameter], bucket_bytes: int = 25 * 2**20) -> None:
    """Sum the gradients of `parameters` over the ranks, in buckets of about `bucket_bytes`.

    Each rank's loss is already normalised by the global denominators, so the sum (not the mean)
    is the gradient of the single-process loss of the same global batch.
    """
    if world_size() == 1:
        return
    # Every rank must reduce the same tensors: a parameter that got a gradient on some rank only
    # gets a zero gradient on the others (None would make the optimiser skip it there).
    has_grad = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32)
    has_grad = all_reduce_sum(has_grad.to(collective_device())).cpu()
    for p, flag in zip(parameters, has_grad.tolist()):
        if flag and p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in parameters if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads + [None]:
        if grad is not None:
            bucket.append(grad)
            size += grad.numel() * grad.element_size()
        if bucket and (grad is None or size >= bucket_bytes):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm running statistics, as DDP does before each forward.

    Ranks normalise their own batches in training; evaluation (sharded over the ranks) and the
    checkpoint then use one set of statistics.
    """
    if world_size() == 1:
        return
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._NormBase) and layer.track_running_stats:
            for buffer in (layer.running_mean, layer.running_var, layer.num_batches_tracked):
                if buffer is not None:
                    dist.broadcast(buffer.data, src=0)
