"""Experiment configuration: YAML -> typed schema with defaults -> CLI overrides -> saved copy.

Every key has a type, a default and (where it matters) an allowed range or set of choices.
Unknown keys fail with the closest valid key; `5e-4` written in YAML (a string for PyYAML)
is coerced to a number. Defaults reproduce the official code (see README, "Differences").
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import yaml

from utils.errors import UserError


# Datasets whose labels carry real noise (no synthetic noise flags; CIFAR-N is noise_mode: real).
REAL_NOISE_DATASETS = ("clothing1m", "webvision")
# Synthetic noise modes (datasets/noise.py makes them) and the official phase-2 timm backbones
# (models/timm_backbones.py): here, so the grid can check them without importing torch.
NOISE_MODES = ("none", "sym", "asym", "str", "idn", "asym_cifar10", "asym_cifar100")
TIMM_ALIASES = ("vit", "resnet", "convnext", "mae")


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid."""


# main_baseline.py --lnl_methods: the official four, GCE and CLIP label-match (TURN: main_turn.py).
LNL_METHODS = ("CE", "GMM", "ELR", "SCE", "GCE", "LabelMatch")


def _choice(*values: str) -> dict:
    return {"choices": values}


def _range(low: float | None = None, high: float | None = None) -> dict:
    return {"range": (low, high)}


