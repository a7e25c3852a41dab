"""The package's structure: no import cycles in rkd/, no method named in a branch outside
rkd/methods/, the layering rules (only rkd/orchestration imports ray, only rkd/tracking mlflow)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rkd.methods import list_methods

ROOT = Path(__file__).resolve().parents[1] / "rkd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The rkd modules a file imports, at any depth of the file (function-level too)."""
    tree = ast.parse(path.read_text())
    out = set()
    pkg = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            if base in modules:
                out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # a package importing its own submodules is how packages gather their names, not a cycle
    return {m: {i for i in _imports(p, modules) if i != m and not (p.name == "__init__.py" and i.startswith(m + "."))}
            for m, p in modules.items()}


def test_no_import_cycles_in_rkd():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _branch_strings(tree: ast.AST):
    """String constants inside the tests of if/elif/while/ternaries/match cases and inside
    comparisons anywhere (``x == "name"``, ``x in ("a", "b")``), each once, in source order."""
    seen = {}
    for node in ast.walk(tree):
        tests = []
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            tests.append(node.test)
        elif isinstance(node, ast.Compare):
            tests.append(node)
        elif isinstance(node, ast.match_case):
            tests.append(node.pattern)
        for t in tests:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    seen[(sub.lineno, sub.col_offset)] = sub.value
    for (line, _), value in sorted(seen.items()):
        yield line, value


def test_no_method_name_in_a_branch_outside_rkd_methods():
    names = set(list_methods())
    found = []
    for path in ROOT.rglob("*.py"):
        if (ROOT / "methods") in path.parents:
            continue
        for line, value in _branch_strings(ast.parse(path.read_text())):
            if value in names:
                found.append(f"{path.relative_to(ROOT.parent)}:{line}: {value!r}")
    assert not found, "method names in branches outside rkd/methods/:\n" + "\n".join(found)


def test_the_branch_scan_sees_comparisons():
    tree = ast.parse("if cfg.method.name == 'macd':\n    pass\nx = 1 if m in ('trades',) else 2\n")
    assert [v for _, v in _branch_strings(tree)] == ["macd", "trades"]


@pytest.mark.parametrize("package, allowed", [("ray", "orchestration"), ("mlflow", "tracking")])
def test_only_one_package_imports(package, allowed):
    bad = []
    for path in ROOT.rglob("*.py"):
        if path.relative_to(ROOT).parts[0] == allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path.relative_to(ROOT.parent)}:{node.lineno}" for n in names if n.split(".")[0] == package]
    assert not bad, f"{package} imported outside rkd/{allowed}: {bad}"
