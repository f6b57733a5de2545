"""One run and its directory: logging, the checkpointed epoch loop, resume, and what may never be lost.

Guarantees (README, "Failure behaviour"):
- Nothing is written before the run has passed every check it can make: `Experiment` only reads
  the run directory; the directory is claimed when the first epoch starts (`epochs`) or the first
  result is written (`artifact_dir`, `finish`), i.e. after config, data, weights and mask were
  loaded. A run that fails earlier leaves no trace on disk.
- A finished (or interrupted) run replaced with --overwrite survives any failure of its
  replacement: the new run writes into a hidden staging folder beside it, which takes its place
  only when the new run has a checkpoint (or a result) to put there.
- A resumed run gives the result of an uninterrupted one: the checkpoint holds the trainable
  parameters, every buffer (BatchNorm statistics), optimiser, scheduler, loss scaler, the
  per-epoch history and the script's state; epochs reseed their RNGs from (seed, epoch).
- `checkpoint.pt` is read with `torch.load(weights_only=True)`: it holds only tensors, numbers,
  strings, lists and dicts, and a file with any other object is refused, never executed.
- One process at a time writes a run directory (`utils/run_lock.py`): the lock is taken before the
  directory's state is read where the folder's parent exists, else when the directory is claimed
  (and the state is read again then); a second process stops with the holder's name, or waits
  with --continue.
Only rank 0 writes; every rank reads the same checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import sys
import time
import zipfile
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from utils import distributed
from utils.config import Config, read_yaml_file, resume_changes, save_config
from utils.engine import check_precision, peak_memory_mb, resolve_device, seed_everything, trained_precision
from utils.errors import UserError
from utils.io import atomic_torch_save, atomic_write_json, atomic_write_text
from utils.loader import epoch_seed, set_loader_epoch
from utils.run_dir import CHECKPOINT, CONFIG, LOG, METRICS, SUMMARY, RunExistsError, RunState, check_run_dir
from utils.run_lock import RunLock

HISTORY = "config_history.jsonl"  # one line per resume that changed an adjustable key


class CheckpointError(UserError, RuntimeError):
    """checkpoint.pt cannot be read, is not a checkpoint of this run, or holds unsafe objects."""


# ---------------------------------------------------------------- logging
class _Buffer(logging.Handler):
    """Keeps the records logged before the run directory exists, to write them to log.txt later."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_FORMAT = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")


def make_logger(is_main: bool) -> logging.Logger:
    """The 'deft' logger: stdout on rank 0 (warnings only elsewhere), buffered until log.txt exists."""
    logger = logging.getLogger("deft")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    stream = logging.StreamHandler(sys.stdout if is_main else sys.stderr)
    stream.setFormatter(_FORMAT)
    stream.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.addHandler(stream)
    if is_main:
        logger.addHandler(_Buffer())
    logger.propagate = False
    return logger


class _LogFile(logging.FileHandler):
    """log.txt. A failed write (a full disk) is said once on stderr, not as a traceback per record."""

    failed = False

    def handleError(self, record: Optional[logging.LogRecord]) -> None:
        if not self.failed:
            self.failed = True
            print(f"warning: could not write to {self.baseFilename} ({sys.exc_info()[1]}); the log goes on in "
                  "the terminal only", file=sys.stderr)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # its last lines could not be flushed either
            self.handleError(None)
            logging.Handler.close(self)


def _attach_log_file(logger: logging.Logger, path: str) -> None:
    """Log to `path` (appending: a resumed run keeps its history), replaying buffered records."""
    buffered: list[logging.LogRecord] = []
    for handler in list(logger.handlers):
        if isinstance(handler, (_Buffer, logging.FileHandler)):
            buffered += getattr(handler, "records", [])
            logger.removeHandler(handler)
            handler.close()
    file_handler = _LogFile(path, encoding="utf-8")
    file_handler.setFormatter(_FORMAT)
    for record in buffered:
        file_handler.emit(record)
    logger.addHandler(file_handler)


