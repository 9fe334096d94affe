"""The house rules of docs/architecture.md, checked on the code: who may import whom, and file sizes."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Floors from docs/architecture.md: a module may import from its own floor or below.
FLOORS: dict[str, int] = {
    "comcoco.records": 1, "comcoco.errors": 1, "comcoco.ids": 1, "comcoco.io": 1, "comcoco.locks": 1, "comcoco.progress": 1,
    "comcoco.stages": 1, "comcoco.pixels": 1, "comcoco.pool": 1,
    "comcoco.sources": 2, "comcoco.text": 2, "comcoco.audit": 2, "comcoco.matching": 2, "comcoco.placement": 2, "comcoco.harmonize": 2,
    "comcoco.config": 3,
    "comcoco.plan": 4, "comcoco.plan_source": 4,
    "comcoco.compose": 5,
    "comcoco.decisions": 6, "comcoco.workdir": 6,
    "comcoco.shards": 7, "comcoco.build": 7, "comcoco.outcome": 7,
    "comcoco.review": 8, "comcoco.release": 8,
    "comcoco.sahm": 9,
    "pipelines": 10,
    "comcoco.commands": 11, "comcoco.cli": 11, "comcoco.__main__": 11, "comcoco": 11,
}
# The one deliberate exception: a release's optional validate stage runs SAHM inside the staging folder.
ALLOWED_UP = {("comcoco.release.builder", "comcoco.sahm.validate")}


def _floor(module: str) -> tuple[str, int]:
    best = max((k for k in FLOORS if module == k or module.startswith(k + ".")), key=len)
    return best, FLOORS[best]


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted((REPO / "comcoco").rglob("*.py")) + sorted((REPO / "pipelines").glob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path, module: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in ("comcoco", "pipelines") and m != module}


def test_no_module_imports_from_a_higher_floor():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        _, own = _floor(name)
        for target in _imports(path, name):
            if target not in modules and target.rsplit(".", 1)[0] in modules:
                target = target.rsplit(".", 1)[0]  # `from package import name`: the name is not a module
            if target not in modules or (name, target) in ALLOWED_UP:
                continue
            home, floor = _floor(target)
            if floor > own and not name.startswith(home):
                wrong.append(f"{name} (floor {own}) imports {target} (floor {floor})")
    assert not wrong, "imports that run back up:\n" + "\n".join(sorted(wrong))


def test_ground_modules_import_nothing_of_ours():
    modules = _modules()
    for name in ("comcoco.records", "comcoco.errors"):
        assert not _imports(modules[name], name), name


def test_modules_stay_small():
    big = [f"{p.relative_to(REPO)}: {n} lines" for p in _modules().values()
           if (n := p.read_text().count("\n")) > 500]
    assert not big, "modules above 500 lines:\n" + "\n".join(big)


def test_no_tracked_file_keeps_merge_conflict_markers():
    """A merge resolved by hand must not leave its markers in code or docs (a layout once kept them)."""
    import re
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    marker = re.compile(r"^(<{7}|>{7})( |$)", re.M)
    found = [f for f in files if f.endswith((".py", ".md", ".toml", ".cfg", ".txt", ".xml", ".yaml", ".yml"))
             or f in ("Makefile", ".ci/run") if marker.search((REPO / f).read_text(errors="replace"))]
    assert not found, f"conflict markers in {found}"
