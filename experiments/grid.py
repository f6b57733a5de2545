"""Grid YAMLs: the format, its validation, and the expansion into the paper's command lines.

A grid names datasets x noise settings x seeds x backbones x methods; each combination is a cell, and
each cell is the commands its method means (DeFT = phase 1 with the PEFT YAML, then phase 2 with the
FFT YAML; GMM = main_baseline.py --lnl_methods GMM; ...; see METHODS, made from the table of methods in
utils/methods.py), with the run directory each command will write. experiments/sweep.py runs or
prints them. Format (a YAML mapping; unknown keys are errors):

    description: free text
    output_dir: ./output            # optional: passed as --opts output_dir=... (default: the YAMLs')
    opts: [epochs=5]                # --opts for every command (seed and output_dir have their own keys)
    seeds: [0]                      # default [0]
    datasets:                       # a paper dataset by name (config/PEFT/<name>.yaml, config/FFT/<name>.yaml,
      - cifar100                    # config/coreg/<name>.yaml), or a mapping with its own YAMLs and --opts
      - {name: fashion_mnist, peft: ./config/demo/PEFT/fashion_mnist.yaml,
         fft: ./config/demo/FFT/fashion_mnist.yaml, opts: [max_train_samples=2000]}
    noise: [sym0.2, idn0.4]         # or {sym: [0.2, 0.4], idn: [0.4]}; real-noise datasets ignore it
    backbones: [clip]               # phase-2 / baseline backbone: clip (the YAML's CLIP, no flag), vit,
                                    # resnet, convnext, mae, any timm name; or {resnet: [weights_path=...]}
    methods: [DeFT, GMM]            # see METHODS
    method_opts: {LabelMatch: [label_match_templates=simple]}
    experiments:                    # optional blocks: each sets some of datasets, noise, seeds, backbones,
      - {noise: [sym0.4], methods: [DeFT-PEFT]}   # methods, opts, method_opts, description; the rest is
                                                  # taken from the top level (a block's opts add to it)
A cell is named `dataset/noise/seed<k>/backbone/method`. Relative paths are relative to the current
directory: run from the repository root, as the paper's commands. Reads YAMLs only; imports no torch.
"""
from __future__ import annotations

import difflib
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import yaml

from utils.config import NOISE_MODES as ALL_NOISE_MODES, REAL_NOISE_DATASETS, TIMM_ALIASES, Config, ConfigError, \
    read_yaml_file
from utils.errors import UserError
from utils.methods import ADAPTATION, METHODS as TABLE, Method, adaptation_run_name, run_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE_MODES = tuple(mode for mode in ALL_NOISE_MODES if mode != "none")
DEFAULT_BACKBONE = "clip"  # the YAML's own CLIP model: no --backbone flag
GRID_KEYS = ("description", "output_dir", "opts", "seeds", "datasets", "noise", "backbones", "methods",
             "method_opts", "experiments")
BLOCK_KEYS = ("description", "opts", "seeds", "datasets", "noise", "backbones", "methods", "method_opts")
YAML_KINDS = ("peft", "fft", "coreg", "robust_similarity")  # a dataset's YAMLs; a method runs with one of them (utils/methods.py)
DATASET_KEYS = ("name", *YAML_KINDS, "opts")
RESERVED_OPTS = {"seed": "seeds", "output_dir": "output_dir", "noise_mode": "noise", "noise_ratio": "noise",
                 "backbone": "backbones", "lnl_methods": "methods", "clean_mask": "methods"}


class GridError(UserError, ValueError):
    """A grid YAML that cannot be expanded: says which key, what was found and what was expected."""


# ---------------------------------------------------------------- methods: which scripts a method means
ADAPT = "adaptation"  # phase 2 (utils/methods.py ADAPTATION) on the clean mask of the cell's first step