@dataclass
class Config:
    """All keys a YAML file or `--opts` may set. Field order groups keys by topic."""

    # ---- data ----
    dataset: str = ""
    data_path: str = ""
    num_class: int = field(default=10, metadata=_range(2))
    class_names: list = field(default_factory=list)
    resolution: int = field(default=224, metadata=_range(8))
    download: bool = True
    normalize: str = field(default="dataset", metadata=_choice("dataset", "clip", "backbone"))
    num_workers: int = field(default=8, metadata=_range(0))
    pretrain_split: int = field(default=30000, metadata=_range(0))  # fashion_mnist: images kept for CLIP pre-training
    max_train_samples: Optional[int] = field(default=None, metadata=_range(1))  # fashion_mnist: cap on the downstream training set (seeded by `seed`)
    max_test_samples: Optional[int] = field(default=None, metadata=_range(1))  # fashion_mnist: a fixed subset of the test set (the same for every seed)
    cifar_n_label_file: Optional[str] = None  # noise_mode real on CIFAR: None = <data_path>/CIFAR-1x_human.pt
    cifar_n_label_key: Optional[str] = None  # None: official (noisy_label for CIFAR-100N, worse_label for CIFAR-10N)
    clothing1m_num_samples: Optional[int] = field(default=None, metadata=_range(1))  # None: 1000 x batch_size
    subsample_seed: Optional[int] = None  # seed of the Clothing1M subsample draw; None: seed
    subsample_file: Optional[str] = None  # clean_mask.json (or JSON id list) fixing the training subsample
    imagenet_val_path: Optional[str] = None  # webvision: None = <data_path>/imagenet/val; '' = no ImageNet test
    # ---- the offline miniature's downstream rendering (fashion_mnist only; datasets/rendering.py) ----
    # The shifted miniature draws the downstream images (training and test) unlike the tiny CLIP's
    # pre-training images; the defaults leave them as they are (the in-distribution miniature).
    render_size: Optional[int] = field(default=None, metadata=_range(1))  # area-average to this many px a side, up-sample back; None: native
    render_floor: int = field(default=0, metadata=_range(0, 255))  # intensities 0..255 onto floor..255 (grey background); 0: as drawn
    # ---- noise ----
    noise_mode: str = ""
    noise_ratio: float = field(default=0.0, metadata=_range(0.0, 1.0))
    noise_seed: Optional[int] = None  # None: official (training seed for sym/asym/str, 1 for idn)
    noise_cache_dir: Optional[str] = None  # None: <data_path>/noise_file
    sym_exclude_true: bool = False
    str_flip: Optional[str] = field(default=None, metadata=_choice("random", "cyclic"))  # None: dataset's official
    idn_image_size: int = field(default=64, metadata=_range(1))  # idn on file datasets: pixels resized to this
    # ---- model ----
    model: str = "clip"
    backbone: str = "ViT-B/16"
    pretrained: Optional[str] = None  # tag or checkpoint path; None: the official OpenAI weights
    precision: str = field(default="amp", metadata=_choice("amp", "fp32", "fp16"))
    finetune: bool = False
    finetune_scope: str = field(default="blocks", metadata=_choice("blocks", "all"))
    bias_tuning: bool = False
    vpt_shallow: bool = False
    vpt_deep: bool = False
    vpt_len: int = field(default=0, metadata=_range(0))
    adapter: bool = False
    adapter_dim: int = field(default=0, metadata=_range(0))
    adapter_mode: str = field(default="residual", metadata=_choice("residual", "replace"))
    lora: bool = False
    lora_dim: int = field(default=0, metadata=_range(0))
    ssf: bool = False
    partial: Optional[int] = None
    N_CTX: int = field(default=16, metadata=_range(1))
    CLASS_TOKEN_POSITION: str = field(default="end", metadata=_choice("end", "middle", "front"))
    head_init: str = field(default="random", metadata=_choice("random", "text"))
    # ---- optimisation ----
    epochs: int = field(default=10, metadata=_range(1))
    warmup: int = field(default=0, metadata=_range(0))
    batch_size: int = field(default=256, metadata=_range(1))
    lr: float = field(default=0.03, metadata=_range(0.0))
    weight_decay: float = field(default=5e-4, metadata=_range(0.0))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    lr_schedule: str = field(default="cosine", metadata=_choice("cosine", "constant"))
    lnl_methods: str = field(default="CE", metadata=_choice(*LNL_METHODS))  # main_baseline.py
    is_coop: bool = False
    # ---- phase-1 selection (defaults: main_phase1.py; the real-noise script changes them) ----
    mask_source: str = field(default="online", metadata=_choice("online", "eval_pass"))
    select_requires_argmax: bool = False
    warmup_loss: str = field(default="ce", metadata=_choice("ce", "sce"))
    noisy_prompt_labels_until: Optional[int] = None  # None: the warm-up epochs
    # ---- phase 2 ----
    clean_mask: Optional[str] = None  # None: the phase-1 run with the same dataset/noise/seed
    phase2_batches: str = field(default="all_samples", metadata=_choice("all_samples", "clean_only"))
    # ---- phase-2 backbones (models/timm_backbones.py) ----
    optimizer: str = field(default="auto", metadata=_choice("auto", "sgd", "adamw"))  # auto: the backbone's official
    weights_path: Optional[str] = None  # timm backbones: a local weight file (.pth/.safetensors/.npz)
    timm_pretrained: bool = True  # false: random timm weights (tests)
    # ---- baselines (main_small_loss.py, main_baseline.py) ----
    forget_rate: Optional[float] = field(default=None, metadata=_range(0.0, 1.0))  # None: oracle noise_ratio
    gmm_threshold: float = field(default=0.5, metadata=_range(0.0, 1.0))  # GMM: clean when p_clean > this
    gmm_max_iter: int = field(default=10, metadata=_range(1))
    gmm_tol: float = field(default=1e-2, metadata=_range(0.0))
    gmm_reg_covar: float = field(default=5e-4, metadata=_range(0.0))
    gce_q: float = field(default=0.7, metadata=_range(0.01, 1.0))
    elr_lambda: float = field(default=5.0, metadata=_range(0.0))  # official (hard-coded); ELR paper: 3 or 7
    elr_beta: float = field(default=0.3, metadata=_range(0.0, 0.999))  # official; ELR paper: 0.7 or 0.9
    sce_alpha: float = field(default=1.0, metadata=_range(0.0))
    sce_beta: float = field(default=1.0, metadata=_range(0.0))
    turn_lp_epochs: int = field(default=20, metadata=_range(0))  # TURN step 1 (E_LP)
    turn_fft_epochs: int = field(default=4, metadata=_range(1))  # TURN step 2 (E_FFT); replaces epochs
    turn_tau: float = field(default=0.6, metadata=_range(0.0, 1.0))  # per-class GMM threshold
    turn_class_balance: bool = True  # uniform subsample to the smallest clean class count
    turn_lp_optimizer: Optional[str] = field(default=None, metadata=_choice("sgd", "adamw"))  # None: TURN Table 8
    turn_lp_lr: Optional[float] = field(default=None, metadata=_range(0.0))  # None: TURN Table 8
    turn_lp_weight_decay: Optional[float] = field(default=None, metadata=_range(0.0))  # None: TURN Table 8
    label_match_templates: str = "clip_ensemble"  # a prompt set of models/zero_shot.py TEMPLATE_SETS
    # ---- few-shot training sets and DTD (the PTNL protocol; any script may use them) ----
    few_shot: Optional[int] = field(default=None, metadata=_range(1))  # k shots per given class from the noisy training set
    few_shot_noise: str = field(default="exact", metadata=_choice("exact", "random"))  # exact: round(k·noise_ratio) wrong labels per class (PTNL)
    dtd_split: int = field(default=1, metadata=_range(1, 10))  # DTD: official split files labels/{train,val,test}<k>.txt
    dtd_trainval: bool = True  # DTD: train on train<k> + val<k> (false: train<k> only)
    # ---- Robust Similarity (prompt matrix + feature similarity; main_robust_similarity.py) ----
    rs_blocks: int = field(default=6, metadata=_range(1))  # m prompt blocks (contexts) per class
    rs_ctx_per_class: bool = False  # each block has its own context per class (CoOp CSC); false: shared by the classes
    rs_ensemble: str = field(default="mean_prob", metadata=_choice("mean_prob", "vote"))  # ỹ from the m blocks
    rs_distance: str = field(default="cosine", metadata=_choice("cosine", "euclidean"))  # mutual distance of features
    rs_feature_norm: str = field(default="class_minmax", metadata=_choice("class_minmax", "global_minmax"))  # g onto [0, 1]
    rs_alpha_base: float = field(default=0.2, metadata=_range(0.0, 1.0))  # α = base · exp((epoch - 1) / tau)
    rs_alpha_tau: float = field(default=35.0, metadata=_range(1e-6))
    rs_alpha_max: float = field(default=1.0, metadata=_range(0.0, 1.0))  # α is capped here (long runs)
    rs_filter: str = field(default="gmm", metadata=_choice("gmm", "threshold", "keep_ratio"))  # which G are kept
    rs_threshold: float = field(default=0.5, metadata=_range(0.0, 1.0))  # gmm: p_clean > it; threshold: G > it
    rs_keep_ratio: Optional[float] = field(default=None, metadata=_range(0.0, 1.0))  # keep_ratio: per class; None: 1 - noise_ratio
    rs_loss: str = field(default="gce", metadata=_choice("gce", "ce"))  # PTNL: GCE with q = gce_q
    # ---- Co-Reg (noisy partial labels from CLIP, two networks; main_coreg.py) ----
    coreg_network: str = "preact_resnet18"  # the two students: preact_resnet18 (paper) or any phase-2 backbone name
    coreg_width: int = field(default=64, metadata=_range(1))  # preact_resnet18: channels of the first stage
    coreg_templates: str = "imagenet_small"  # annotation prompts: a set of models/zero_shot.py TEMPLATE_SETS
    coreg_candidates: str = field(default="template_union",
                                  metadata=_choice("template_union", "topk", "prob_threshold", "prob_ratio"))
    coreg_topk: int = field(default=5, metadata=_range(1))  # topk / prob_ratio: at most k candidates
    coreg_prob_threshold: float = field(default=0.5, metadata=_range(0.0, 1.0))  # prob_threshold / prob_ratio
    coreg_annotation_dir: Optional[str] = None  # cache of CLIP annotations; None: <output_dir>/coreg_annotation
    coreg_annotation_resolution: Optional[int] = field(default=None, metadata=_range(8))  # CLIP input; None: resolution
    coreg_annotation_normalize: Optional[str] = field(default=None, metadata=_choice("dataset", "clip"))  # None: normalize
    coreg_tau_div: float = field(default=0.5, metadata=_range(0.0, 1.0))  # partial set: credibility > τ_div
    coreg_sharpen_T: float = field(default=0.5, metadata=_range(1e-3, 10.0))  # sharpening temperature T
    coreg_lambda_u: float = field(default=1.0, metadata=_range(0.0))  # weight of the unlabeled-set losses
    coreg_rampup_epochs: int = field(default=16, metadata=_range(1))  # λ_u rises linearly after the warm-up
    coreg_mixup_alpha: float = field(default=4.0, metadata=_range(1e-6))  # Beta(α, α) mixup of the strong views
    coreg_proj_dim: int = field(default=128, metadata=_range(1))  # d': projected space of prototypes and contrast
    coreg_proto_momentum: float = field(default=0.999, metadata=_range(0.0, 1.0))
    coreg_proto_temperature: float = field(default=0.3, metadata=_range(1e-6))
    coreg_proto_weight: float = field(default=0.1, metadata=_range(0.0))
    coreg_contrast_weight: float = field(default=0.1, metadata=_range(0.0))
    coreg_contrast_temperature: float = field(default=0.07, metadata=_range(1e-6))
    coreg_queue_size: int = field(default=8192, metadata=_range(1))  # keys of the momentum encoder kept
    coreg_key_momentum: float = field(default=0.999, metadata=_range(0.0, 1.0))  # momentum (key) encoder EMA
    coreg_contrastive_start: int = field(default=10, metadata=_range(0))  # co-training epochs before L_proto + L_cont
    coreg_loss_history: int = field(default=5, metadata=_range(1))  # epochs of losses averaged before the GMM
    coreg_distribution_alignment: bool = True  # divide predictions by their mean (uniform prior) before dividing
    coreg_randaugment_ops: int = field(default=1, metadata=_range(0))  # strong view: RandAugment(ops, magnitude)
    coreg_randaugment_magnitude: int = field(default=5, metadata=_range(0, 30))
    coreg_labeled_fraction: float = field(default=0.0, metadata=_range(0.0, 1.0))  # few-labelled variant (our construction)
    # ---- run ----
    seed: int = 0
    gpuid: Optional[int] = None
    device: str = "auto"
    output_dir: str = "output"
    progress: bool = True
    # ---- memory (the same update, less memory; see README "Scale") ----
    micro_batch_size: Optional[int] = field(default=None, metadata=_range(1))  # per-process chunks of the batch
    grad_checkpointing: bool = False  # open_clip's / timm's activation checkpointing

    def to_dict(self) -> dict:
        """The resolved configuration as plain YAML-serialisable values."""
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def _coerce(key: str, value: Any) -> Any:
    """Convert `value` to the declared type of `key`, or raise ConfigError."""
    hint = _HINTS[key]
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and base is not str):
        if optional:
            return None
        raise ConfigError(f"config key '{key}' may not be null")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)  # YAML 1.1 reads "5e-4" as a string
            if not math.isfinite(number):
                raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
            return number
        if base is str:
            if isinstance(value, (list, dict)):
                raise ValueError
            return str(value)
        if base is list:
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [str(v) for v in value]
    except ConfigError:
        raise
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"config key '{key}' expects {getattr(base, '__name__', base)}, got {value!r}")


