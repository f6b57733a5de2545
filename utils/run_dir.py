"""Run directories: where a run writes, and the rules that protect finished results."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys

from utils.config import REAL_NOISE_DATASETS, Config
from utils.errors import UserError

SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
LOG = "log.txt"
CONFIG = "config.yaml"


class RunExistsError(UserError, RuntimeError):
    """The run directory already holds a finished or interrupted run."""


def noise_tag(cfg: Config) -> str:
    """`sym0.2`-style part of a run path (the official mask file name, with our seed suffix)."""
    return f"{cfg.noise_mode or 'none'}{float(cfg.noise_ratio)}"


def is_real_noise(cfg: Config) -> bool:
    """True for datasets with real label noise: Clothing1M, WebVision, and CIFAR-N (noise_mode real)."""
    return cfg.noise_mode == "real" or cfg.dataset in REAL_NOISE_DATASETS


def run_path(cfg: Config, script: str) -> str:
    """output/{script}/{dataset}/{noise_mode}{noise_ratio}_seed{seed}/ (decisions.md §3).

    Real noise has no noise part: output/{script}/{dataset}/seed{seed}/, with the CIFAR-N label set
    in front when one is chosen explicitly (e.g. cifar10/aggre_label_seed0/).
    """
    if is_real_noise(cfg):
        label_set = f"{cfg.cifar_n_label_key}_" if cfg.noise_mode == "real" and cfg.cifar_n_label_key else ""
        return os.path.join(cfg.output_dir, script, cfg.dataset, f"{label_set}seed{cfg.seed}")
    return os.path.join(cfg.output_dir, script, cfg.dataset, f"{noise_tag(cfg)}_seed{cfg.seed}")


def prepare_run_dir(path: str, resume: bool, overwrite: bool) -> bool:
    """Create or check the run directory; return True when an interrupted run should be resumed."""
    finished = os.path.exists(os.path.join(path, SUMMARY))
    interrupted = os.path.exists(os.path.join(path, CHECKPOINT)) and not finished
    if overwrite:
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.makedirs(path)
        return False
    if finished:
        raise RunExistsError(
            f"a finished run already exists in {path} (see {SUMMARY}); pass --overwrite to replace "
            "it or choose another place with --opts output_dir=...")
    if resume:
        if not interrupted:
            raise RunExistsError(f"--resume given but {path} holds no {CHECKPOINT} to continue from")
        return True
    if interrupted:
        raise RunExistsError(
            f"an interrupted run exists in {path}; pass --resume to continue it or --overwrite "
            "to start again")
    os.makedirs(path, exist_ok=True)
    return False


def setup_logging(run_dir: str) -> logging.Logger:
    """Log to stdout and to <run_dir>/log.txt (appending, so a resumed run keeps its history)."""
    logger = logging.getLogger("deft")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    file_handler = logging.FileHandler(os.path.join(run_dir, LOG), encoding="utf-8")
    file_handler.setFormatter(fmt)
    stream_handler = logging.StreamHandler(sys.stdout)
    stream_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    logger.addHandler(stream_handler)
    logger.propagate = False
    return logger


def read_metrics(run_dir: str) -> list[dict]:
    """The per-epoch records of metrics.jsonl."""
    with open(os.path.join(run_dir, METRICS), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
