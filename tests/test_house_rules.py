"""The house rules ARCHITECTURE.md states, checked on the source: dependencies point one
way, no function is over 80 lines and no module over 600 (issue 25's "done when")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("theory", "engine", "calibration", "sim", "live", "comem")

#: what each package may import from the others (a dotted name allows that module only)
ALLOWED = {
    "theory": set(),
    "engine": {"calibration.errors", "calibration.spec_decode"},
    "calibration": {"engine"},
    "sim": {"calibration", "engine", "theory"},
    "live": {"calibration", "engine", "sim"},
    "comem": {"calibration", "engine", "sim", "theory", "live"},
}
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _allowed(package: str, module: str) -> bool:
    top = module.split(".")[0]
    if top not in PACKAGES or top == package:
        return True
    return any(module == a or module.startswith(a + ".") for a in ALLOWED[package])


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _modules(package)
        for line, module in _imports(ast.parse(path.read_text()))
        if not _allowed(package, module)
    ]
    assert not bad, "\n".join(bad)


def test_no_function_over_80_lines_and_no_module_over_600():
    long_functions, long_modules = [], []
    for package in PACKAGES:
        for path in _modules(package):
            text = path.read_text()
            if len(text.splitlines()) > MAX_MODULE_LINES:
                long_modules.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if lines > MAX_FUNCTION_LINES:
                        where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                        long_functions.append(f"{where}: {lines} lines")
    assert not long_functions and not long_modules, "\n".join(long_functions + long_modules)


def test_the_rules_can_fail():
    """The checks above see what they should: an upward import is refused."""
    assert not _allowed("calibration", "sim.engine")
    assert not _allowed("engine", "calibration.latency")
    assert _allowed("engine", "calibration.errors") and _allowed("sim", "numpy")
