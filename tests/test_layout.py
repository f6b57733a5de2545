"""The layout: one job per folder, imports that go one way, and no circle."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("utils", "lnl", "experiments", "models", "datasets", "tools", "benchmarks")


def repo_imports(path: Path) -> set[str]:
    """The repository modules `path` imports (top level or inside functions), as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update([node.module] + [f"{node.module}.{alias.name}" for alias in node.names])
    return {name for name in names if name.split(".")[0] in PACKAGES or name.startswith("main_")}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).glob("*.py"))


def test_the_experiment_tools_run_without_torch():
    code = ("import sys; import experiments.grid, experiments.sweep, experiments.collect_results, "
            "experiments.paper_numbers, experiments.plots, utils.methods; "
            "print(sorted(m for m in ('torch', 'open_clip', 'timm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_maths_and_the_models_stay_apart_and_the_base_error_is_a_leaf():
    for path in modules("lnl"):  # pure functions: no model, no data, no training machinery
        assert {name.split(".")[0] for name in repo_imports(path)} <= {"lnl"}, path.name
    for path in modules("models") + modules("datasets"):
        assert not any(name.startswith(("lnl", "experiments", "main_")) for name in repo_imports(path)), path.name
    assert repo_imports(ROOT / "utils" / "errors.py") == set()
    for path in modules("experiments"):  # command lines and files only: no model, no data, no maths
        assert not any(name.startswith(("models", "datasets", "lnl", "main_")) for name in repo_imports(path)), \
            path.name


def test_no_import_circle():
    graph = {}
    for package in ("utils", "lnl", "experiments", "models", "datasets"):
        for path in modules(package):
            module = f"{package}.{path.stem}"
            targets = set()
            for name in repo_imports(path):
                # `from utils import distributed` names the module utils.distributed
                for candidate in (name, name.rsplit(".", 1)[0]):
                    if (ROOT / (candidate.replace(".", os.sep) + ".py")).is_file():
                        targets.add(candidate)
                        break
            graph[module] = targets - {module}

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, " -> ".join(trail + (module,))
        for target in graph.get(module, ()):
            visit(target, trail + (module,))

    for module in graph:
        visit(module, ())


def test_no_folder_holds_more_than_a_quarter_of_the_code():
    counts = {}
    for path in ROOT.glob("**/*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in ("tests", ".venv", ".ci-venv", "output", "data"):
            continue
        folder = parts[0] if len(parts) > 1 else "."
        counts[folder] = counts.get(folder, 0) + sum(1 for line in path.read_text(encoding="utf-8").splitlines()
                                                     if line.strip())
    total = sum(counts.values())
    assert max(counts.values()) <= total / 4, {k: f"{v / total:.0%}" for k, v in counts.items()}
