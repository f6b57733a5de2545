"""Run directories: where a run writes, and the rules that protect finished results."""
from __future__ import annotations

import json
import os

from utils.config import REAL_NOISE_DATASETS, Config
from utils.errors import UserError

SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
LOG = "log.txt"
CONFIG = "config.yaml"


class RunExistsError(UserError, RuntimeError):
    """The run directory already holds a finished or interrupted run."""


class RunFinished(Exception):
    """--continue on a finished run: there is nothing to do (the command line exits with 0)."""


# How a script treats an existing run directory (the --resume / --overwrite / --continue flags).
MODES = ("new", "resume", "overwrite", "continue")


def run_mode(args) -> str:
    """The mode the command-line flags ask for."""
    if getattr(args, "continue_run", False):
        return "continue"
    return "resume" if args.resume else "overwrite" if args.overwrite else "new"


def noise_tag(cfg: Config) -> str:
    """`sym0.2`-style part of a run path (the official mask file name, with our seed suffix)."""
    return f"{cfg.noise_mode or 'none'}{float(cfg.noise_ratio)}"


def is_real_noise(cfg: Config) -> bool:
    """True for datasets with real label noise: Clothing1M, WebVision, and CIFAR-N (noise_mode real)."""
    return cfg.noise_mode == "real" or cfg.dataset in REAL_NOISE_DATASETS


def run_path(cfg: Config, name: str) -> str:
    """output/{name}/{dataset}/{noise_mode}{noise_ratio}_seed{seed}/, `name` from utils/methods.py.

    Real noise has no noise part: output/{name}/{dataset}/seed{seed}/, with the CIFAR-N label set
    in front when one is chosen explicitly (e.g. cifar10/aggre_label_seed0/).
    """
    if is_real_noise(cfg):
        label_set = f"{cfg.cifar_n_label_key}_" if cfg.noise_mode == "real" and cfg.cifar_n_label_key else ""
        return os.path.join(cfg.output_dir, name, cfg.dataset, f"{label_set}seed{cfg.seed}")
    return os.path.join(cfg.output_dir, name, cfg.dataset, f"{noise_tag(cfg)}_seed{cfg.seed}")


class RunState:
    """What a run directory holds: nothing, a stub, an interrupted run, or a finished run."""

    NEW = "new"  # no directory
    STUB = "stub"  # a directory without checkpoint or summary: the run stopped before its first epoch ended
    INTERRUPTED = "interrupted"  # checkpoint.pt but no summary.json: --resume continues it
    FINISHED = "finished"  # summary.json: the run is complete


def run_state(path: str) -> str:
    """The RunState of `path` (reads nothing but the directory listing)."""
    if not os.path.isdir(path):
        return RunState.NEW
    if os.path.exists(os.path.join(path, SUMMARY)):
        return RunState.FINISHED
    if os.path.exists(os.path.join(path, CHECKPOINT)):
        return RunState.INTERRUPTED
    return RunState.STUB


def check_run_dir(path: str, mode: str = "new") -> str:
    """Apply the rules that protect results for a run started in `mode`; return the RunState. Writes nothing.

    A finished run is replaced only with --overwrite, an interrupted one continues only with
    --resume (or is replaced with --overwrite); a stub (a run that failed before its first
    checkpoint: config.yaml and log.txt with the error) is not a run and is simply reused.
    --continue resumes an interrupted run, starts a new one, and stops (RunFinished) at a finished one.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    state = run_state(path)
    if mode == "overwrite":
        return state
    if state == RunState.FINISHED:
        if mode == "continue":
            raise RunFinished(f"nothing to do: {path} holds a finished run ({SUMMARY})")
        raise RunExistsError(
            f"a finished run already exists in {path} (see {SUMMARY}); pass --overwrite to replace "
            "it or choose another place with --opts output_dir=...")
    if mode == "resume" and state != RunState.INTERRUPTED:
        why = ("it does not exist" if state == RunState.NEW else
               f"the run stopped before its first epoch ended (see {os.path.join(path, LOG)}); "
               "run the same command without --resume to start it again")
        raise RunExistsError(f"--resume given but {path} holds no {CHECKPOINT} to continue from: {why}")
    if state == RunState.INTERRUPTED and mode == "new":
        raise RunExistsError(
            f"an interrupted run exists in {path}; pass --resume to continue it or --overwrite "
            "to start again")
    return state


def read_metrics(run_dir: str) -> list[dict]:
    """The per-epoch records of metrics.jsonl."""
    with open(os.path.join(run_dir, METRICS), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
