"""The offline miniature's Table 1 and Table 2: every detector and method on the paper's noise grid.

    make miniature-tables                                     # = python tools/miniature_tables.py
    python tools/miniature_tables.py --only 'fashion_mnist/sym0.4/*'         # a part of the grid
    python tools/miniature_tables.py --jobs 1                                # one run at a time

1. pre-train the demo's tiny CLIP (cached in output/demo/tiny_clip/; nothing to do when present);
2. run grids/miniature.yaml with the sweep runner (experiments/sweep.py), two independent jobs at a time
   (`--jobs`, each with cores/jobs threads); every command carries --continue, so running this again
   continues an interrupted grid and redoes nothing that finished;
3. collect the runs into results/miniature/: results.md (the tables, mean ± std over the seeds),
   results.csv (one row per run), results_cells.csv (one row per table cell), figures/ (noise-ratio
   sweeps per dataset and noise mode, each with its data as JSON) and run_info.json (the command, the
   date, the machine, the time it took and the commit).
Measured: 1 h 55 min on a 2-core CPU shared with other jobs (see grids/miniature.yaml for what was cut).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.pretrain_tiny_clip import PretrainSettings, pretrain_cached  # noqa: E402
from experiments import collect_results, sweep  # noqa: E402
from utils.config import load_yaml  # noqa: E402
from utils.io import atomic_write_json  # noqa: E402

GRID = "grids/miniature.yaml"
OUT = "results/miniature"
DEMO_PEFT = ROOT / "config" / "demo" / "PEFT" / "fashion_mnist.yaml"


def main(argv: list[str] | None = None) -> int:
    """Pre-train (if needed), run the grid, collect the tables; the sweep's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=GRID, help=f"grid YAML (default {GRID})")
    parser.add_argument("--out", default=OUT, help=f"where the tables go (default {OUT})")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="only these cells (as experiments.sweep --only); the tables then hold only them")
    parser.add_argument("--jobs", type=int, default=2, metavar="N",
                        help="independent runs at once (default 2, this machine's cores)")
    parser.add_argument("--no_pretrain", action="store_true",
                        help="do not pre-train the tiny CLIP (the grid's YAMLs name other weights)")
    args = parser.parse_args(argv)
    started = time.time()

    if not args.no_pretrain:
        print("== 1. the tiny CLIP (pre-trained once, then cached)", flush=True)
        demo = load_yaml(str(DEMO_PEFT))
        pretrain_cached(PretrainSettings(data_path=demo["data_path"]), ROOT / demo["pretrained"])

    print(f"== 2. the grid {args.grid}", flush=True)
    status = sweep.main([args.grid, f"--jobs={args.jobs}", *(f"--only={pattern}" for pattern in args.only)])
    if status == 2:  # a bad grid: nothing ran
        return status

    print(f"== 3. the tables -> {args.out}", flush=True)
    runs = load_yaml(args.grid).get("output_dir", "output")
    collect_results.main([runs, "--out", args.out, "--figures"])
    atomic_write_json(os.path.join(args.out, "run_info.json"), {
        "command": " ".join(["python tools/miniature_tables.py", *(argv if argv is not None else sys.argv[1:])]),
        "grid": args.grid, "runs": runs, "jobs": args.jobs, "sweep_exit_status": status,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": round(time.time() - started),
        "machine": {"system": platform.platform(), "cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": _torch_version()},
        "commit": _git_commit()})
    print(f"{round(time.time() - started)} s; tables in {args.out}/results.md", flush=True)
    return status


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
