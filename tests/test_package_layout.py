"""The layout the style guide asks for, checked on the source: imports run down the layers, functions stay short."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ltstg"
MAX_FUNCTION_LINES = 80

# lower number = lower layer; a module may import its own layer or lower ones, never a higher one
LAYERS = {
    "ltstg.errors": 0, "ltstg.progress": 0, "ltstg.version": 0, "ltstg.tables": 0, "ltstg.methods": 0,
    "ltstg.launcher": 0,
    "ltstg.store": 1, "ltstg.ranks": 1,
    "ltstg.metrics": 2, "ltstg.calibration": 2, "ltstg.training": 2, "ltstg.data": 2, "ltstg.models": 2,
    "ltstg.augment": 3, "ltstg.classifiers": 3,
    "ltstg.recipe": 4,
    "ltstg.inspect": 5,
    "ltstg.stages": 6,
    "ltstg.runtime": 7, "ltstg.api": 7,
    "ltstg.terminal": 8, "ltstg.flags": 8, "ltstg.cli_inspect": 8, "ltstg.cli_model": 8, "ltstg.cli": 9, "ltstg.__main__": 9,
    "ltstg": 10,  # the package root re-exports the API: nothing inside imports it
}


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def layer(name: str) -> int:
    while name not in LAYERS:
        name = name.rsplit(".", 1)[0]
    return LAYERS[name]


def imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module if is_package else module.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rsplit(".", 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(dict(modules()))
            # `from ltstg import tables` imports a module; `from ltstg import __version__` the package root
            names |= submodules if len(submodules) == len(node.names) else {base}
    return {name for name in names if name == "ltstg" or name.startswith("ltstg.")}


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, path in modules():
        if name == "ltstg":
            continue
        tree = ast.parse(path.read_text())
        for target in imported(tree, name, path.name == "__init__.py"):
            if layer(target) > layer(name):
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []


def test_the_command_line_module_stays_thin():
    assert len((PACKAGE / "cli.py").read_text().splitlines()) < 600
