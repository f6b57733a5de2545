"""README.md and docs/: every command they show runs as written, every link resolves, and no file cites
notes that live outside the repository.

What counts as a reference (in code blocks and inline code of README.md and docs/*.md):
- the script after `python` / `torchrun` (`python tools/demo.py`, `torchrun ... main_phase1.py`) and any
  bare `main_*.py`;
- `python -m pkg.mod` for the repository's own packages (module `a.b` -> a/b.py or a/b/__init__.py);
- `make TARGET` (a target of the Makefile);
- any path with a folder part that ends in .py, .yaml, .yml, .md, .json, .csv or .png
  (`--cfg ./config/PEFT/cifar100.yaml`, `grids/table2.yaml`, `utils/methods.py`), relative to the
  repository root; paths under output/ or data/ (written by runs) and patterns (`{...}`, `*`, `<...>`)
  are not files and are skipped.
Relative Markdown links (`[x](docs/scale.md#anchor)`, images) must name an existing file, and an anchor
must name a heading of the target page (GitHub's heading ids).

NOTE: the docs describe the final package layout (`experiments/` for grids, sweeps and the collector,
`lnl/` for the noisy-label maths, `utils/methods.py`, `main_turn.py`, `grids/sister_methods.yaml`,
`make gpu-check`). The module-path and file checks pass only once that restructuring has landed;
until then they fail on exactly those names, and everything else must pass.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README] + sorted(DOCS.glob("*.md"))

LOCAL_PACKAGES = {"utils", "lnl", "experiments", "tools", "benchmarks", "models", "datasets", "tests"}
FILE_SUFFIXES = (".py", ".yaml", ".yml", ".md", ".json", ".csv", ".png")
GENERATED_ROOTS = ("output/", "data/", "/", "~")  # written by runs or outside the repository
SKIPPED_DIRS = {".git", ".venv", ".ci-venv", "output", "data", "__pycache__", ".pytest_cache"}

FENCE = re.compile(r"^```.*?$(.*?)^```\s*$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SCRIPT_AFTER_LAUNCHER = re.compile(r"\b(?:python3?|torchrun)\b(?:\s+(?!-m\b)\S+)*?\s+(\S+\.py)\b")
MODULE = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)")
MAKE = re.compile(r"(?:^|[;&|(]\s*)make\s+([A-Za-z][\w-]*)", re.M)  # a command, not `<make model year>`
PATH_TOKEN = re.compile(r"(?<![\w./-])((?:\./)?[\w.-]+(?:/[\w.-]+)+)")
BARE_MAIN = re.compile(r"(?<![\w./-])(main_\w+\.py)\b")


def _split(text: str) -> tuple[list[str], str]:
    """(code snippets: fenced blocks and inline spans, the prose with code removed)."""
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    spans = INLINE.findall(prose)
    return blocks + spans, INLINE.sub("", prose)


def _code(page: Path) -> list[str]:
    return _split(page.read_text(encoding="utf-8"))[0]


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _is_pattern(token: str) -> bool:
    return any(c in token for c in "{}*<>$") or "..." in token


def _exists(path: str) -> bool:
    return (ROOT / path).exists()


def _scripts(snippet: str) -> set[str]:
    found = set()
    for line in snippet.splitlines():
        found.update(SCRIPT_AFTER_LAUNCHER.findall(line))
    found.update(BARE_MAIN.findall(snippet))
    return {s for s in found if not _is_pattern(s)}


def _paths(snippet: str) -> set[str]:
    found = set()
    for token in PATH_TOKEN.findall(snippet):
        token = token.rstrip(".,:;")
        if not token.endswith(FILE_SUFFIXES) or _is_pattern(token):
            continue
        path = token[2:] if token.startswith("./") else token
        if path.startswith(GENERATED_ROOTS) or path.startswith("../"):
            continue
        found.add(path)
    return found


def _missing(collect) -> list[str]:
    missing = []
    for page in PAGES:
        for snippet in _code(page):
            for ref, ok in collect(snippet):
                if not ok:
                    missing.append(f"{_rel(page)}: {ref}")
    return sorted(set(missing))


def test_documented_scripts_exist():
    # main_turn.py belongs to the final layout: this passes only once the restructuring has landed.
    def collect(snippet):
        for script in _scripts(snippet):
            path = script[2:] if script.startswith("./") else script
            yield script, _exists(path)
    assert not _missing(collect), "scripts named in the docs that do not exist:\n" + "\n".join(_missing(collect))


def test_documented_modules_exist():
    # Passes only once the restructuring has landed (experiments.sweep, experiments.collect_results, ...).
    def collect(snippet):
        for module in MODULE.findall(snippet):
            if module.split(".")[0] not in LOCAL_PACKAGES:
                continue  # pytest, pip, venv, torch.distributed.run, ...
            base = module.replace(".", "/")
            yield f"python -m {module}", _exists(f"{base}.py") or _exists(f"{base}/__init__.py")
    missing = _missing(collect)
    assert not missing, "modules named in the docs that do not exist:\n" + "\n".join(missing)


def test_documented_files_exist():
    # Configs, grids, docs pages and source files named in the docs. Names of the final layout (lnl/,
    # experiments/, utils/methods.py, grids/sister_methods.yaml) pass only once it has landed.
    def collect(snippet):
        for path in _paths(snippet):
            yield path, _exists(path)
    missing = _missing(collect)
    assert not missing, "files named in the docs that do not exist:\n" + "\n".join(missing)


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))


def test_documented_make_targets_exist():
    targets = _make_targets()

    def collect(snippet):
        for target in MAKE.findall(snippet):
            yield f"make {target}", target in targets
    missing = _missing(collect)
    assert not missing, "make targets named in the docs that the Makefile lacks:\n" + "\n".join(missing)


def _slug(heading: str) -> str:
    """GitHub's id of a heading: markup and punctuation dropped, lower case, spaces -> hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def _links(page: Path) -> list[str]:
    return LINK.findall(_split(page.read_text(encoding="utf-8"))[1])


