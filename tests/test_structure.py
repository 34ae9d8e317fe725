"""The shape the code keeps (docs/architecture.md, "Three rules"), read from the source: fit
stays a table of contents, modules stay small, evaluation does not reach into the run's
life, and no config default is written in code."""

from __future__ import annotations

import ast

from conftest import REPO

SRC = REPO / "src" / "trainlab"
BLOCKS = (ast.For, ast.While, ast.If, ast.With, ast.Try)
CONFIG_NAMES = ("cfg", "config", "dataset", "trainer", "optimizer", "loss", "scheduler", "model")


def _tree(name: str) -> ast.Module:
    return ast.parse((SRC / name).read_text())


def _depth(node: ast.AST, level: int = 0) -> int:
    deepest = level
    for child in ast.iter_child_nodes(node):
        deepest = max(deepest, _depth(child, level + isinstance(child, BLOCKS)))
    return deepest


def test_fit_reads_as_a_table_of_contents():
    (fit,) = [
        n for n in _tree("loop.py").body if isinstance(n, ast.FunctionDef) and n.name == "fit"
    ]
    assert fit.end_lineno - fit.lineno + 1 <= 60
    assert _depth(fit) <= 5


def test_no_module_is_over_400_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in SRC.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_evaluation_builds_from_parts_not_from_the_run():
    imported = set()
    for node in ast.walk(_tree("evaluation.py")):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert not {"trainlab.train", "trainlab.results"} & imported


def test_no_config_default_is_written_in_code():
    """No `<config node>.get(key, default)`: defaults live in the YAML and the schema."""
    found = []
    for path in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if not call or node.func.attr != "get" or len(node.args) + len(node.keywords) < 2:
                continue
            receiver = ast.unparse(node.func.value)  # parts.optimizer.state: not a config
            last = receiver.rpartition(".")[2]
            if last in CONFIG_NAMES or "cfg" in last:
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