@dataclass(frozen=True)
class Step:
    """One script call of a grid method: a row of the table of methods (or ADAPT) and its YAML."""

    method: str  # a key of utils/methods.py METHODS, or ADAPT
    config: str  # which of the dataset's YAMLs: peft | fft | coreg

    @property
    def row(self) -> Method:
        return ADAPTATION if self.method == ADAPT else TABLE[self.method]

    @property
    def takes_backbone(self) -> bool:
        """Gets --backbone: it trains a backbone and is not a detector (masks come from the YAML's CLIP)."""
        return self.row.trains_backbone and self.row.role != "detector"


# Every method of the table alone; DeFT = phase 1, then phase 2 on its mask (Tables 2-4), or phase 1
# alone (Tables 1 and 8), or phase 1 then PEFT adaptation (Figure 3); and every other detector's
# mask, then DeFT's phase 2 (main_phase2.py --clean_mask).
METHODS: dict[str, tuple[Step, ...]] = {
    **{name: (Step(name, row.config),) for name, row in TABLE.items()},
    "DeFT": (Step("DeFT", "peft"), Step(ADAPT, "fft")),
    "DeFT-phase1": (Step("DeFT", "peft"),),
    "DeFT-PEFT": (Step("DeFT", "peft"), Step(ADAPT, "peft")),
    **{f"{name}+FFT": (Step(name, row.config), Step(ADAPT, "fft"))
       for name, row in TABLE.items() if name != "DeFT" and row.role != "trainer"},
}


# ---------------------------------------------------------------- the expanded grid
@dataclass(frozen=True)
class Dataset:
    """A dataset of the grid: its name, its YAMLs (PEFT, FFT, Co-Reg's), and --opts for its commands."""

    name: str
    peft: Optional[str]
    fft: Optional[str]
    opts: tuple[str, ...] = ()
    coreg: Optional[str] = None
    robust_similarity: Optional[str] = None


@dataclass(frozen=True)
class Command:
    """One script call: the text after `python` (without --continue), and where its run will be."""

    script: str  # main_phase1.py
    args: tuple[str, ...]
    run_dir: Optional[str]  # predicted run directory; None where it cannot be predicted
    requires: tuple[tuple[str, ...], ...] = ()  # keys of the commands whose output it reads

    @property
    def key(self) -> tuple[str, ...]:
        return (self.script, *self.args)

    def argv(self, torchrun: int = 0) -> list[str]:
        """The words of the command line as printed (`python ...` or `torchrun ... main_x.py ...`)."""
        launcher = ["python"] if torchrun <= 0 else ["torchrun", "--standalone", "--nproc_per_node", str(torchrun)]
        return [*launcher, self.script, *self.args, "--continue"]

    def text(self, torchrun: int = 0) -> str:
        return shlex.join(self.argv(torchrun))


@dataclass(frozen=True)
class Cell:
    """One table cell's runs: dataset, noise setting, seed, backbone, method, and its commands in order."""

    dataset: str
    noise: str  # sym0.2, idn0.4 or real
    seed: int
    backbone: str
    method: str
    commands: tuple[Command, ...]

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.noise}/seed{self.seed}/{self.backbone}/{self.method}"


@dataclass
class Grid:
    """A validated grid: where it came from, and its cells in order."""

    path: str
    cells: list[Cell] = field(default_factory=list)
    description: str = ""


# ---------------------------------------------------------------- reading and validating a grid
def load_grid(path: str) -> Grid:
    """Read, validate and expand the grid YAML at `path` (GridError on any problem)."""
    try:
        data = read_yaml_file(path)
    except ConfigError as err:
        raise GridError(f"grid {path}: {err}") from None
    if not isinstance(data, dict):
        raise GridError(f"grid {path} must hold a mapping (datasets:, noise:, seeds:, methods:, ...), "
                        f"found {type(data).__name__}")
    return expand_grid(data, path)