# ---------------------------------------------------------------- checkpoint contents
def training_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train plus every persistent buffer (BatchNorm running statistics).

    The frozen backbone need not be repeated: it is rebuilt from the pretrained weights.
    """
    state = {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
    persistent = set(model.state_dict(keep_vars=True))
    state.update({name: b.detach().cpu().clone() for name, b in model.named_buffers() if name in persistent})
    return state


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint safely (tensors and plain containers only) or raise CheckpointError."""
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); the run cannot be resumed from it. "
                              "Start it again with --overwrite")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds objects other than tensors, numbers, strings, lists and dicts (or is damaged) and was "
            "not loaded: checkpoints are read with torch.load(weights_only=True), and checkpoints of this code "
            "hold nothing else. If you did not make this file, delete it; otherwise start the run again with "
            "--overwrite") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); it may be "
                              "truncated or damaged. Start the run again with --overwrite") from None
    if not isinstance(state, dict) or not {"epoch", "model", "optimizer", "history"} <= set(state):
        raise CheckpointError(f"{path} is not a checkpoint of this code (expected a dict with epoch, model, "
                              "optimizer and history); start the run again with --overwrite")
    return state


def _plain_extra(extra: dict) -> tuple[dict, dict]:
    """Split the script state into plain values and NumPy arrays (stored as tensors)."""
    arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in extra.items() if isinstance(v, np.ndarray)}
    plain = {k: v for k, v in extra.items() if k not in arrays}
    return plain, arrays


