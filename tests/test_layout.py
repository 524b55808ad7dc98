"""The package's layout, as issue 36 set it: files a reader can take in whole, layers that import downwards only,
jobs without import circles."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "vlm_eff"
ENTRY_POINTS = {"report/__main__.py", "score.py", "visualize.py", "cli.py"}  # command lines above the jobs
LONGEST = 350


def modules() -> dict[str, Path]:
    return {path.relative_to(PACKAGE).as_posix(): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every vlm_eff module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlm_eff"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("vlm_eff"))
    return names


def test_no_file_is_longer_than_350_lines_without_saying_why():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()
            if len(path.read_text().splitlines()) > LONGEST}
    unexplained = [name for name in long if f"Over {LONGEST} lines" not in (ast.get_docstring(
        ast.parse(modules()[name].read_text())) or "")]
    assert unexplained == [], {name: long[name] for name in unexplained}


def test_only_the_entry_points_import_the_jobs():
    below = [name for name, path in modules().items() if not name.startswith("jobs/") and name not in ENTRY_POINTS
             and any(module.startswith("vlm_eff.jobs") for module in imported(path))]
    assert below == []


def test_the_jobs_import_each_other_without_a_circle():
    jobs = {f"vlm_eff.jobs.{Path(name).stem}": path for name, path in modules().items() if name.startswith("jobs/")}
    graph = {job: {module for module in imported(path) if module in jobs} for job, path in jobs.items()}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start])

    circles = [job for job in graph if reaches(job, job, {job})]
    assert circles == [], {job: graph[job] for job in circles}