def test_links_resolve():
    broken = []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{_rel(page)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{_rel(page)}: {target} (no heading with this id in {file.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/ (at most 300)"
    linked = {os.path.normpath(t.partition("#")[0]) for t in _links(README)}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no page"
    unlinked = [p.name for p in pages if _rel(p) not in linked]
    assert not unlinked, f"README.md does not link these docs pages: {unlinked}"


def test_docs_pages_link_back_to_the_readme():
    for page in sorted(DOCS.glob("*.md")):
        assert "../README.md" in {t.partition("#")[0] for t in _links(page)}, f"{_rel(page)} has no link to the README"


# Notes kept outside this repository; the repository must stand alone. The strings are built so that
# this file does not match them itself.
OUTSIDE_NOTES = ("official-" + "behaviour", "decisions" + ".md", "paper-" + "facts", "shared" + "/spec")
SEED_NAME = re.compile("seed" + r" 00[0-9]")


def _repository_texts():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files:
            if name.endswith((".md", ".py")):
                yield Path(folder) / name


def test_no_file_cites_notes_outside_the_repository():
    found = []
    for path in _repository_texts():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            hits = [n for n in OUTSIDE_NOTES if n in line] + SEED_NAME.findall(line)
            if hits:
                found.append(f"{_rel(path)}:{number}: {', '.join(hits)}")
    assert not found, ("cite the official repository (HotanLee/DeFT file:line) or a page of docs/ instead, "
                       "and name methods by their papers:\n" + "\n".join(found))


@pytest.mark.parametrize("text, expected", [
    ("GPU self-check (`make gpu-check`)", "gpu-self-check-make-gpu-check"),
    ("The paper's commands", "the-papers-commands"),
    ("What the miniature shows (from these tables alone)", "what-the-miniature-shows-from-these-tables-alone"),
    ("Less memory: micro-batches and gradient checkpointing", "less-memory-micro-batches-and-gradient-checkpointing"),
])
def test_heading_ids_follow_github(text, expected):
    assert _slug(text) == expected


def test_reference_extraction_on_a_hand_made_page():
    text = ("run `python tools/demo.py` or\n```bash\ntorchrun --nproc_per_node 4 main_phase1.py --cfg "
            "./config/PEFT/cifar100.yaml\npython -m experiments.sweep grids/table2.yaml\nmake demo\n```\n"
            "a folder `train/<make model year>/` "
            "see [a](docs/x.md#y); `output/phase1/run/config.yaml` and `config/{PEFT,FFT}/*.yaml` are skipped")
    code, prose = _split(text)
    assert set().union(*map(_scripts, code)) == {"tools/demo.py", "main_phase1.py"}
    assert set().union(*map(_paths, code)) == {"tools/demo.py", "config/PEFT/cifar100.yaml", "grids/table2.yaml"}
    assert [m for s in code for m in MODULE.findall(s)] == ["experiments.sweep"]
    assert [m for s in code for m in MAKE.findall(s)] == ["demo"]
    assert LINK.findall(prose) == ["docs/x.md#y"]
