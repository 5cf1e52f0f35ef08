"""The package's import graph has no cycle: a lower layer never needs a higher one (imports inside
functions count too, since they hide the same dependency)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edgepack"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The edgepack modules `name` imports (a `from pkg import sub` names the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in out if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert "edgepack.export.core" in graph["edgepack.export"]  # the scan sees imports at all
    assert cycles(graph) == []


RUFF = Path(sys.executable).with_name("ruff")


@pytest.mark.skipif(not RUFF.exists(), reason="ruff (dev extra) is not installed next to this Python")
def test_the_linter_keeps_light_imports_at_the_top_and_heavy_ones_lazy():
    """pyproject's ruff rules: a function-local import of a light module fails (PLC0415), so does a
    module-level import of TensorFlow or another heavy/optional dependency (TID253); a function-local
    import of one passes."""
    def codes(source: str) -> set[str]:
        r = subprocess.run([str(RUFF), "check", "--output-format", "json", "--stdin-filename",
                            "edgepack/new_module.py", "-"], input=source, capture_output=True, text=True,
                           cwd=PACKAGE.parent, timeout=60)
        return {d["code"] for d in json.loads(r.stdout)}

    assert codes("def f():\n    from edgepack import rundir\n\n    return rundir\n") == {"PLC0415"}
    assert codes("import json\n\n\ndef f():\n    import tensorflow as tf\n\n    return tf, json\n") == set()
    assert codes("import tensorflow as tf\n\nX = tf\n") == {"TID253"}