def _check(cfg: Config) -> None:
    """Range, choice and cross-key checks; raise ConfigError with the key and what is allowed."""
    for key, f in _FIELDS.items():
        value = getattr(cfg, key)
        if value is None:
            continue
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(f"config key '{key}' must be one of {list(f.metadata['choices'])}, got {value!r}")
        if "range" in f.metadata:
            low, high = f.metadata["range"]
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
                raise ConfigError(f"config key '{key}' must lie in {bounds}, got {value!r}")
    if cfg.class_names and len(cfg.class_names) != cfg.num_class:
        raise ConfigError(
            f"num_class is {cfg.num_class} but class_names lists {len(cfg.class_names)} names; "
            "they must agree")
    if len(set(cfg.class_names)) != len(cfg.class_names):
        dupes = sorted({n for n in cfg.class_names if cfg.class_names.count(n) > 1})
        raise ConfigError(f"class_names has duplicates: {dupes}")
    if (cfg.render_size is not None or cfg.render_floor) and cfg.dataset not in ("fashion_mnist", ""):
        raise ConfigError(f"render_size and render_floor render the offline miniature's images (fashion_mnist); "
                          f"found them set for dataset {cfg.dataset!r}; remove them")
    if cfg.warmup > cfg.epochs:
        raise ConfigError(f"warmup ({cfg.warmup}) may not exceed epochs ({cfg.epochs})")
    if cfg.partial is not None and cfg.partial < 1:
        raise ConfigError(f"config key 'partial' must be a positive number of layers or null, got {cfg.partial}")