def expand_grid(data: dict, source: str = "the grid") -> Grid:
    """The cells of a grid mapping (already parsed YAML), in grid order."""
    _check_keys(data, GRID_KEYS, source)
    output_dir = data.get("output_dir")
    if output_dir is not None and not isinstance(output_dir, str):
        raise GridError(f"{source}: output_dir must be a path, found {output_dir!r}")
    top_opts = _opts(data.get("opts"), f"{source}: opts")
    definitions = _dataset_definitions(data.get("datasets"), source)
    blocks = data.get("experiments")
    if blocks is None:
        blocks = [{}]
    elif not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        raise GridError(f"{source}: experiments must be a non-empty list of mappings, found {blocks!r}")
    grid = Grid(source, description=str(data.get("description", "")))
    seen: set[str] = set()
    for number, block in enumerate(blocks, 1):
        where = f"{source}: experiments[{number}]" if "experiments" in data else source
        _check_keys(block, BLOCK_KEYS, where)
        merged = {key: block.get(key, data.get(key)) for key in BLOCK_KEYS if key not in ("opts", "description")}
        opts = _merge_opts(top_opts, _opts(block.get("opts"), f"{where}: opts"))
        for cell in _block_cells(merged, opts, definitions, output_dir, where):
            if cell.name not in seen:  # the same cell in two blocks runs once
                seen.add(cell.name)
                grid.cells.append(cell)
    if not grid.cells:
        raise GridError(f"{source}: the grid has no cells (no methods or no datasets)")
    _check_run_dirs(grid.cells, source)
    return grid


def _check_run_dirs(cells: list[Cell], source: str) -> None:
    """Refuse two different commands that would write the same run directory (e.g. phase 1 with other opts)."""
    owners: dict[str, Command] = {}
    for cell in cells:
        for command in cell.commands:
            if command.run_dir is None:
                continue
            first = owners.setdefault(os.path.normpath(command.run_dir), command)
            if first.key != command.key:
                raise GridError(f"{source}: two different commands write to {command.run_dir}:\n  {first.text()}\n  "
                                f"{command.text()}\nthe second would take the first's finished run for its own (or "
                                "refuse to resume it); give both the same opts, or run them from separate grids "
                                "with different output_dir")


