"""The offline miniature's Table 1, Table 2 and Figure 3: every detector and method on the paper's noise grid.

    make miniature-tables                                     # = python tools/miniature_tables.py (shifted)
    python tools/miniature_tables.py --variant in_distribution               # the first miniature's grid
    python tools/miniature_tables.py --only 'fashion_mnist/sym0.4/*'         # a part of the grid
    python tools/miniature_tables.py --jobs 1                                # one run at a time

1. pre-train the variant's tiny CLIP (tools/miniature_variants.py; cached in output/demo/tiny_clip/,
   nothing to do when present);
2. run the variant's grid (shifted: grids/miniature.yaml; in_distribution:
   grids/miniature_in_distribution.yaml) with the sweep runner (experiments/sweep.py), two
   independent jobs at a time (`--jobs`, each with cores/jobs threads); every command carries
   --continue, so running this again continues an interrupted grid and redoes nothing that finished.
   It refuses a runs folder that holds another variant's runs (other rendering in their config.yaml);
3. collect the runs into results/miniature/ (shifted) or results/miniature_in_distribution/:
   results.md (the variant's clean-label regime line from its regime JSON, when measured, then the
   tables, mean ± std over the seeds), results.csv (one row per run), results_cells.csv (one row per
   table cell), figures/ (noise-ratio sweeps per dataset and noise mode, each with its data as JSON)
   and run_info.json (the command, the date, the machine, the time it took and the commit). The
   regime JSON (tools/miniature_regime.py) is read, never written.
Time: the in-distribution grid took 1 h 55 min on a 2-core CPU shared with other jobs; the shifted
grid's estimate is in grids/miniature.yaml.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets.rendering import Rendering  # noqa: E402
from experiments import collect_results, sweep  # noqa: E402
from tools.miniature_variants import DEFAULT_VARIANT, VARIANTS, get_variant, read_regime, regime_line  # noqa: E402
from tools.pretrain_tiny_clip import pretrain_cached  # noqa: E402
from utils.config import load_yaml  # noqa: E402
from utils.io import atomic_write_json, atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Pre-train (if needed), run the grid, collect the tables; the sweep's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=sorted(VARIANTS),
                        help=f"which miniature (tools/miniature_variants.py; default {DEFAULT_VARIANT})")
    parser.add_argument("--grid", default=None, help="grid YAML (default: the variant's, e.g. grids/miniature.yaml)")
    parser.add_argument("--out", default=None,
                        help="where the tables go (default: the variant's, e.g. results/miniature)")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="only these cells (as experiments.sweep --only); the tables then hold only them")
    parser.add_argument("--jobs", type=int, default=2, metavar="N",
                        help="independent runs at once (default 2, this machine's cores)")
    parser.add_argument("--no_pretrain", action="store_true",
                        help="do not pre-train the tiny CLIP (the grid's YAMLs name other weights)")
    args = parser.parse_args(argv)
    variant = get_variant(args.variant)
    grid, out = args.grid or variant.grid, args.out or variant.results
    started = time.time()

    if not args.no_pretrain:
        print(f"== 1. the tiny CLIP of the {variant.name} miniature (pre-trained once, then cached)", flush=True)
        pretrain_cached(variant.settings(), variant.checkpoint())

    runs = load_yaml(grid).get("output_dir", "output")
    others = foreign_runs(runs, Rendering.of(variant.config()))
    if others:
        print(f"{runs} holds {len(others)} runs whose images are rendered otherwise than the {variant.name} "
              f"miniature's, e.g. {others[0]}: another variant's runs, which --continue would take as this grid's "
              "(grids/miniature.yaml wrote the in-distribution miniature's runs to output/miniature before it became "
              f"the shifted grid); move that folder away, e.g. mv {runs} {runs}_other, and run again", file=sys.stderr)
        return 2

    print(f"== 2. the grid {grid}", flush=True)
    status = sweep.main([grid, f"--jobs={args.jobs}", *(f"--only={pattern}" for pattern in args.only)])
    if status == 2:  # a bad grid: nothing ran
        return status

    print(f"== 3. the tables -> {out}", flush=True)
    markdown = collect_results.main([runs, "--out", out, "--figures"])
    regime = read_regime(variant)
    if regime is not None:  # what there is to gain, above the tables
        atomic_write_text(os.path.join(out, "results.md"),
                          f"{regime_paragraph(regime, variant.regime)}\n\n{markdown}")
    atomic_write_json(os.path.join(out, "run_info.json"), {
        "command": " ".join(["python tools/miniature_tables.py", *(argv if argv is not None else sys.argv[1:])]),
        "variant": variant.name, "grid": grid, "runs": runs, "jobs": args.jobs, "sweep_exit_status": status,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": round(time.time() - started),
        "machine": {"system": platform.platform(), "cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": _torch_version()},
        "commit": _git_commit()})
    print(f"{round(time.time() - started)} s; tables in {out}/results.md", flush=True)
    return status


def regime_paragraph(regime: dict, path: str) -> str:
    """The first paragraph of results.md: the variant's clean-label regime, and where it comes from."""
    line = regime_line(regime)
    return (f"{line[0].upper()}{line[1:]} (mean over the seeds, {path}; measured on clean labels before any "
            "noisy-label method ran).")


def foreign_runs(runs: str, rendering: Rendering) -> list[str]:
    """Run folders under `runs` (<run name>/<dataset>/<noise>_seed<k>/) whose config.yaml renders the images
    otherwise than `rendering`: another variant's runs, which --continue would take as this grid's."""
    found = []
    for config in sorted(Path(runs).glob("*/*/*/config.yaml")):
        values = load_yaml(str(config)) or {}
        if Rendering.of(SimpleNamespace(**values)) != rendering:
            found.append(str(config.parent))
    return found


def _torch_version() -> str:
    import torch

    return torch.__version__


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
