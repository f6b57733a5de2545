"""Build the train / eval / test datasets of a run from its config.

Each dataset family has a reader that returns a `RawData` (items, labels, transforms); this
module applies the (cached) synthetic noise, or takes the real noisy labels a reader returns
(CIFAR-N, Clothing1M, WebVision), and wraps everything in `NoisyLabelDataset`s. A new dataset is
one reader function plus one line in `READERS`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from utils import distributed
from utils.config import REAL_NOISE_DATASETS

from .cifar import CIFAR_NUM_CLASSES, read_cifar, read_cifar100_coarse_labels
from .cifar_n import read_human_labels
from .clothing1m import read_clothing1m
from .cub import read_cub
from .dtd import read_dtd
from .errors import DatasetConfigError
from .fashion_mnist import pretrain_downstream_split, read_fashion_mnist
from .few_shot import few_shot_indices
from .folder_layout import ImageSplit
from .images import files_fingerprint, load_rgb, resized_pixels
from .noise import NOISE_MODES, LazyImages, actual_noise_rate, labels_sha256, load_or_make_noisy_labels
from .noisy_dataset import NoisyLabelDataset, array_to_pil
from .rendering import Rendering, render
from .stanford_cars import read_stanford_cars
from .tiny_imagenet import read_tiny_imagenet
from .transforms import (NORMALIZATION, cifar_transforms, clothing1m_transforms, fashion_mnist_transforms,
                         folder_transforms, webvision_transforms)
from .webvision import read_webvision

log = logging.getLogger(__name__)


@dataclass
class RawData:
    """What a reader returns: the two splits, how to load and transform an item, and extras."""

    train_items: Sequence[Any]  # uint8 HWC arrays or file paths, in a stable order
    train_labels: Optional[np.ndarray]  # true labels; None when unknown (Clothing1M, WebVision)
    test_items: Sequence[Any]
    test_labels: np.ndarray
    num_classes: int
    normalization: str  # key of NORMALIZATION used when normalize: dataset
    transforms: Callable[[int, Sequence[float], Sequence[float]], tuple[Callable, Callable]]
    load_image: Callable[[Any], Any] = array_to_pil
    noise_options: dict = field(default_factory=dict)  # extra inputs of the noise generator
    sample_ids: Optional[list] = None  # set when the training set is a subsample
    given_train_labels: Optional[np.ndarray] = None  # real noise: the human / web labels; None: synthetic
    label_source: str = ""  # real noise: where the given labels come from
    idn_images: Optional[LazyImages] = None  # file datasets: the pixels idn reads (default: train_items)
    # part of the noise cache's name for another rendering of the same images (the shifted miniature's),
    # so variants never overwrite each other's cache; "" for the images as distributed
    noise_key: str = ""
    extra_tests: dict = field(default_factory=dict)  # name -> (items, labels), e.g. WebVision's ImageNet val


@dataclass
class DataBundle:
    """Everything a phase script needs from the data side."""

    train: NoisyLabelDataset  # train images, given labels, train transform, complementary labels
    eval: NoisyLabelDataset  # the same images and labels with the test transform
    test: NoisyLabelDataset
    class_names: list[str]
    num_classes: int
    noise_info: dict[str, Any]
    given_labels_sha256: str
    sample_ids: Optional[list] = None
    extra_tests: dict = field(default_factory=dict)  # name -> test-mode dataset (WebVision: "imagenet")


def _read_cifar_family(cfg: Any) -> RawData:
    name, download = cfg.dataset, bool(getattr(cfg, "download", False))
    # Read both splits first so a missing file fails before any noise is generated.
    train_images, train_labels = read_cifar(name, cfg.data_path, "train", download)
    test_images, test_labels = read_cifar(name, cfg.data_path, "test", download)
    options = {}
    if cfg.noise_mode == "asym_cifar100":
        options["coarse_labels"] = read_cifar100_coarse_labels(cfg.data_path, "train")
    raw = RawData(train_images, train_labels, test_images, test_labels, CIFAR_NUM_CLASSES[name],
                  normalization=name, transforms=cifar_transforms, noise_options=options)
    if cfg.noise_mode == "real":  # CIFAR-10N / CIFAR-100N: human labels for the same images
        raw.given_train_labels, raw.label_source = read_human_labels(
            name, cfg.data_path, getattr(cfg, "cifar_n_label_file", None), getattr(cfg, "cifar_n_label_key", None),
            train_labels, CIFAR_NUM_CLASSES[name])
    return raw


def _folder_raw(cfg: Any, train: ImageSplit, test: ImageSplit, num_classes: int, normalization: str,
                root: Path, str_flip: str) -> RawData:
    """RawData of a file-based dataset with synthetic noise; idn reads small resized pixels."""
    size = int(getattr(cfg, "idn_image_size", 64))
    idn_images = None
    if cfg.noise_mode == "idn":  # fingerprint now (cheap), decode and resize only on a cache miss
        paths = list(train.paths)
        idn_images = LazyImages(files_fingerprint(paths, root, extra=f"pil-bilinear-{size}-hwc"),
                                lambda: resized_pixels(paths, size).reshape(len(paths), -1))  # HWC rows
    return RawData(train.paths, train.label_array(), test.paths, test.label_array(), num_classes,
                   normalization=normalization, transforms=folder_transforms, load_image=load_rgb,
                   noise_options={"str_flip": str_flip}, idn_images=idn_images)


def _read_tiny_imagenet(cfg: Any) -> RawData:
    train, test, wnids, root = read_tiny_imagenet(cfg.data_path)
    return _folder_raw(cfg, train, test, len(wnids), "clip", root, str_flip="cyclic")


def _read_cub(cfg: Any) -> RawData:
    # CUB's official loader has sym noise only; str follows its sibling loaders (Cars, Tiny): cyclic.
    train, test, num_classes, root = read_cub(cfg.data_path, list(cfg.class_names))
    return _folder_raw(cfg, train, test, num_classes, "imagenet", root, str_flip="cyclic")


def _read_stanford_cars(cfg: Any) -> RawData:
    train, test, classes, root = read_stanford_cars(cfg.data_path, list(cfg.class_names))
    return _folder_raw(cfg, train, test, len(classes), "clip", root, str_flip="cyclic")


def _read_dtd(cfg: Any) -> RawData:
    train, test, num_classes, root = read_dtd(cfg.data_path, list(cfg.class_names), int(getattr(cfg, "dtd_split", 1)),
                                              bool(getattr(cfg, "dtd_trainval", True)))
    return _folder_raw(cfg, train, test, num_classes, "clip", root, str_flip="cyclic")


def _read_clothing1m(cfg: Any) -> RawData:
    num_samples = getattr(cfg, "clothing1m_num_samples", None) or 1000 * int(cfg.batch_size)  # official default
    seed = getattr(cfg, "subsample_seed", None)
    data = read_clothing1m(cfg.data_path, int(cfg.num_class), num_samples, cfg.seed if seed is None else seed,
                           getattr(cfg, "subsample_file", None))
    return RawData(data["train_paths"], None, data["test_paths"], data["test_labels"], int(cfg.num_class),
                   normalization="clothing1m", transforms=clothing1m_transforms, load_image=load_rgb,
                   sample_ids=data["sample_ids"], given_train_labels=data["train_labels"],
                   label_source=f"{cfg.data_path}: noisy_label_kv.txt")


def _read_webvision(cfg: Any) -> RawData:
    train, val, imagenet = read_webvision(cfg.data_path, int(cfg.num_class), getattr(cfg, "imagenet_val_path", None))
    extra = {} if imagenet is None else {"imagenet": (imagenet.paths, imagenet.label_array())}
    return RawData(train.paths, None, val.paths, val.label_array(), int(cfg.num_class), normalization="imagenet",
                   transforms=webvision_transforms, load_image=load_rgb, given_train_labels=train.label_array(),
                   label_source=f"{cfg.data_path}: info/train_filelist_google.txt", extra_tests=extra)


def _read_fashion_mnist(cfg: Any) -> RawData:
    download = bool(getattr(cfg, "download", False))
    train_images, train_labels = read_fashion_mnist(cfg.data_path, "train", download)
    test_images, test_labels = read_fashion_mnist(cfg.data_path, "test", download)
    _, downstream = pretrain_downstream_split(len(train_labels), int(cfg.pretrain_split))
    if cfg.max_train_samples is not None:  # a seeded, class-agnostic subset of the downstream part
        keep = np.random.default_rng(cfg.seed).permutation(len(downstream))[: cfg.max_train_samples]
        downstream = np.sort(downstream[keep])
    if cfg.max_test_samples is not None:  # the same test images for every seed: a fixed draw
        kept = np.sort(np.random.default_rng(0).permutation(len(test_labels))[: cfg.max_test_samples])
        test_images, test_labels = test_images[kept], test_labels[kept]
    # The shifted miniature's rendering, once at read time: the noise (idn reads pixels), training and
    # test all see the rendered images, as they would a downstream dataset's own pixels.
    rendering = Rendering.of(cfg)
    # The noise cache is named by the draw as well: idn's noise seed is 1 whatever the seed, so without it the
    # seeds' subsamples would take turns overwriting one file (each regenerating the other's labels).
    draw = f"draw{cfg.seed}" if cfg.max_train_samples is not None else ""
    return RawData(render(train_images[downstream], rendering), train_labels[downstream],
                   render(test_images, rendering), test_labels, 10,
                   normalization="fashion_mnist", transforms=fashion_mnist_transforms,
                   sample_ids=downstream.tolist(), noise_key="-".join(k for k in (draw, rendering.cache_key()) if k))


READERS: dict[str, Callable[[Any], RawData]] = {
    "cifar10": _read_cifar_family,
    "cifar100": _read_cifar_family,
    "fashion_mnist": _read_fashion_mnist,
    "tiny_imagenet": _read_tiny_imagenet,
    "cub-200-2011": _read_cub,
    "stanford_cars": _read_stanford_cars,
    "dtd": _read_dtd,
    "clothing1m": _read_clothing1m,
    "webvision": _read_webvision,
}
SUPPORTED_DATASETS = tuple(READERS)
# CIFAR-10/100 have real noise too, as the CIFAR-N human labels (noise_mode: real).
CIFAR_N_DATASETS = ("cifar10", "cifar100")
# Datasets whose training set is a subsample drawn from a larger pool; `subsample_file` fixes it.
SUBSAMPLED_DATASETS = ("clothing1m",)
# Modes that only make sense for one dataset's class structure.
_DATASET_ONLY_MODES = {"asym_cifar10": "cifar10", "asym_cifar100": "cifar100"}


def build_datasets(cfg: Any, normalization: Optional[tuple] = None) -> DataBundle:
    """Read the dataset named by cfg.dataset, apply (cached) synthetic noise, wrap it.

    `normalization`: the (mean, std) of `normalize: backbone`, which the calling script takes from
    its model (models/timm_backbones.py `backbone_normalization`).
    """
    reader = _check_dataset(cfg.dataset)
    noise_mode = _check_noise_mode(cfg.noise_mode, cfg.dataset)
    raw = _read_once_downloaded(reader, cfg)
    _check_num_classes(cfg, raw.num_classes)
    if raw.given_train_labels is not None:
        given_labels, noise_info = _real_labels(raw)
    else:
        given_labels, noise_info = _noisy_labels(cfg, noise_mode, raw)
    if getattr(cfg, "few_shot", None):  # PTNL protocol: k shots per given class of the noisy set
        raw, given_labels, noise_info = _few_shot(cfg, raw, given_labels, noise_info)
    mean, std = normalization if normalization is not None else _normalization(cfg, raw.normalization)
    train_tf, test_tf = raw.transforms(int(cfg.resolution), mean, std)
    common = {"num_classes": raw.num_classes, "seed": int(cfg.seed), "load_image": raw.load_image}
    extra_tests = {name: NoisyLabelDataset(items, labels, labels, transform=test_tf, mode="test", **common)
                   for name, (items, labels) in raw.extra_tests.items()}
    return DataBundle(
        train=NoisyLabelDataset(raw.train_items, given_labels, raw.train_labels, transform=train_tf,
                                mode="train", **common),
        eval=NoisyLabelDataset(raw.train_items, given_labels, raw.train_labels, transform=test_tf,
                               mode="eval", **common),
        test=NoisyLabelDataset(raw.test_items, raw.test_labels, raw.test_labels, transform=test_tf,
                               mode="test", **common),
        class_names=list(cfg.class_names),
        num_classes=raw.num_classes,
        noise_info=noise_info,
        given_labels_sha256=labels_sha256(given_labels),
        sample_ids=raw.sample_ids,
        extra_tests=extra_tests,
    )


def _read_once_downloaded(reader: Callable[[Any], RawData], cfg: Any) -> RawData:
    """Read the dataset; under torchrun with `download: true`, rank 0 reads first (downloading what
    is missing into data_path) and the other ranks read after it, without downloading."""
    if not getattr(cfg, "download", False) or distributed.world_size() == 1:
        return reader(cfg)
    first: list[RawData] = []
    distributed.on_main(lambda: first.append(reader(cfg)))  # the others wait here (and get its error)
    return first[0] if first else reader(dataclasses.replace(cfg, download=False))


def pin_subsample(cfg: Any, metadata_file: str) -> Any:
    """A copy of `cfg` that trains on the subsample recorded in `metadata_file` (a clean_mask.json),
    for datasets that draw one (Clothing1M), unless cfg already fixes it; else cfg unchanged."""
    if cfg.dataset not in SUBSAMPLED_DATASETS or getattr(cfg, "subsample_file", None) or \
            not os.path.isfile(metadata_file):
        return cfg
    return dataclasses.replace(cfg, subsample_file=metadata_file)


def _real_labels(raw: RawData) -> tuple[np.ndarray, dict]:
    """Real noise: the given labels as read; the noise rate only where true labels are known."""
    given = raw.given_train_labels
    known = raw.train_labels is not None
    info = {"mode": "real", "label_source": raw.label_source, "num_samples": len(given),
            "num_classes": raw.num_classes, "true_labels_known": known,
            "actual_rate": actual_noise_rate(raw.train_labels, given) if known else None}
    if not known:
        info["note"] = "no true labels for the training images: detection precision/recall cannot be computed"
    return given, info


def _few_shot(cfg: Any, raw: RawData, given_labels: np.ndarray, noise_info: dict) -> tuple[RawData, np.ndarray, dict]:
    """Keep `few_shot` samples per given class (datasets/few_shot.py); sample_ids name them in the full set."""
    keep = few_shot_indices(given_labels, raw.train_labels, raw.num_classes, int(cfg.few_shot), float(cfg.noise_ratio),
                            getattr(cfg, "few_shot_noise", "exact"), int(cfg.seed))
    ids = keep.tolist() if raw.sample_ids is None else [raw.sample_ids[i] for i in keep]
    true = None if raw.train_labels is None else raw.train_labels[keep]
    items = raw.train_items[keep] if isinstance(raw.train_items, np.ndarray) else [raw.train_items[i] for i in keep]
    raw = dataclasses.replace(raw, train_items=items, train_labels=true, sample_ids=ids,
                              given_train_labels=None if raw.given_train_labels is None else given_labels[keep])
    given = given_labels[keep]
    info = {**noise_info, "few_shot": int(cfg.few_shot), "few_shot_noise": getattr(cfg, "few_shot_noise", "exact"),
            "num_samples_before_few_shot": len(given_labels), "num_samples": len(given),
            "actual_rate": actual_noise_rate(true, given) if true is not None else None}
    return raw, given, info


def resolve_noise_seed(cfg: Any, noise_mode: str) -> int:
    """noise_seed, or the official default: 1 for idn (hard-coded there), cfg.seed otherwise."""
    seed = getattr(cfg, "noise_seed", None)
    if seed is None:
        seed = 1 if noise_mode == "idn" else cfg.seed
    if seed is None:
        raise DatasetConfigError("expected an integer seed for the noise, found seed=None and "
                                 "noise_seed=None; set seed (or noise_seed) in the config")
    return int(seed)


def _noisy_labels(cfg: Any, noise_mode: str, raw: RawData) -> tuple[np.ndarray, dict]:
    cache_dir = _noise_cache_dir(cfg)
    # A subsample gets its own cache name: its labels are not those of the full training set; so does another
    # rendering of the images (idn reads the pixels), e.g. fashion_mnist-n2000-render10px-bg50.
    dataset_key = cfg.dataset if raw.sample_ids is None else f"{cfg.dataset}-n{len(raw.train_labels)}"
    if raw.noise_key:
        dataset_key = f"{dataset_key}-{raw.noise_key}"
    options = {"sym_exclude_true": bool(getattr(cfg, "sym_exclude_true", False)), **raw.noise_options}
    if getattr(cfg, "str_flip", None) is not None:  # None: the dataset's official str behaviour
        options["str_flip"] = cfg.str_flip
    images = None
    if noise_mode == "idn":
        images = raw.idn_images if raw.idn_images is not None else raw.train_items
    # Under torchrun rank 0 reads or writes the cache and hands the labels (or its error) to the others,
    # so only rank 0 writes files and the other ranks never generate (IDN: load every image) in parallel.
    return distributed.on_main(lambda: load_or_make_noisy_labels(
        cache_dir, dataset_key, raw.train_labels, raw.num_classes, noise_mode, float(cfg.noise_ratio),
        resolve_noise_seed(cfg, noise_mode), images=images, **options))


def _check_dataset(name: str) -> Callable[[Any], RawData]:
    if name not in READERS:
        raise DatasetConfigError(f"dataset {name!r} is not supported yet; supported: "
                                 f"{', '.join(SUPPORTED_DATASETS)}")
    return READERS[name]


def _check_num_classes(cfg: Any, expected: int) -> None:
    if int(cfg.num_class) != expected:
        raise DatasetConfigError(f"{cfg.dataset} has {expected} classes, but num_class is {cfg.num_class}; "
                                 f"set num_class: {expected}")
    if len(cfg.class_names) != expected:
        raise DatasetConfigError(f"{cfg.dataset} has {expected} classes, but class_names lists "
                                 f"{len(cfg.class_names)} names; give one name per class")


def _noise_cache_dir(cfg: Any) -> str:
    """noise_cache_dir, else <data_path>/noise_file; a read-only data folder falls back to the output folder."""
    configured = getattr(cfg, "noise_cache_dir", None)
    if configured:
        return configured
    default = Path(cfg.data_path) / "noise_file"
    existing = next(p for p in (default, default.parent, Path(".")) if p.exists())
    if os.access(existing, os.W_OK):
        return str(default)
    fallback = Path(getattr(cfg, "output_dir", "output")) / "noise_file" / cfg.dataset
    log.warning("data folder %s is not writable; caching noisy labels in %s (set noise_cache_dir to choose)",
                existing, fallback)
    return str(fallback)


def _check_noise_mode(mode: str | None, name: str) -> str:
    mode = "none" if mode in (None, "") else mode
    if name in REAL_NOISE_DATASETS:
        if mode not in ("none", "real"):
            raise DatasetConfigError(f"{name} comes with real label noise only; found noise_mode {mode!r}. Leave "
                                     "noise_mode unset (or 'real') and run main_real_phase1.py")
        return "real"
    if mode == "real":
        if name not in CIFAR_N_DATASETS:
            raise DatasetConfigError(
                f"noise_mode 'real' needs human or web labels, which {name!r} does not have; datasets with real "
                f"noise: {', '.join(CIFAR_N_DATASETS + REAL_NOISE_DATASETS)} (cifar10/cifar100 read the CIFAR-N "
                "label files)")
        return mode
    if mode not in NOISE_MODES:
        raise DatasetConfigError(f"unknown noise_mode {mode!r}; valid modes: {', '.join(NOISE_MODES)}, "
                                 "real (CIFAR-N, Clothing1M, WebVision)")
    if _DATASET_ONLY_MODES.get(mode, name) != name:
        raise DatasetConfigError(f"noise_mode {mode!r} is defined for {_DATASET_ONLY_MODES[mode]} "
                                 f"only, found dataset {name!r}; use 'asym' (cyclic) instead")
    return mode


def _normalization(cfg: Any, name: str) -> tuple:
    choice = getattr(cfg, "normalize", "dataset")
    if choice == "backbone":
        raise DatasetConfigError("normalize: backbone takes the statistics of a phase-2 backbone; only "
                                 "main_phase2.py and the baselines supply them. Use 'dataset' or 'clip' here")
    if choice not in ("dataset", "clip"):
        raise DatasetConfigError(f"expected normalize 'dataset' or 'clip', found {choice!r}")
    return NORMALIZATION[name if choice == "dataset" else "clip"]