def _hint(name: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `options` (ignoring case), or ''."""
    options = list(options)
    close = difflib.get_close_matches(str(name).lower(), [o.lower() for o in options], n=1)
    return f" (did you mean '{options[[o.lower() for o in options].index(close[0])]}'?)" if close else ""


def _check_keys(mapping: dict, allowed: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise GridError(f"{where}: unknown key '{key}'{_hint(key, allowed)}; expected one of {', '.join(allowed)}")


def _opts(value, where: str) -> dict[str, str]:
    """--opts as an ordered {key: raw value}; every key must be a config key and not one the grid sets."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        raise GridError(f"{where}: expected a list of key=value strings, found {value!r}")
    parsed: dict[str, str] = {}
    valid = list(Config().to_dict())
    for item in value:
        if not isinstance(item, str) or "=" not in item:
            raise GridError(f"{where}: expected key=value, found {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key in RESERVED_OPTS:
            raise GridError(f"{where}: '{key}' is set by the grid's '{RESERVED_OPTS[key]}' key, not by opts")
        if key not in valid:
            raise GridError(f"{where}: '{key}' is not a config key{_hint(key, valid)}")
        if key in parsed:
            raise GridError(f"{where}: '{key}' is given twice")
        parsed[key] = raw
    return parsed


def _merge_opts(*layers: dict[str, str]) -> dict[str, str]:
    """Later layers override earlier ones (grid < block < dataset < backbone < method)."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def _dataset_definitions(value, source: str) -> dict[str, Dataset]:
    """The mappings of the top-level `datasets` list, by name (names alone are resolved later)."""
    definitions: dict[str, Dataset] = {}
    for item in value or []:
        if isinstance(item, dict):
            dataset = _dataset_entry(item, f"{source}: datasets")
            if dataset.name in definitions:
                raise GridError(f"{source}: datasets: '{dataset.name}' is defined twice")
            definitions[dataset.name] = dataset
    return definitions


def _dataset_entry(item: dict, where: str) -> Dataset:
    _check_keys(item, DATASET_KEYS, where)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise GridError(f"{where}: a dataset mapping needs a name, found {item!r}")
    if not any(kind in item for kind in YAML_KINDS):
        raise GridError(f"{where}: dataset '{name}' needs a YAML path ({', '.join(YAML_KINDS)})")
    for key in YAML_KINDS:
        if key in item and not isinstance(item[key], str):
            raise GridError(f"{where}: dataset '{name}': {key} must be a YAML path, found {item[key]!r}")
    return Dataset(name, item.get("peft"), item.get("fft"),
                   tuple(f"{k}={v}" for k, v in _opts(item.get("opts"), f"{where}: {name}: opts").items()),
                   item.get("coreg"), item.get("robust_similarity"))


def paper_datasets() -> list[str]:
    """Datasets with both config/PEFT/<name>.yaml and config/FFT/<name>.yaml in this repository."""
    names = []
    for file in sorted(os.listdir(os.path.join(ROOT, "config", "PEFT"))):
        name, ext = os.path.splitext(file)
        if ext == ".yaml" and os.path.isfile(os.path.join(ROOT, "config", "FFT", file)):
            names.append(name)
    return names


def _resolve_datasets(value, definitions: dict[str, Dataset], where: str) -> list[Dataset]:
    if not isinstance(value, list) or not value:
        raise GridError(f"{where}: datasets must be a non-empty list, found {value!r}")
    known = paper_datasets()
    resolved = []
    for item in value:
        if isinstance(item, dict):
            item = _dataset_entry(item, f"{where}: datasets")
            resolved.append(definitions.get(item.name, item))
        elif isinstance(item, str) and item in definitions:
            resolved.append(definitions[item])
        elif isinstance(item, str) and item in known:
            own = {kind: f"./config/{kind}/{item}.yaml" for kind in ("coreg", "robust_similarity")}
            resolved.append(Dataset(item, f"./config/PEFT/{item}.yaml", f"./config/FFT/{item}.yaml",
                                    **{kind: path for kind, path in own.items()
                                       if os.path.isfile(os.path.join(ROOT, path))}))
        else:
            raise GridError(f"{where}: unknown dataset {item!r}; expected one of {', '.join(known)} "
                            "(config/PEFT and config/FFT YAMLs), a name defined at the top level, or a mapping "
                            "{name: ..., peft: PATH, fft: PATH}")
    return resolved


_NOISE = re.compile(r"(.+?)(0|1|0\.\d+|1\.0+)")


def parse_noise(value, where: str = "noise") -> list[tuple[str, float]]:
    """[('sym', 0.2), ...] from ['sym0.2', ...] or {sym: [0.2, ...]}; modes checked, ratios in [0, 1]."""
    pairs: list[tuple[str, object]] = []
    if isinstance(value, dict):
        for mode, ratios in value.items():
            ratios = ratios if isinstance(ratios, list) else [ratios]
            pairs += [(str(mode), ratio) for ratio in ratios]
    elif isinstance(value, list):
        for item in value:
            match = _NOISE.fullmatch(str(item))
            if not match:
                raise GridError(f"{where}: {item!r} is not a noise setting like sym0.2 or idn0.4")
            pairs.append((match.group(1), match.group(2)))
    else:
        raise GridError(f"{where}: expected a list like [sym0.2, idn0.4] or a mapping like "
                        f"{{sym: [0.2, 0.4]}}, found {value!r}")
    settings = []
    for mode, ratio in pairs:
        if mode not in NOISE_MODES:
            raise GridError(f"{where}: unknown noise mode {mode!r}; expected one of {', '.join(NOISE_MODES)}")
        try:
            ratio = float(ratio)
        except (TypeError, ValueError):
            raise GridError(f"{where}: noise ratio {ratio!r} of {mode} is not a number") from None
        if not 0.0 <= ratio <= 1.0:
            raise GridError(f"{where}: noise ratio {ratio} of {mode} is outside [0, 1]")
        if (mode, ratio) not in settings:
            settings.append((mode, ratio))
    return settings


def _seeds(value, where: str) -> list[int]:
    value = [0] if value is None else value
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and s >= 0 for s in value):
        raise GridError(f"{where}: seeds must be a non-empty list of integers >= 0, found {value!r}")
    return list(dict.fromkeys(value))


def _backbones(value, where: str) -> list[tuple[str, dict[str, str]]]:
    """[(name, opts)] from [clip, resnet] or {resnet: [weights_path=...]}."""
    value = [DEFAULT_BACKBONE] if value is None else value
    if isinstance(value, dict):
        return [(str(name), _opts(opts, f"{where}: backbones: {name}")) for name, opts in value.items()]
    if not isinstance(value, list) or not value:
        raise GridError(f"{where}: backbones must be a non-empty list or a mapping, found {value!r}")
    entries = []
    for item in value:
        if isinstance(item, dict) and len(item) == 1:
            (name, opts), = item.items()
            entries.append((str(name), _opts(opts, f"{where}: backbones: {name}")))
        elif isinstance(item, str) and item:
            entries.append((item, {}))
        else:
            raise GridError(f"{where}: backbones: expected a name or {{name: [key=value]}}, found {item!r}")
    return entries


def _methods(value, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise GridError(f"{where}: methods must be a non-empty list, found {value!r}")
    for method in value:
        if method not in METHODS:
            raise GridError(f"{where}: unknown method {method!r}{_hint(method, METHODS)}; "
                            f"expected one of {', '.join(METHODS)}")
    return list(dict.fromkeys(value))


def _method_opts(value, methods: Iterable[str], where: str) -> dict[str, dict[str, str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{where}: method_opts must map a method to a list of key=value, found {value!r}")
    for method in value:
        if method not in METHODS:
            raise GridError(f"{where}: method_opts: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return {m: _opts(value.get(m), f"{where}: method_opts: {m}") for m in methods}


# ---------------------------------------------------------------- cells and commands
@dataclass(frozen=True)
class _YamlFacts:
    """What the runner needs from a config YAML: dataset, seed, output dir, real noise, CIFAR-N label set."""

    dataset: str
    seed: int
    output_dir: str
    real_noise: bool
    label_key: Optional[str]
    values: dict = field(default_factory=dict)  # every config key: defaults < YAML < --opts (run names)


def _yaml_facts(path: str, opts: dict[str, str], where: str) -> _YamlFacts:
    if not os.path.isfile(path):
        raise GridError(f"{where}: config YAML {path} not found (relative paths are read from the current "
                        f"directory {os.getcwd()}; run from the repository root)")
    try:
        values = read_yaml_file(path) or {}
    except ConfigError as err:
        raise GridError(f"{where}: {err}") from None
    if not isinstance(values, dict):
        raise GridError(f"{where}: config YAML {path} must hold a mapping")
    defaults = Config()

    def value(key):
        if key in opts:
            return read_scalar(opts[key])
        return values.get(key, getattr(defaults, key))

    mode, dataset = value("noise_mode"), value("dataset")
    return _YamlFacts(str(dataset), int(values.get("seed", defaults.seed)), str(value("output_dir")),
                      mode == "real" or dataset in REAL_NOISE_DATASETS,
                      value("cifar_n_label_key") if mode == "real" else None,
                      {key: value(key) for key in defaults.to_dict()})


def read_scalar(raw: str):
    """An --opts value as the scripts read it (a YAML scalar)."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _block_cells(block: dict, opts: dict[str, str], definitions: dict[str, Dataset], output_dir: Optional[str],
                 where: str) -> list[Cell]:
    datasets = _resolve_datasets(block.get("datasets"), definitions, where)
    seeds = _seeds(block.get("seeds"), where)
    backbones = _backbones(block.get("backbones"), where)
    methods = _methods(block.get("methods"), where)
    method_opts = _method_opts(block.get("method_opts"), methods, where)
    noise = block.get("noise")
    cells = []
    for dataset in datasets:
        dataset_opts = _merge_opts(opts, dict(o.split("=", 1) for o in dataset.opts))
        real = _dataset_is_real(dataset, dataset_opts, where)
        if real:
            settings: list[Optional[tuple[str, float]]] = [None]
        elif noise is None:
            raise GridError(f"{where}: dataset '{dataset.name}' has synthetic noise: give noise settings, "
                            "e.g. noise: [sym0.2, idn0.4]")
        else:
            settings = list(parse_noise(noise, f"{where}: noise"))
        for setting in settings:
            for seed in seeds:
                for backbone, backbone_opts in backbones:
                    for method in methods:
                        steps = METHODS[method]
                        noise_label = steps[0].row.noise_label
                        if noise_label is not None and setting != settings[0]:
                            continue  # its labels are not the noisy ones: one cell, whatever the noise grid
                        cell_setting = None if noise_label is not None else setting
                        if backbone != DEFAULT_BACKBONE and not any(s.takes_backbone for s in steps):
                            raise GridError(f"{where}: method {method} trains no backbone (it only detects); "
                                            f"list it in a block with backbones [{DEFAULT_BACKBONE}], not {backbone}")
                        layers = (dataset_opts, backbone_opts, method_opts.get(method, {}))
                        commands = _commands(dataset, cell_setting, seed, backbone, method, layers, output_dir,
                                             f"{where}: {dataset.name}/{method}")
                        label = noise_label or ("real" if setting is None else f"{setting[0]}{setting[1]:g}")
                        cells.append(Cell(dataset.name, label, seed, backbone,
                                          _method_label(method, dataset, layers, where), commands))
    return cells


def _method_label(method: str, dataset: Dataset, layers: tuple[dict, dict, dict], where: str) -> str:
    """The method's name in the cell: the table's label where it has one, e.g. RobustSimilarity (m=4)."""
    first = METHODS[method][0]
    if first.method == ADAPT or not first.row.label or method != first.method:
        return method
    path = getattr(dataset, first.config)
    values = _yaml_facts(path, _merge_opts(layers[0], layers[2]), where).values if path else {}
    return first.row.label.format(**values)


def _dataset_is_real(dataset: Dataset, opts: dict[str, str], where: str) -> bool:
    facts = [_yaml_facts(path, opts, f"{where}: dataset '{dataset.name}'")
             for path in (getattr(dataset, kind) for kind in YAML_KINDS) if path]
    if len({f.real_noise for f in facts}) > 1:
        raise GridError(f"{where}: dataset '{dataset.name}': its PEFT and FFT YAMLs disagree on real label noise")
    return facts[0].real_noise


def _commands(dataset: Dataset, setting: Optional[tuple[str, float]], seed: int, backbone: str, method: str,
              layers: tuple[dict, dict, dict], output_dir: Optional[str], where: str) -> tuple[Command, ...]:
    """The commands of one cell: the method's steps, later steps requiring the first one's mask.

    `layers`: the (dataset, backbone, method) --opts; the backbone's only reach the steps it trains.
    """
    dataset_opts, backbone_opts, method_opts = layers
    commands: list[Command] = []
    for index, step in enumerate(METHODS[method]):
        producer = commands[0] if index else None
        step_backbone = backbone if step.takes_backbone else DEFAULT_BACKBONE
        opts = _merge_opts(dataset_opts, backbone_opts if step.takes_backbone else {}, method_opts)
        commands.append(_command(dataset, setting, seed, step_backbone, step, opts, output_dir, where,
                                 producer, METHODS[method][0] if index else None))
    return tuple(commands)


def _command(dataset: Dataset, setting, seed: int, backbone: str, step: Step, opts: dict[str, str],
             output_dir: Optional[str], where: str, producer: Optional[Command],
             producer_step: Optional[Step]) -> Command:
    path = getattr(dataset, step.config)
    if not path:
        kind = step.config.upper() if step.config in ("peft", "fft") else step.config
        raise GridError(f"{where}: needs the {kind} YAML of dataset '{dataset.name}' "
                        f"(add {step.config}: PATH to its definition)")
    facts = _yaml_facts(path, opts, where)
    real = facts.real_noise
    script = step.row.real_script if real and step.row.real_script else step.row.script
    args = ["--cfg", path]
    if setting is not None:
        args += ["--noise_mode", setting[0], "--noise_ratio", f"{setting[1]:g}"]
    args += list(step.row.flags)
    if backbone != DEFAULT_BACKBONE:
        args += ["--backbone", backbone]
    mask_method = None
    if producer is not None and producer_step is not None and producer_step.method != "DeFT":
        if producer.run_dir is None:
            raise GridError(f"{where}: cannot tell where the mask of {producer.text()} will be")
        args += ["--clean_mask", os.path.join(producer.run_dir, "clean_mask.npy")]
        mask_method = producer_step.method  # the "method" its clean_mask.json names
    extra = dict(opts)
    if seed != facts.seed:
        extra["seed"] = str(seed)
    out = facts.output_dir
    if output_dir is not None and os.path.normpath(output_dir) != os.path.normpath(facts.output_dir):
        extra["output_dir"] = output_dir
        out = output_dir
    if extra:
        args += ["--opts", *(f"{k}={v}" for k, v in extra.items())]
    run_dir = _run_dir(out, step, facts, setting, seed, backbone, mask_method)
    if producer is not None and producer_step is not None and producer_step.method == "DeFT" and run_dir:
        # phase 2 finds phase 1's mask by its own dataset, noise, seed and output_dir
        expected = os.path.join(out, run_name("DeFT", facts.values, real=real), *run_dir.split(os.sep)[-2:])
        if os.path.normpath(expected) != os.path.normpath(str(producer.run_dir)):
            raise GridError(f"{where}: phase 2 ({path}) would look for phase 1's mask in {expected}, but phase 1 "
                            f"({dataset.peft}) writes to {producer.run_dir}: give both YAMLs the same dataset and "
                            "output_dir (or set the grid's output_dir)")
    return Command(script, tuple(args), run_dir, (producer.key,) if producer is not None else ())


def _run_dir(output_dir: str, step: Step, facts: _YamlFacts, setting, seed: int, backbone: str,
             mask_method: Optional[str]) -> Optional[str]:
    """Where the script will write (utils/run_dir.run_path, named by utils/methods.py); None if unknown."""
    if backbone == DEFAULT_BACKBONE:
        suffix = ""
    elif backbone in TIMM_ALIASES:
        suffix = f"_{backbone}"
    else:
        return None  # any other name: only the script knows whether it is a CLIP or a timm model
    real = facts.real_noise
    if step.method == ADAPT:
        name = adaptation_run_name(suffix, step.config == "peft", mask_method, real)
    else:
        name = run_name(step.method, facts.values, suffix, real)
    if real:
        leaf = f"{facts.label_key}_seed{seed}" if facts.label_key else f"seed{seed}"
    elif setting is None:  # labels of its own (Co-Reg): the YAML's noise settings, as utils/run_dir.noise_tag
        leaf = f"{facts.values['noise_mode'] or 'none'}{float(facts.values['noise_ratio'])}_seed{seed}"
    else:
        leaf = f"{setting[0]}{float(setting[1])}_seed{seed}"
    return os.path.join(output_dir, name, facts.dataset, leaf)
