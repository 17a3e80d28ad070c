"""Imports between xr0's packages run one way: the package-level graph (every import, lazy ones included) has no
cycle. Run alone with `pytest tests/test_imports.py`; on failure it prints the cycle with file:line of each edge."""

from __future__ import annotations

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "xr0"


def unit_of(path: pathlib.Path) -> str:
    """A subpackage ('model', 'sim', ...) or a top-level module ('config', 'cli', ...)."""
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def imported_units(path: pathlib.Path) -> dict[str, int]:
    """xr0 units this file imports -> the first line that does."""
    here = path.relative_to(SRC).parts[:-1]  # the package the file is in, below xr0
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.startswith("xr0.")]
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".") if node.module else []
            if node.level:  # relative: climb from this file's package
                base = list(here[: len(here) - node.level + 1])
                parts = base + mod
                targets = [parts + [a.name] for a in node.names] if not parts else [parts]
            elif mod and mod[0] == "xr0":
                targets = [mod[1:] + [a.name] for a in node.names] if len(mod) == 1 else [mod[1:]]
        for parts in targets:
            if parts and ((SRC / parts[0]).is_dir() or (SRC / f"{parts[0]}.py").is_file()):
                out.setdefault(parts[0], node.lineno)
    return out


def test_no_import_cycle_between_packages():
    edges: dict[str, dict[str, str]] = {}
    for path in SRC.rglob("*.py"):
        unit = unit_of(path)
        for target, line in imported_units(path).items():
            if target != unit and unit != "__init__":
                edges.setdefault(unit, {}).setdefault(target, f"{path.relative_to(SRC.parent)}:{line}")
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, {}):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt]
                where = [edges[a][b] for a, b in zip(cycle, cycle[1:])]
                raise AssertionError(f"import cycle {' -> '.join(cycle)} ({', '.join(where)})")
            if not state.get(nxt):
                visit(nxt, trail + [node])
        state[node] = 2

    for unit in sorted(edges):
        if not state.get(unit):
            visit(unit, [])
    assert edges["sim"].keys() >= {"policy", "runtime"} and "sim" not in edges.get("data", {})  # the graph is real
    # the layers: config <- model <- processing <- policy <- the rest (model sees tensors only)
    assert not edges.get("model", {}).keys() & {"processing", "policy", "official", "train", "data", "sim", "runtime"}
    assert not edges.get("processing", {}).keys() & {"model", "policy", "train", "data", "sim", "runtime"}
