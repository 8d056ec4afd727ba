"""The package's import graph runs one way: no unit imports a unit that imports it back.

A unit is a subpackage (`progan_cli.data`, `.training`, `.networks`, `.metrics`, `.cli`) taken whole, or a
top-level module (`progan_cli.sampling`, `.config`, `.checkpoints`, ...). Every import of every module counts,
at any depth: the deferred ones inside functions (there to keep `progan --help` fast) and the ones under
`if TYPE_CHECKING:` bind the modules to each other as much as the top-level ones. The oracle is the source
text itself, read with `ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "progan_cli"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """progan_cli.training.loop -> progan_cli.training; progan_cli.sampling -> progan_cli.sampling."""
    return ".".join(module.split(".")[:2])


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every progan_cli module `path` names in an import statement, anywhere in the file (a name imported
    from a module counts as a possible submodule too; `unit_graph` keeps the ones that exist)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            # `from progan_cli import sampling` imports the module progan_cli.sampling
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] == "progan_cli"}


def unit_graph() -> dict[str, set[str]]:
    """unit -> the other units it imports, over every .py file of the package.

    The root package is left out as a target: importing any module runs progan_cli/__init__.py first, and it
    imports nothing at load time (its own imports, lazy ones included, still count as edges from it).
    """
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        src = unit(module_name(path))
        graph.setdefault(src, set())
        for name in imported_modules(path):
            # `from progan_cli.x import name` where name is not a module still imports progan_cli.x
            while name not in modules and "." in name:
                name = name.rpartition(".")[0]
            if unit(name) not in (src, "progan_cli"):
                graph[src].add(unit(name))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_on_hand_graphs():
    """The checker itself: it finds a planted cycle and passes a DAG (else a pass below would prove nothing)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "d"}, "b": set(), "d": {"d2"}, "d2": {"d"}}) == ["d", "d2", "d"]


def test_imports_are_seen_at_any_depth(tmp_path):
    """Deferred imports inside functions, relative ones and `from package import module` all count."""
    pkg = tmp_path / "progan_cli" / "training"
    pkg.mkdir(parents=True)
    f = pkg / "loop.py"
    f.write_text("import os\n"
                 "def f():\n"
                 "    from progan_cli.sampling import latents\n"
                 "    from ..metrics import fid\n"
                 "    from . import step\n"
                 "    from progan_cli import checkpoints\n")
    found = imported_modules(f, root=tmp_path)
    assert {"progan_cli.sampling", "progan_cli.metrics.fid", "progan_cli.training.step",
            "progan_cli.checkpoints"} <= found
    assert "os" not in found


def test_unit_graph_has_no_cycle():
    graph = unit_graph()
    assert "progan_cli.training" in graph and "progan_cli.cli" in graph  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between units: " + " -> ".join(cycle)


def test_training_never_imports_metrics_or_sampling():
    """Training gets metrics as a callback and draws its grid latents from networks/ (the paper's layering:
    data -> networks -> training -> checkpoints -> sampling / metrics)."""
    assert not {"progan_cli.metrics", "progan_cli.sampling", "progan_cli.cli"} & unit_graph()["progan_cli.training"]
