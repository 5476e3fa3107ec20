"""The packages import in one direction only: networks <- datasets <- utils <- inference <- app.

A module may import its own package and the packages below it, at module level; a function-level
import of a project package (the way to dodge an import loop) is refused too. Each package also
imports on its own in a fresh interpreter. Optional heavy dependencies (ray, gradio, tensorboard)
are the one exception to module-level imports and are not project packages.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("networks", "datasets", "utils", "inference", "app")  # bottom to top


def _project_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level package, line, at module level) of every import of a project package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            package = name.split(".")[0]
            if package in LAYERS:
                found.append((package, node.lineno, id(node) in top_level))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_packages_import_only_their_own_layer_and_the_ones_below(package: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    upward, deferred = [], []
    for path in _modules(package):
        where = path.relative_to(REPO)
        for imported, line, module_level in _project_imports(path):
            if imported not in allowed:
                upward.append(f"{where}:{line} imports {imported}")
            if not module_level:
                deferred.append(f"{where}:{line} imports {imported} inside a function")
    assert not upward, "upward imports: " + "; ".join(upward)
    assert not deferred, "deferred imports: " + "; ".join(deferred)


def test_scripts_import_the_project_at_module_level() -> None:
    deferred = [
        f"{path.name}:{line}"
        for path in sorted(REPO.glob("*.py"))
        for _, line, module_level in _project_imports(path)
        if not module_level
    ]
    assert not deferred, "deferred imports in scripts: " + ", ".join(deferred)


@pytest.mark.parametrize("package", LAYERS[:4])
def test_each_package_imports_alone(package: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {package}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