# ---------------------------------------------------------------- the run
class Experiment:
    """One run: its directory, logger, device, precision, and the checkpointed epoch loop."""

    def __init__(self, cfg: Config, script: str, run_dir: str, mode: str = "new") -> None:
        """`mode`: "new", "resume", "overwrite" or "continue" (run_dir.run_mode of the command line)."""
        self.cfg = cfg
        self.script = script
        self.run_dir = os.path.normpath(run_dir)
        self.device = resolve_device(cfg.device, cfg.gpuid)
        check_precision(cfg.precision, self.device)
        self.dist = distributed.init_distributed(self.device.type)
        self.is_main = self.dist.rank == 0
        self.log = make_logger(self.is_main)
        self.overwrite = mode == "overwrite"
        self.mode = mode
        self._lock = RunLock(self.run_dir)
        # Where the run's parent folder does not exist yet, the lock waits for the claim: a run that
        # fails its checks leaves nothing on disk.
        self._lock_at_claim = not distributed.broadcast_object(os.path.isdir(os.path.dirname(self._lock.path)))
        if not self._lock_at_claim:
            self._take_lock(recheck=False)
        self.state = check_run_dir(self.run_dir, mode)  # reads only
        self.resuming = mode in ("resume", "continue") and self.state == RunState.INTERRUPTED
        self.config_changes: dict = {}
        if self.resuming:
            saved_config = read_yaml_file(os.path.join(self.run_dir, CONFIG)) or {}
            self.config_changes = resume_changes(saved_config, cfg, os.path.join(self.run_dir, CONFIG))
        self.history: list[dict] = []
        self.precision_note = ""  # what trains in which dtype, once the model is known (`epochs`)
        self.extra: dict = {}  # script state that must survive a resume (e.g. the last selection)
        self.resumes: list[dict] = []  # resumes that changed adjustable keys (from the checkpoint)
        self._write_dir: Optional[str] = None  # set when claimed; a staging folder while replacing
        world = f", world_size: {self.dist.world_size}" if self.dist.world_size > 1 else ""
        self.log.info(f"{script}: run directory {self.run_dir} on {self.device} ({cfg.precision}{world})")
        seed_everything(cfg.seed)

    # ------------------------------------------------------------ the directory
    def _take_lock(self, recheck: bool) -> None:
        """Rank 0 takes the run lock (waiting for it with --continue); every rank gets its error.

        `recheck`: read the directory's state again once locked, since another process may have
        written it between `__init__` and now.
        """
        def lock() -> None:
            self._lock.acquire(wait=self.mode == "continue", on_wait=self.log.info)
            if not recheck:
                return
            state = check_run_dir(self.run_dir, self.mode)
            if state != self.state:
                raise RunExistsError(f"{self.run_dir} was written by another process while this run was being "
                                     f"prepared (it was {self.state}, it is {state} now); run the command again")
        distributed.on_main(lock)

    def _claim(self) -> None:
        """Create the directory (or the staging folder that will replace it), config.yaml and log.txt."""
        if self._write_dir is not None:
            return
        if self._lock_at_claim:
            self._lock_at_claim = False
            self._take_lock(recheck=True)
        self._write_dir = self.run_dir
        if not self.is_main:
            return
        if self.overwrite and self.state != RunState.NEW:
            self._write_dir = _staging_path(self.run_dir)
            shutil.rmtree(self._write_dir, ignore_errors=True)  # a replacement that died earlier
            self.log.info(f"--overwrite: the run in {self.run_dir} stays until this run has saved its first "
                          f"checkpoint; until then it writes to {self._write_dir}")
        os.makedirs(self._write_dir, exist_ok=True)
        _attach_log_file(self.log, os.path.join(self._write_dir, LOG))
        header = f"{self.script}, {time.strftime('%Y-%m-%d %H:%M:%S')}; world_size: {self.dist.world_size}"
        if self.dist.world_size > 1:
            header += f" (torchrun; batch_size {self.cfg.batch_size} is the global batch)"
        if self.precision_note:
            header += "\n" + self.precision_note
        save_config(self.cfg, os.path.join(self._write_dir, CONFIG), header=header)

    def _promote(self) -> None:
        """Move a staging folder into place (the replaced run is deleted only now)."""
        self._claim()
        if not self.is_main or self._write_dir == self.run_dir:
            return
        staging, aside = self._write_dir, _staging_path(self.run_dir, "replaced")
        shutil.rmtree(aside, ignore_errors=True)
        if os.path.isdir(self.run_dir):
            os.rename(self.run_dir, aside)
        os.rename(staging, self.run_dir)
        self._write_dir = self.run_dir
        _attach_log_file(self.log, os.path.join(self.run_dir, LOG))
        shutil.rmtree(aside, ignore_errors=True)
        self.log.info(f"the new run replaced the previous one in {self.run_dir}")

    def artifact_dir(self) -> str:
        """The run directory, claimed, for result files (masks, scores); write them on rank 0 only."""
        self._promote()
        return self.run_dir

    # ------------------------------------------------------------ epochs
    def epochs(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler,
               loader: DataLoader) -> Iterator[int]:
        """Yield the epochs still to run (all, or those after the checkpoint when resuming).

        Before each epoch the RNGs and the loader are seeded from (seed, epoch); after the caller
        has appended that epoch's record with `end_epoch`, the scheduler steps and the checkpoint
        is saved.
        """
        self._model, self._optimizer, self._scheduler, self._scaler = model, optimizer, scheduler, scaler
        self.precision_note = trained_precision(model, self.cfg.precision, self.device)
        self.log.info(self.precision_note)
        first = 1
        if self.resuming:
            first = self._load_checkpoint() + 1
            self.log.info(f"resuming after epoch {first - 1}")
        self._claim()
        if self.config_changes:
            self._record_config_changes(first - 1)
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

    def finish(self, summary: dict) -> None:
        """Write summary.json last: its presence marks the run as finished.

        Adds `world_size` (under torchrun) and `config_changes` (resumes that changed settings) to
        `summary` in place, so the caller returns what was written.
        """
        self._promote()
        if self.dist.world_size > 1:
            summary["world_size"] = self.dist.world_size
        if self.resumes:
            summary["config_changes"] = self.resumes
        if self.precision_note:
            summary["trained_precision"] = self.precision_note
        if self.is_main:
            atomic_write_json(os.path.join(self.run_dir, SUMMARY), summary)
        self.log.info(f"finished: {os.path.join(self.run_dir, SUMMARY)}")
        self._lock.release()

    # ------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, epoch: int) -> None:
        plain_extra, extra_arrays = _plain_extra(self.extra)
        state = {"epoch": epoch, "model": training_state(self._model),
                 "optimizer": self._optimizer.state_dict(), "scheduler": self._scheduler.state_dict(),
                 "scaler": self._scaler.state_dict(), "history": self.history, "extra": plain_extra,
                 "extra_arrays": extra_arrays, "resumes": self.resumes, "world_size": self.dist.world_size}
        if self.is_main:
            atomic_torch_save(os.path.join(self._write_dir, CHECKPOINT), state)
            lines = "".join(json.dumps(record) + "\n" for record in self.history)
            atomic_write_text(os.path.join(self._write_dir, METRICS), lines)
        self._promote()

    def _load_checkpoint(self) -> int:
        path = os.path.join(self.run_dir, CHECKPOINT)
        state = read_checkpoint(path)
        try:
            self._load_model_state(state["model"], path)
            fresh_lrs = [group["lr"] for group in self._optimizer.param_groups]  # this run's config
            self._optimizer.load_state_dict(state["optimizer"])
            self._scheduler.load_state_dict(state["scheduler"])
            self._load_scaler(state["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path} does not fit this run's model or optimiser ({type(err).__name__}: "
                                  f"{err}); start the run again with --overwrite") from None
        self.history = list(state["history"])
        self.extra = dict(state.get("extra", {}))
        self.extra.update({k: v.numpy() for k, v in state.get("extra_arrays", {}).items()})
        self.resumes = list(state.get("resumes", []))
        if "lr" in self.config_changes:
            self._rescale_lr(fresh_lrs)
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            self.log.info(f"resuming a run of world_size {saved_world} with world_size {self.dist.world_size}: "
                          "the global batches are the same")
        return int(state["epoch"])

    def _load_scaler(self, saved: dict) -> None:
        """The loss scaler's state where the saved run and this one both scale (amp on CUDA).

        `device` may change on resume: a run begun on a CPU (no scaler, an empty saved state)
        continues on a GPU with a fresh scaler, and a scaler's state is dropped on a CPU.
        """
        if saved and self._scaler.is_enabled():
            self._scaler.load_state_dict(saved)
        elif saved or self._scaler.is_enabled():
            self.log.info("the loss scaler " + ("starts afresh: the run was saved without one" if not saved else
                                                "is not used on this device: its saved state is dropped"))

    def _load_model_state(self, saved: dict, path: str) -> None:
        missing = training_state(self._model).keys() - saved.keys()
        result = self._model.load_state_dict(saved, strict=False)
        if result.unexpected_keys or missing:
            raise CheckpointError(
                f"{path} does not fit this model: unexpected {sorted(result.unexpected_keys)[:5]}, "
                f"missing {sorted(missing)[:5]}; was it made with other model settings? Start again with --overwrite")

    def _rescale_lr(self, fresh_lrs: list[float]) -> None:
        """A resumed run with a new base lr: scale the schedule's current and base lr of each group."""
        for group, base_lr, fresh in zip(self._optimizer.param_groups, self._scheduler.base_lrs, fresh_lrs):
            # `fresh` is this config's base lr of the group (the backbone's official lr where it replaces cfg.lr)
            factor = fresh / base_lr if base_lr else 1.0
            group["lr"] *= factor
            group["initial_lr"] = fresh
        self._scheduler.base_lrs = [group["initial_lr"] for group in self._optimizer.param_groups]
        self._scheduler._last_lr = [group["lr"] for group in self._optimizer.param_groups]

    def _record_config_changes(self, after_epoch: int) -> None:
        entry = {"resumed_after_epoch": after_epoch, "changes": {k: list(v) for k, v in self.config_changes.items()}}
        self.resumes.append(entry)
        self.log.info(f"resumed with changed settings after epoch {after_epoch}: "
                      + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in self.config_changes.items()))
        if self.is_main:
            path = os.path.join(self._write_dir, HISTORY)
            previous = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
            atomic_write_text(path, previous + json.dumps(entry) + "\n")


def start_epoch_rng(loader: DataLoader, seed: int, epoch: int) -> None:
    """Seed the global RNGs, the loader's order and the dataset's per-epoch draws for `epoch`."""
    value = epoch_seed(seed, epoch)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    set_loader_epoch(loader, epoch)


def _staging_path(run_dir: str, kind: str = "overwrite") -> str:
    """A hidden sibling folder: `.<name>.<kind>` (the collector and the runner skip hidden folders)."""
    parent, name = os.path.split(os.path.normpath(run_dir))
    return os.path.join(parent, f".{name}.{kind}")
