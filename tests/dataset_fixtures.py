"""Write miniature copies of the paper's datasets in their real on-disk layouts, for tests.

Every writer creates small image files with PIL (a class colour plus noise, so images differ),
the dataset's own key / list / label files, and returns what a reader should find (paths in
the expected order, labels, class names), computed here independently of the readers. Files are
created in a shuffled order so a reader that relies on the filesystem's listing order is caught.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_fixtures import write_cifar_fixture


@dataclass
class Miniature:
    """What a writer put on disk: the data_path and the expected content, in reader order."""

    data_path: Path
    class_names: list[str]
    train_paths: list[Path] = field(default_factory=list)
    train_labels: list[int] = field(default_factory=list)
    test_paths: list[Path] = field(default_factory=list)
    test_labels: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def write_image(path: Path, label: int, rng: np.random.Generator, size: tuple[int, int] = (12, 10)) -> Path:
    """A small RGB image (JPEG or PNG by suffix): the class colour plus noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = np.array([(label * 67) % 256, (label * 131 + 40) % 256, (label * 29 + 90) % 256], dtype=np.float64)
    pixels = np.clip(colour + rng.normal(0, 25, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _write_shuffled(items: list[tuple[Path, int]], rng: np.random.Generator, seed: int = 0) -> None:
    order = list(items)
    random.Random(seed).shuffle(order)
    for path, label in order:
        write_image(path, label, rng)


def wnids_for(num_classes: int) -> list[str]:
    """Fake WordNet ids in a non-trivial order (sorted order differs from creation order)."""
    return [f"n{(7919 * (i + 3)) % 10**8:08d}" for i in range(num_classes)]


# ------------------------------------------------------------------------------ Tiny-ImageNet
def write_tiny_imagenet(root: Path, num_classes: int = 3, per_class: int = 3, test_per_class: int = 2,
                        test_layout: str = "val_annotations", seed: int = 0) -> Miniature:
    """train/<wnid>/images/*.JPEG plus the test split as 'val_annotations' (official download),
    'test_folders' (test/<wnid>/images, the official loader's layout) or 'val_folders'."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    wnids = wnids_for(num_classes)
    order = sorted(wnids)
    mini = Miniature(root, [f"class {w}" for w in order])
    items = []
    for wnid in wnids:
        for i in range(per_class):
            items.append((root / "train" / wnid / "images" / f"{wnid}_{(i * 7) % 11}.JPEG", order.index(wnid)))
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    test_items, annotations = [], []
    for wnid in wnids:
        for i in range(test_per_class):
            name = f"val_{order.index(wnid) * 10 + (i * 3) % 7}.JPEG"
            if test_layout == "val_annotations":
                test_items.append((root / "val" / "images" / name, order.index(wnid)))
                annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
            else:
                split = "test" if test_layout == "test_folders" else "val"
                test_items.append((root / split / wnid / "images" / name, order.index(wnid)))
    _write_shuffled(items + test_items, rng, seed)
    if annotations:
        random.Random(seed).shuffle(annotations)
        (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    if test_layout == "val_annotations":  # the official unlabelled test set sits beside it
        write_image(root / "test" / "images" / "test_0.JPEG", 0, rng)
    mini.train_paths, mini.train_labels = _sorted_by_label_then_name(items)
    mini.test_paths, mini.test_labels = _sorted_by_label_then_name(test_items)
    mini.extra["wnids"] = order
    return mini


def _sorted_by_label_then_name(items: list[tuple[Path, int]]) -> tuple[list[Path], list[int]]:
    ordered = sorted(items, key=lambda item: (item[1], item[0].name))
    return [p for p, _ in ordered], [label for _, label in ordered]


# ------------------------------------------------------------------------------ CUB-200-2011
CUB_NAMES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani"]


def write_cub(root: Path, num_classes: int = 3, per_class: int = 3, test_per_class: int = 2,
              seed: int = 0, with_classes_file: bool = True) -> Miniature:
    """images.txt, image_class_labels.txt, train_test_split.txt, classes.txt and images/."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = CUB_NAMES[:num_classes] if num_classes <= len(CUB_NAMES) else [f"Bird_{i}" for i in range(num_classes)]
    mini = Miniature(root, names)
    rows, labels, split, items = [], [], [], []
    image_id = 0
    for c, name in enumerate(names):
        folder = f"{c + 1:03d}.{name}"
        flags = [1] * per_class + [0] * test_per_class
        random.Random(seed + c).shuffle(flags)  # train and test interleave inside a class, as in CUB
        for i, is_train in enumerate(flags):
            image_id += 1
            relative = f"{folder}/{name}_{i:04d}_{100 + image_id}.jpg"
            rows.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {is_train}")
            items.append((root / "images" / relative, c, is_train))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images.txt").write_text("\n".join(rows) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    if with_classes_file:
        (root / "classes.txt").write_text("\n".join(f"{c + 1} {c + 1:03d}.{n}" for c, n in enumerate(names)) + "\n")
    _write_shuffled([(p, c) for p, c, _ in items], rng, seed)
    for path, label, is_train in items:  # images.txt order
        if is_train:
            mini.train_paths.append(path)
            mini.train_labels.append(label)
        else:
            mini.test_paths.append(path)
            mini.test_labels.append(label)
    return mini


# ------------------------------------------------------------------------------ Stanford Cars
CARS_NAMES = ["AM General Hummer SUV 2000", "Acura Integra Type R 2001", "BMW M3 Coupe 2012",
              "smart fortwo Convertible 2012"]


def write_stanford_cars(root: Path, names: list[str] | None = None, per_class: int = 3, test_per_class: int = 2,
                        seed: int = 0) -> Miniature:
    """train/<class name>/*.jpg and test/<class name>/*.jpg."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = list(names or CARS_NAMES)
    order = sorted(names)
    mini = Miniature(root, order)
    train, test = [], []
    for name in names:
        label = order.index(name)
        train += [(root / "train" / name / f"{(i * 5) % 9:05d}.jpg", label) for i in range(per_class)]
        test += [(root / "test" / name / f"{(i * 5) % 9:05d}.jpg", label) for i in range(test_per_class)]
    _write_shuffled(train + test, rng, seed)
    mini.train_paths, mini.train_labels = _sorted_by_label_then_name(train)
    mini.test_paths, mini.test_labels = _sorted_by_label_then_name(test)
    return mini


# ------------------------------------------------------------------------------ CIFAR-N
def write_cifar_n(root: Path, name: str = "cifar100", num_train: int = 200, num_test: int = 100,
                  noise_rate: float = 0.4, keys: tuple[str, ...] | None = None, seed: int = 0,
                  label_file: Path | None = None) -> Miniature:
    """CIFAR pickles (flat, as the official code reads them) plus CIFAR-1x_human.pt: a dict of NumPy
    arrays (torch.save), clean_label = the CIFAR labels, each noisy key a noisy copy."""
    fx = write_cifar_fixture(root, name, num_train=num_train, num_test=num_test, layout="flat", seed=seed)
    num_classes = 100 if name == "cifar100" else 10
    keys = keys or (("noisy_label",) if name == "cifar100" else
                    ("worse_label", "aggre_label", "random_label1", "random_label2", "random_label3"))
    rng = np.random.default_rng(seed + 1)
    content = {"clean_label": fx.train_labels.copy()}
    for k, key in enumerate(keys):
        flip = rng.random(num_train) < noise_rate * (1 - 0.1 * k)
        noisy = fx.train_labels.copy()
        noisy[flip] = (noisy[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
        content[key] = noisy
    if name == "cifar100":
        content["noisy_coarse_label"] = content["noisy_label"] % 20
    path = label_file or Path(root) / ("CIFAR-100_human.pt" if name == "cifar100" else "CIFAR-10_human.pt")
    torch.save(content, path)
    mini = Miniature(Path(root), fx.class_names, train_labels=fx.train_labels.tolist(),
                     test_labels=fx.test_labels.tolist())
    mini.extra.update(human=content, label_file=path, train_images=fx.train_images)
    return mini


# ------------------------------------------------------------------------------ Clothing1M
CLOTHING_NAMES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket",
                  "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]


def write_clothing1m(root: Path, per_class: int = 4, test_per_class: int = 1, image_layout: str = "official",
                     seed: int = 0, class_skew: bool = True) -> Miniature:
    """The four key files and images. image_layout 'official': data_path/<a>/<b>/<c>.jpg (key prefix
    'images/' stripped, as the official loader reads); 'images': data_path/images/<a>/<b>/<c>.jpg.
    With class_skew, class c has per_class + c % 3 training images (the subsample must balance them)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    image_root = root if image_layout == "official" else root / "images"
    num_classes = len(CLOTHING_NAMES)
    train_keys, test_keys, noisy_kv, clean_kv, items = [], [], [], [], []
    counter = 0
    for c in range(num_classes):
        for i in range((per_class + (c % 3 if class_skew else 0))):
            counter += 1
            key = f"images/{counter % 10}/{counter % 7}/{1000 + counter}.jpg"
            train_keys.append(key)
            noisy_kv.append(f"{key} {c}")
            items.append((image_root / key[len('images/'):], c))
        for i in range(test_per_class):
            counter += 1
            key = f"images/{counter % 10}/{counter % 7}/{1000 + counter}.jpg"
            test_keys.append(key)
            clean_kv.append(f"{key} {c}")
            items.append((image_root / key[len('images/'):], c))
    random.Random(seed).shuffle(train_keys)
    root.mkdir(parents=True, exist_ok=True)
    (root / "noisy_label_kv.txt").write_text("\n".join(noisy_kv) + "\n")
    (root / "clean_label_kv.txt").write_text("\n".join(clean_kv) + "\n")
    (root / "noisy_train_key_list.txt").write_text("\n".join(train_keys) + "\n")
    (root / "clean_test_key_list.txt").write_text("\n".join(test_keys) + "\n")
    _write_shuffled(items, rng, seed)
    labels = {k.split()[0]: int(k.split()[1]) for k in noisy_kv + clean_kv}
    mini = Miniature(root, list(CLOTHING_NAMES))
    mini.test_paths = [image_root / k[len("images/"):] for k in test_keys]
    mini.test_labels = [labels[k] for k in test_keys]
    mini.extra.update(train_keys=train_keys, labels=labels, image_root=image_root)
    return mini


# ------------------------------------------------------------------------------ WebVision
def write_webvision(root: Path, num_classes: int = 4, kept_classes: int = 3, per_class: int = 3, val_per_class: int = 1,
                    imagenet_layout: str = "index", imagenet_per_class: int = 1, seed: int = 0) -> Miniature:
    """info/train_filelist_google.txt, info/val_filelist.txt, google/, val_images_256/, info/synsets.txt and
    imagenet/val/ as class-index folders ('index', DivideMix) or wnid folders ('wnid', standard).
    The lists hold num_classes classes; a run with num_class=kept_classes keeps the first ones."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    wnids = sorted(wnids_for(num_classes))
    train_rows, val_rows, items = [], [], []
    mini = Miniature(root, [f"class {c}" for c in range(kept_classes)])
    for c in range(num_classes):
        for i in range(per_class):
            relative = f"google/q{c + 1:04d}/{(i * 7) % 5:08d}.jpg"
            train_rows.append(f"{relative} {c}")
            items.append((root / relative, c))
            if c < kept_classes:
                mini.train_paths.append(root / relative)
                mini.train_labels.append(c)
        for i in range(val_per_class):
            name = f"val{c * 100 + i:06d}.jpg"
            val_rows.append(f"{name} {c}")
            items.append((root / "val_images_256" / name, c))
            if c < kept_classes:
                mini.test_paths.append(root / "val_images_256" / name)
                mini.test_labels.append(c)
        for i in range(imagenet_per_class):
            folder = str(c) if imagenet_layout == "index" else wnids[c]
            path = root / "imagenet" / "val" / folder / f"ILSVRC2012_val_{c * 10 + i:08d}.JPEG"
            items.append((path, c))
            if c < kept_classes:
                mini.extra.setdefault("imagenet_paths", []).append(path)
                mini.extra.setdefault("imagenet_labels", []).append(c)
    (root / "info").mkdir(parents=True, exist_ok=True)
    (root / "info" / "train_filelist_google.txt").write_text("\n".join(train_rows) + "\n")
    (root / "info" / "val_filelist.txt").write_text("\n".join(val_rows) + "\n")
    (root / "info" / "synsets.txt").write_text("\n".join(f"{w} class {c}" for c, w in enumerate(wnids)) + "\n")
    _write_shuffled(items, rng, seed)
    mini.extra["wnids"] = wnids
    return mini
