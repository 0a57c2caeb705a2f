"""The library's import graph, read from the source (every import, function-level ones included):
`weightgen/` imports neither `cluster/` nor `jobs/`, and its modules form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("cluster", "jobs")


def _modules(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for every module of the `weightgen` package under `root`."""
    mods = {}
    for path in (root / "weightgen").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imported_names(module: str, path: Path) -> list[str]:
    """Dotted names each import statement of `path` reaches (`from a import b` gives `a.b`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                keep = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(keep + ([base] if base else []))
            names += [f"{base}.{a.name}" for a in node.names]
    return names


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between weightgen modules, {module: forbidden top-level names it imports}).
    A name resolves to the longest module prefix that exists (`weightgen.gan.X` -> the package)."""
    mods = _modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    forbidden: dict[str, set[str]] = {}
    for m, path in mods.items():
        for name in _imported_names(m, path):
            top = name.split(".")[0]
            if top in FORBIDDEN:
                forbidden.setdefault(m, set()).add(top)
            target = name
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != m:
                edges[m].add(target)
    return edges, forbidden


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_weightgen_imports_neither_cluster_nor_jobs():
    _, forbidden = import_graph(ROOT)
    assert not forbidden, f"library modules import deployment code: {forbidden}"


def test_no_import_cycles():
    edges, _ = import_graph(ROOT)
    found = cycles(edges)
    detail = [
        " -> ".join(c) + f" (edges: { {m: sorted(edges[m] & set(c)) for m in c} })" for c in found
    ]
    assert not found, "import cycles in weightgen/: " + "; ".join(detail)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_check_sees_a_planted_cycle_and_a_forbidden_import(tmp_path):
    """The same analysis on a small tree: a cycle hidden in a function-level import, through a
    package's __init__, and a library module reaching into cluster/."""
    _write(tmp_path, "weightgen/__init__.py", "")
    _write(tmp_path, "weightgen/a.py", "from weightgen.pkg import thing\n")
    _write(tmp_path, "weightgen/pkg/__init__.py", "from weightgen.pkg.b import thing\n")
    _write(
        tmp_path,
        "weightgen/pkg/b.py",
        "def thing():\n    from weightgen import a\n    from cluster.collect import x\n",
    )
    _write(tmp_path, "weightgen/c.py", "from . import a\n")  # relative, no cycle
    edges, forbidden = import_graph(tmp_path)
    assert cycles(edges) == [["weightgen.a", "weightgen.pkg", "weightgen.pkg.b"]]
    assert forbidden == {"weightgen.pkg.b": {"cluster"}}
    assert edges["weightgen.c"] == {"weightgen.a"}


def test_every_library_module_stays_under_600_lines():
    """One owner per job: no module of weightgen/ over 600 lines but the declarative catalogue."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "weightgen").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600 and p.name != "catalogue.py"
    }
    assert not long, f"split these by job: {long}"
