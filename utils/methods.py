"""The one table of methods: for each, its script, its role, the YAML it runs with and its run name.

The scripts name their run folders with `run_name`, the grid (experiments/grid.py) turns a method
into its commands, and the results collector (experiments/collect_results.py) maps a finished run
back to its method with `method_of`: all three read this table. Adding a method = its script, its
maths (lnl/), maybe a model file, its config keys, and one line here.

A run folder is output/<run name>/<dataset>/<noise>_seed<k>/ (utils/run_dir.run_path). The run name
is the row's `run_name` with its `{key}`s filled from the config (Robust Similarity: the block
count m, so runs that differ only in m never share a folder), `real_` in front on a real-noise
dataset when the method has a real-noise script, and `_<backbone>` after it for a timm backbone.
Reads nothing and imports no torch: the grid and the collector run without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class Method:
    """One method: how it is run, what it reports, and where its runs go."""

    script: str  # its entry point
    role: str  # "detector" (a clean mask), "trainer" (test accuracy) or "both"
    config: str  # which of a dataset's YAMLs it runs with: "peft", "fft", or the method's own ("coreg", ...)
    run_name: str  # first part of the run folder; {key} = that config key's value
    flags: tuple[str, ...] = ()  # its own command-line flags
    # runs on the configured backbone: a timm one adds _<name> to the run name; the grid gives
    # --backbone to those that are not detectors only (masks come from the YAML's CLIP model)
    trains_backbone: bool = False
    real_script: Optional[str] = None  # entry point on real-noise datasets (its run name gets real_)
    label: str = ""  # the name in the tables, when it is not the key; {key} = that config key's value
    noise_label: Optional[str] = None  # takes no noise flags: its labels come from elsewhere (named so)


def _baseline(name: str, role: str, config: str = "fft") -> Method:
    return Method("main_baseline.py", role, config, f"baseline_{name.lower()}", ("--lnl_methods", name),
                  trains_backbone=True, real_script="main_real_baseline.py")


METHODS: dict[str, Method] = {
    "DeFT": Method("main_phase1.py", "detector", "peft", "phase1", real_script="main_real_phase1.py"),
    "SmallLoss": Method("main_small_loss.py", "detector", "peft", "small_loss", trains_backbone=True),
    "LabelMatch": _baseline("LabelMatch", "detector", "peft"),
    "GMM": _baseline("GMM", "both"),
    "CE": _baseline("CE", "trainer"),
    "GCE": _baseline("GCE", "trainer"),
    "ELR": _baseline("ELR", "trainer"),
    "SCE": _baseline("SCE", "trainer"),
    "TURN": Method("main_turn.py", "both", "fft", "turn", trains_backbone=True, real_script="main_real_turn.py"),
    "RobustSimilarity": Method("main_robust_similarity.py", "both", "robust_similarity", "robust_similarity_m{rs_blocks}",
                               label="RobustSimilarity (m={rs_blocks})"),
    # Co-Reg learns from CLIP's annotation of the images, not from given noisy labels; its own YAMLs
    # (config/coreg/<dataset>.yaml); it writes no clean mask
    "CoReg": Method("main_coreg.py", "trainer", "coreg", "coreg", noise_label="clip_annotation"),
}
# Adaptation on a clean subset (DeFT's phase 2): full fine-tuning with an FFT YAML, or the tuner with a
# PEFT YAML (Figure 3). Its run name says how it adapts and whose mask it trains on:
# phase2[_<backbone>][_peft][_from_<detector>], the detector left out when it is DeFT.
ADAPTATION = Method("main_phase2.py", "trainer", "fft", "phase2", trains_backbone=True,
                    real_script="main_real_phase2.py")


def run_name(method: str, cfg: Any, backbone_suffix: str = "", real: bool = False) -> str:
    """The run-folder name of `method` (a METHODS key) run with `cfg` (a Config or a mapping).

    `backbone_suffix`: "" for the YAML's CLIP model, "_<name>" for a timm backbone
    (models/timm_backbones.backbone_run_suffix); `real`: a real-noise dataset.
    """
    row = METHODS[method]
    name = row.run_name.format(**_values(cfg))
    if real and row.real_script:
        name = "real_" + name
    return name + (backbone_suffix if row.trains_backbone else "")


def adaptation_run_name(backbone_suffix: str = "", peft: bool = False, mask_method: Optional[str] = None,
                        real: bool = False) -> str:
    """phase2[_<backbone>][_peft][_from_<detector>] (real_ in front on a real-noise dataset)."""
    name = ("real_" if real else "") + ADAPTATION.run_name + backbone_suffix + ("_peft" if peft else "")
    return name + ("" if mask_method in (None, "DeFT") else f"_from_{mask_method.lower()}")


def method_of(script: str, summary: Mapping, config: Mapping) -> tuple[Optional[str], str]:
    """(the method's name in the tables, its role) of a finished run; (None, "") for another script.

    `script` is the summary's `script` (phase1, real_phase2, baseline, ...), `config` the run's
    config.yaml. Phase 2 is named by the mask it trained on: DeFT, DeFT-PEFT, GMM+FFT, ...
    """
    base = script[len("real_"):] if script.startswith("real_") else script
    if base == ADAPTATION.run_name:
        mask_method = summary.get("mask_method", "DeFT")
        if summary.get("adaptation") == "PEFT":
            return ("DeFT-PEFT" if mask_method == "DeFT" else f"{mask_method}+PEFT"), "trainer"
        return ("DeFT" if mask_method == "DeFT" else f"{mask_method}+FFT"), "trainer"
    for name, row in METHODS.items():
        if _script_name(row) == base and (not row.flags or row.flags[-1] == summary.get("method")):
            values = {**summary, **config}  # the run's settings (older runs: the summary's copy)
            return (row.label.format(**values) if row.label else name), row.role
    return None, ""


def _script_name(row: Method) -> str:
    """main_small_loss.py -> small_loss: what the script writes as `script` in its summary."""
    return row.script[len("main_"):-len(".py")]


def _values(cfg: Any) -> dict:
    return dict(cfg) if isinstance(cfg, Mapping) else cfg.to_dict()
