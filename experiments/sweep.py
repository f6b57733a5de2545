"""Sweeps: run the commands of a grid (experiments/grid.py) in order, or print them for a cluster array job.

    python -m experiments.sweep grids/table2.yaml                  # run every command here, one after the other
    python -m experiments.sweep grids/table2.yaml --torchrun 4     # each command on 4 GPUs (torchrun)
    python -m experiments.sweep grids/miniature.yaml --jobs 2      # 2 independent jobs at a time (CPU cores)
    python -m experiments.sweep grids/table2.yaml --print          # one line per job, for an array job
    python -m experiments.sweep grids/table2.yaml --print --torchrun 4
    python -m experiments.sweep grids/table2.yaml --dry_run        # every command and the state of its run
    python -m experiments.sweep grids/table2.yaml --only 'cifar100/sym0.2/*'   # cells dataset/noise/seed<k>/backbone/method

Every command carries `--continue`: a finished run does nothing, an interrupted one resumes, any other
starts; so running a sweep (or resubmitting an array job) again only does what is left. The runner
runs phase 1 before the phase 2 that reads its mask, skips a command whose run directory already
holds summary.json without starting a process, goes on past a failed command (skipping only the
commands that need its result) and ends with the failed and skipped cells and a non-zero exit.
With `--jobs N` it runs N independent jobs at once (a job: the commands that share a run, in order),
each child with cores/N threads unless OMP_NUM_THREADS is set.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from utils.errors import UserError
from experiments.grid import ROOT, Cell, Command, GridError, load_grid
from utils.run_dir import SUMMARY, run_state


# ---------------------------------------------------------------- selection, ordering, jobs
def select_cells(cells: Sequence[Cell], patterns: Sequence[str]) -> list[Cell]:
    """The cells whose name matches any of `patterns` (shell wildcards); all cells without patterns."""
    if not patterns:
        return list(cells)
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


def ordered_commands(cells: Sequence[Cell]) -> list[Command]:
    """Every distinct command of `cells` once, in grid order (a prerequisite always comes first)."""
    unique: dict[tuple[str, ...], Command] = {}
    for cell in cells:
        for command in cell.commands:
            unique.setdefault(command.key, command)
    return list(unique.values())


def jobs(cells: Sequence[Cell]) -> list[list[Command]]:
    """Independent groups of commands: cells that share a command (DeFT and DeFT-PEFT share phase 1)
    are one job, so no two jobs of an array ever run the same command."""
    commands = ordered_commands(cells)
    parent = {c.key: c.key for c in commands}

    def root(key):
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for cell in cells:
        for command in cell.commands[1:]:
            parent[root(command.key)] = root(cell.commands[0].key)
    groups: dict[tuple[str, ...], list[Command]] = {}
    for command in commands:
        groups.setdefault(root(command.key), []).append(command)
    return list(groups.values())


def job_lines(cells: Sequence[Cell], torchrun: int = 0) -> list[str]:
    """One shell line per job: its commands joined with ' && ' (phase 1 before phase 2)."""
    return [" && ".join(c.text(torchrun) for c in job) for job in jobs(cells)]


# ---------------------------------------------------------------- running
@dataclass
class Outcome:
    """What happened to one command."""

    command: Command
    status: str  # ran | finished | failed | skipped
    returncode: int = 0
    message: str = ""


Executor = Callable[[Command, int], tuple[int, str]]


def subprocess_executor(command: Command, torchrun: int = 0) -> tuple[int, str]:
    """Run `command` in a child process (this Python, or torch.distributed.run); (exit code, last error line).

    stdout goes straight to the terminal; stderr is copied there line by line and its last `error:`
    line (or last line) is kept for the final report.
    """
    script = os.path.join(ROOT, command.script)
    if torchrun > 0:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)]
    else:
        launcher = [sys.executable]
    return run_process([*launcher, script, *command.args, "--continue"])


def run_process(argv: Sequence[str]) -> tuple[int, str]:
    """Run `argv`, echo its stderr, return (exit code, the last 'error:' line or else the last stderr line)."""
    tail: deque[str] = deque(maxlen=50)
    process = subprocess.Popen(list(argv), stderr=subprocess.PIPE, text=True, bufsize=1, errors="replace")
    assert process.stderr is not None
    for line in process.stderr:
        sys.stderr.write(line)
        if line.strip():
            tail.append(line.rstrip())
    returncode = process.wait()
    errors = [line for line in tail if line.startswith("error:")]
    return returncode, (errors[-1] if errors else tail[-1] if tail else "")


def run_commands(commands: Sequence[Command], execute: Executor = subprocess_executor, torchrun: int = 0,
                 log: Callable[[str], None] = print, numbers: Optional[dict] = None,
                 stop: Optional[threading.Event] = None) -> list[Outcome]:
    """Run `commands` in order: skip finished runs, skip a command whose prerequisite did not succeed.

    `numbers` (command key -> its number in the whole sweep) labels the log lines of one job of many;
    `stop`, once set, ends the loop before the next command (Ctrl-C in a parallel sweep).
    """
    numbers = numbers or {c.key: i for i, c in enumerate(commands, 1)}
    outcomes: dict[tuple[str, ...], Outcome] = {}
    for command in commands:
        if stop is not None and stop.is_set():
            break
        head = f"[{numbers[command.key]}/{len(numbers)}]"
        broken = [outcomes[k] for k in command.requires
                  if k in outcomes and outcomes[k].status in ("failed", "skipped")]
        if broken:
            outcome = Outcome(command, "skipped", message=f"needs {broken[0].command.text()}, which {broken[0].status}")
            log(f"{head} skipped (a prerequisite {broken[0].status}): {command.text(torchrun)}")
        elif command.run_dir is not None and os.path.isfile(os.path.join(command.run_dir, SUMMARY)):
            outcome = Outcome(command, "finished")
            log(f"{head} finished already ({command.run_dir}): {command.text(torchrun)}")
        else:
            state = run_state(command.run_dir) if command.run_dir else "unknown"
            action = "resume" if state == "interrupted" else "run"
            log(f"{head} {action}: {command.text(torchrun)}")
            returncode, message = execute(command, torchrun)
            outcome = Outcome(command, "ran" if returncode == 0 else "failed", returncode, message)
            if returncode != 0:
                log(f"{head} FAILED (exit {returncode}): {message}")
        outcomes[command.key] = outcome
    return list(outcomes.values())


def run_jobs(cells: Sequence[Cell], workers: int, execute: Executor = subprocess_executor, torchrun: int = 0,
             log: Callable[[str], None] = print) -> list[Outcome]:
    """Run the independent jobs of `cells` `workers` at a time (each job's commands in order); the
    outcomes in grid order. Jobs share no command, so no run directory is ever used twice at once."""
    commands = ordered_commands(cells)
    numbers = {c.key: i for i, c in enumerate(commands, 1)}
    if workers <= 1:
        return run_commands(commands, execute, torchrun, log, numbers)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = [pool.submit(run_commands, job, execute, torchrun, log, numbers, stop) for job in jobs(cells)]
    try:
        by_key = {o.command.key: o for future in futures for o in future.result()}
    except KeyboardInterrupt:
        stop.set()  # the running children got the same Ctrl-C; start nothing new
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return [by_key[c.key] for c in commands]


def report(cells: Sequence[Cell], outcomes: Sequence[Outcome]) -> tuple[str, bool]:
    """The end-of-sweep summary (counts, then each failed cell: its failed and its skipped commands)
    and whether everything succeeded."""
    by_key = {o.command.key: o for o in outcomes}
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ran", "finished", "failed", "skipped")}
    lines = [f"sweep: {len(outcomes)} commands: {counts['ran']} ran, {counts['finished']} already finished, "
             f"{counts['failed']} failed, {counts['skipped']} skipped"]
    listed, failed_cells = [], 0
    for cell in cells:  # a cell holds its prerequisites, so a skipped command's cell also holds the failed one
        mine = [by_key[c.key] for c in cell.commands if c.key in by_key]
        failed = [o for o in mine if o.status == "failed"]
        failed_cells += bool(failed)
        for outcome in failed:
            log = f"; log: {os.path.join(outcome.command.run_dir, 'log.txt')}" if outcome.command.run_dir else ""
            listed += [f"  {cell.name}: {outcome.command.text()}",
                       f"      exit {outcome.returncode}: {outcome.message}{log}"]
        listed += [f"      not run: {o.command.text()}" for o in mine if o.status == "skipped"]
    if listed:
        lines += [f"failed cells ({failed_cells}):", *listed,
                  "fix the cause and run the same sweep again: finished runs are skipped, interrupted ones resume"]
    return "\n".join(lines), counts["failed"] == 0 and counts["skipped"] == 0


def dry_run_lines(commands: Sequence[Command], torchrun: int = 0) -> list[str]:
    """Each command with the state of its run directory (what a real run would do with it)."""
    action = {"new": "start", "stub": "start (a failed start left a folder)", "interrupted": "resume",
              "finished": "skip (finished)"}
    return [f"{action[run_state(c.run_dir)] if c.run_dir else 'run (--continue decides)':<12}  {c.text(torchrun)}"
            for c in commands]


# ---------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None, execute: Executor = subprocess_executor) -> int:
    """Expand the grid and print, dry-run or run it; the exit status (0 ok, 1 a run failed, 2 a bad grid)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", help="grid YAML, e.g. grids/table1.yaml")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--print", dest="print_jobs", action="store_true",
                      help="print one line per job (its commands joined with &&) and run nothing")
    what.add_argument("--dry_run", action="store_true", help="list the commands and what a run would do with each")
    parser.add_argument("--torchrun", type=int, default=0, metavar="N",
                        help="launch every command with torchrun --standalone --nproc_per_node N")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run N independent jobs at once on this machine (default 1: one after the other)")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="only cells whose name dataset/noise/seed<k>/backbone/method matches "
                             "(shell wildcards; repeatable)")
    args = parser.parse_args(argv)
    try:
        if args.torchrun < 0:
            raise GridError(f"--torchrun expects a number of processes >= 1, got {args.torchrun}")
        if args.jobs < 1:
            raise GridError(f"--jobs expects a number of parallel jobs >= 1, got {args.jobs}")
        grid = load_grid(args.grid)
        cells = select_cells(grid.cells, args.only)
        if not cells:
            raise GridError(f"--only {' '.join(args.only)} matches none of the {len(grid.cells)} cells of {args.grid} "
                            f"(names look like {grid.cells[0].name})")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_jobs:
        print("\n".join(job_lines(cells, args.torchrun)))
        return 0
    commands = ordered_commands(cells)
    if args.dry_run:
        print("\n".join(dry_run_lines(commands, args.torchrun)))
        print(f"{len(cells)} cells, {len(commands)} commands")
        return 0
    print(f"sweep {args.grid}: {len(cells)} cells, {len(commands)} commands"
          + (f", {args.jobs} jobs at a time" if args.jobs > 1 else ""), flush=True)
    if args.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # the cores shared out, not oversubscribed
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    try:
        outcomes = run_jobs(cells, args.jobs, execute, args.torchrun, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("interrupted: run the same sweep again to continue (finished runs are skipped, interrupted ones "
              "resume)", file=sys.stderr)
        return 130
    text, ok = report(cells, outcomes)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
