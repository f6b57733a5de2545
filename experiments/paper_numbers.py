"""The paper's reported numbers (results/paper_numbers.yaml): loading, validation and look-up by table cell.

A cell is (dataset, noise, method, backbone, metric) in the results collector's terms; a number
without a backbone applies to every backbone. Every number names its source tag (the `sources` of results/paper_numbers.yaml).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Optional

from utils.config import ConfigError, read_yaml_file
from utils.errors import UserError

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results",
                            "paper_numbers.yaml")
METRICS = ("precision", "recall", "f1", "auroc", "best_acc", "last_acc")
SOURCE_TAGS = ("P", "CAP", "WZ", "NB", "ZH", "CODE")
REQUIRED = ("table", "dataset", "noise", "method", "metric", "value", "source")
OPTIONAL = ("backbone", "note")
_SOURCE = re.compile(r"(\[(" + "|".join(SOURCE_TAGS) + r")\])+")
_NOISE = re.compile(r"real|none|[a-z_0-9]+?(0|1|0\.\d+|1\.0+)")


class PaperNumbersError(UserError, ValueError):
    """The paper-numbers file is missing or malformed."""


@dataclass(frozen=True)
class PaperNumber:
    """One number the paper reports, with where it stands and where it comes from."""

    table: str
    dataset: str
    noise: str
    method: str
    backbone: Optional[str]
    metric: str
    value: float
    source: str
    note: str = ""


class PaperNumbers:
    """The loaded numbers (the collector places each in its table cell) and the paper's claims."""

    def __init__(self, numbers: list[PaperNumber], claims: Optional[list[dict]] = None) -> None:
        self.numbers = list(numbers)
        self.claims = list(claims or [])

    def __len__(self) -> int:
        return len(self.numbers)


def empty() -> PaperNumbers:
    """No paper numbers (the collector with --paper none)."""
    return PaperNumbers([])


def load_paper_numbers(path: str = DEFAULT_PATH) -> PaperNumbers:
    """Read and validate a paper-numbers YAML (PaperNumbersError naming the file and entry on any problem)."""
    try:
        data = read_yaml_file(path)
    except ConfigError as err:
        raise PaperNumbersError(f"paper numbers: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("numbers"), list):
        raise PaperNumbersError(f"{path}: expected a mapping with a 'numbers' list (see results/paper_numbers.yaml)")
    unknown = set(data) - {"sources", "numbers", "claims"}
    if unknown:
        raise PaperNumbersError(f"{path}: unknown top-level key(s) {sorted(unknown)}; "
                                "expected sources, numbers, claims")
    numbers, seen = [], {}
    for index, entry in enumerate(data["numbers"], 1):
        number = _number(entry, f"{path}: numbers[{index}]")
        key = (number.dataset, number.noise, number.method, number.backbone, number.metric)
        if key in seen:
            raise PaperNumbersError(f"{path}: numbers[{index}] repeats the cell of numbers[{seen[key]}] {key}; "
                                    "keep one")
        seen[key] = index
        numbers.append(number)
    claims = data.get("claims") or []
    if not isinstance(claims, list) or not all(isinstance(c, dict) and _SOURCE.fullmatch(str(c.get("source", "")))
                                               for c in claims):
        raise PaperNumbersError(f"{path}: claims must be a list of mappings, each with a source tag like [NB]")
    return PaperNumbers(numbers, claims)


def _number(entry, where: str) -> PaperNumber:
    if not isinstance(entry, dict):
        raise PaperNumbersError(f"{where}: expected a mapping, found {entry!r}")
    missing = [k for k in REQUIRED if k not in entry]
    extra = [k for k in entry if k not in REQUIRED + OPTIONAL]
    if missing or extra:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + \
            ([f"unknown key(s) {', '.join(extra)}"] if extra else [])
        raise PaperNumbersError(f"{where}: {'; '.join(problems)} "
                                f"(expected {', '.join(REQUIRED)}, optionally {', '.join(OPTIONAL)})")
    value = entry["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 100:
        raise PaperNumbersError(f"{where}: value must be a percentage in [0, 100], found {value!r}")
    if entry["metric"] not in METRICS:
        raise PaperNumbersError(f"{where}: metric {entry['metric']!r} is not one of {', '.join(METRICS)}")
    if not _SOURCE.fullmatch(str(entry["source"])):
        raise PaperNumbersError(f"{where}: source {entry['source']!r} must be tags like [NB] or [WZ][NB] "
                                f"(known: {', '.join(SOURCE_TAGS)})")
    if not _NOISE.fullmatch(str(entry["noise"])):
        raise PaperNumbersError(f"{where}: noise {entry['noise']!r} must look like sym0.2, idn0.4 or real")
    for key in ("table", "dataset", "method"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise PaperNumbersError(f"{where}: {key} must be a non-empty string (quote table numbers: \"3\"), "
                                    f"found {entry[key]!r}")
    backbone = entry.get("backbone")
    if backbone is not None and not isinstance(backbone, str):
        raise PaperNumbersError(f"{where}: backbone must be a string, found {backbone!r}")
    return PaperNumber(entry["table"], entry["dataset"], str(entry["noise"]), entry["method"], backbone,
                       entry["metric"], float(value), str(entry["source"]), str(entry.get("note", "")))