def _unknown_key_error(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_FIELDS), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown config key '{key}' in {source}.{hint} Valid keys: {', '.join(sorted(_FIELDS))}")


def apply_overrides(cfg: Config, values: dict, source: str) -> Config:
    """Return a copy of `cfg` with `values` set (coerced and validated)."""
    updated = dataclasses.replace(cfg)
    for key, value in values.items():
        if key not in _FIELDS:
            raise _unknown_key_error(key, source)
        setattr(updated, key, _coerce(key, value))
    _check(updated)
    return updated


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key written twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key '{key}' in {getattr(self, 'source', 'the YAML')} at line "
                                  f"{key_node.start_mark.line + 1} (first at line {seen[key]}); keep one of them")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: str) -> Any:
    """Parse a YAML file safely (no duplicate keys), with `ConfigError`s that name the file."""
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory; pass a YAML file, e.g. config/PEFT/cifar100.yaml")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            loader = _UniqueKeyLoader(handle)
            loader.source = path
            try:
                return loader.get_single_data()
            finally:
                loader.dispose()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read ({type(err).__name__}: {err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None


def load_yaml(path: str) -> dict:
    """Read a YAML mapping, with a clear error for a missing file, a duplicate key or a non-mapping."""
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, found {type(data).__name__}")
    return data


def parse_opts(opts: Sequence[str]) -> dict:
    """Turn ['key=value', ...] into a dict; values are parsed as YAML scalars/lists."""
    parsed = {}
    for item in opts:
        if "=" not in item:
            raise ConfigError(f"--opts expects key=value pairs, got {item!r}")
        key, raw = item.split("=", 1)
        if key.strip() in parsed:
            raise ConfigError(f"--opts sets '{key.strip()}' twice; give each key once")
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--opts {item!r}: the value is not a YAML scalar or list ({err})") from None
    return parsed


def build_arg_parser(description: str, flags: Sequence[str]) -> argparse.ArgumentParser:
    """Argument parser with `--cfg`, the paper's flags named in `flags`, and the run controls."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg", required=True, help="YAML config file")
    if "noise_mode" in flags:
        parser.add_argument("--noise_mode", default=None, help="overrides noise_mode of the YAML")
    if "noise_ratio" in flags:
        parser.add_argument("--noise_ratio", type=float, default=None, help="overrides noise_ratio")
    if "backbone" in flags:
        parser.add_argument("--backbone", default=None, help="overrides backbone")
    if "lnl_methods" in flags:
        parser.add_argument("--lnl_methods", default=None, help="overrides lnl_methods")
    if "clean_mask" in flags:
        parser.add_argument("--clean_mask", default=None, help="path of a clean_mask.npy to train on")
    parser.add_argument("--gpuid", type=int, default=None, help="CUDA device index (device: cuda:<gpuid>)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="any other config key, e.g. --opts epochs=2 data_path=/data/cifar-100")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--resume", action="store_true", help="continue an interrupted run")
    runs.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted run")
    runs.add_argument("--continue", dest="continue_run", action="store_true",
                      help="do what the run needs: nothing if finished, resume if interrupted, else start "
                           "(for sweeps and preemptible cluster jobs)")
    return parser


def resolve_config(args: argparse.Namespace, defaults: Optional[dict] = None) -> Config:
    """Defaults -> script defaults (e.g. the real-noise scripts') -> YAML -> the paper's CLI flags
    -> --opts, validated at each step."""
    cfg = apply_overrides(Config(), defaults or {}, source="the script's defaults")
    cfg = apply_overrides(cfg, load_yaml(args.cfg), source=args.cfg)
    flag_values = {key: getattr(args, key) for key in
                   ("noise_mode", "noise_ratio", "backbone", "lnl_methods", "clean_mask", "gpuid")
                   if getattr(args, key, None) is not None}
    cfg = apply_overrides(cfg, flag_values, source="the command line")
    return apply_overrides(cfg, parse_opts(args.opts), source="--opts")


def save_config(cfg: Config, path: str, header: str = "") -> None:
    """Write the resolved config as YAML (atomically), after `header` comment lines."""
    from utils.io import atomic_write_text

    comments = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comments + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------- what a resumed run may change
# Keys that cannot change a run's result: a resumed run may change them freely.
RESUME_NEUTRAL_KEYS = ("num_workers", "progress", "output_dir", "gpuid", "download", "micro_batch_size",
                       "grad_checkpointing", "coreg_annotation_dir")
# Keys a resumed run may change on purpose (a lower lr after a non-finite loss, another device);
# the change is logged and recorded in config_history.jsonl and summary.json.
RESUME_ADJUSTABLE_KEYS = ("lr", "device")
# Keys holding paths: compared after normalisation, so "data/x/" and "./data/x" are the same.
PATH_KEYS = ("data_path", "output_dir", "pretrained", "weights_path", "noise_cache_dir", "clean_mask",
             "cifar_n_label_file", "subsample_file", "imagenet_val_path")


def resume_changes(saved: dict, cfg: Config, source: str) -> dict[str, tuple[Any, Any]]:
    """Changes a resumed run makes to its saved config: {key: (old, new)} of the adjustable keys.

    Result-neutral keys may differ silently; any other difference is a ConfigError that names the
    key and both values, since the resumed run would no longer be the run it continues.
    """
    adjustable, refused = {}, {}
    defaults = Config().to_dict()  # a run saved before a key existed had its default
    for key, new in cfg.to_dict().items():
        old = saved.get(key, defaults[key])
        if key in PATH_KEYS and isinstance(old, str) and isinstance(new, str):
            same = os.path.normpath(old) == os.path.normpath(new) if old and new else old == new
        else:
            same = old == new
        if same or key in RESUME_NEUTRAL_KEYS:
            continue
        (adjustable if key in RESUME_ADJUSTABLE_KEYS else refused)[key] = (old, new)
    if refused:
        details = "; ".join(f"{k}: {old!r} in {source}, {new!r} now" for k, (old, new) in refused.items())
        raise ConfigError(f"--resume would change the run's settings ({details}). Resume with the same "
                          f"settings (only {', '.join(RESUME_ADJUSTABLE_KEYS)} may change, and keys that "
                          "cannot change the result), or start a new run with --overwrite")
    return adjustable
