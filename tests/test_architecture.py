"""The import graph, imports inside functions included (grimp, which import-linter is built on)."""

import pytest

grimp = pytest.importorskip("grimp", reason="needs grimp: pip install 'equivtest[test]' (import-linter)")


def cycles(graph) -> list[tuple[str, str]]:
    """Every pair of modules that import each other, directly or through others."""
    found = set()
    for m in graph.modules:
        for n in graph.find_modules_directly_imported_by(m):
            if graph.chain_exists(importer=n, imported=m):
                found.add(tuple(sorted((m, n))))
    return sorted(found)


def test_the_package_has_no_import_cycle():
    graph = grimp.build_graph("equivtest", include_external_packages=False)
    assert cycles(graph) == []


def test_a_cycle_through_a_third_module_is_found():
    """The check tells a cycle apart: a -> b -> c -> a is reported, a -> b -> c is not."""
    g = grimp.ImportGraph()
    for m in ("pkg.a", "pkg.b", "pkg.c"):
        g.add_module(m)
    g.add_import(importer="pkg.a", imported="pkg.b")
    g.add_import(importer="pkg.b", imported="pkg.c")
    assert cycles(g) == []
    g.add_import(importer="pkg.c", imported="pkg.a")
    assert ("pkg.a", "pkg.b") in cycles(g) and ("pkg.a", "pkg.c") in cycles(g)


def test_no_module_imports_another_modules_private_names():
    """``from x import _name`` across modules (a package-private module such as ``_base`` is fine)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "equivtest"
    bad = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                bad += [f"{path.relative_to(root.parent)}: {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []
