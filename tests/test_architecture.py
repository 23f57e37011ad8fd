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


def _dist_name(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503): 'tensorflow-cpu<3; ...' -> 'tensorflow-cpu'."""
    import re

    return re.sub(r"[-_.]+", "-", re.split(r"[\s;<>=!~\[(@]", requirement.strip(), maxsplit=1)[0]).lower()


def undeclared_imports(imported, distributions, requirements) -> list[str]:
    """The top-level packages in ``imported`` that no requirement provides.  ``distributions`` maps an import
    name to the distributions that install it (:func:`importlib.metadata.packages_distributions`); a package
    not installed here is taken to be its own distribution's name."""
    declared = {_dist_name(r) for r in requirements}
    return sorted(m for m in imported if not {_dist_name(d) for d in distributions.get(m, [m])} & declared)


def test_every_package_equivtest_imports_is_declared_in_pyproject():
    """A third-party package imported anywhere in ``equivtest`` (inside functions too) is a dependency or an
    extra in pyproject.toml: an undeclared one (scipy, once) works only where something else installed it."""
    import sys
    from importlib import metadata
    from itertools import chain
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed metadata, written from the same file
        requirements = metadata.requires("equivtest") or []
    else:
        project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
        requirements = [*project["dependencies"], *chain(*project["optional-dependencies"].values())]
    graph = grimp.build_graph("equivtest", include_external_packages=True)
    imported = {m for m in graph.modules if "." not in m and m != "equivtest"} - set(sys.stdlib_module_names)
    assert "numpy" in imported and "torch" in imported  # the graph holds the package's own imports
    assert undeclared_imports(imported, metadata.packages_distributions(), requirements) == []


def test_an_undeclared_import_is_named():
    """The check tells the two apart: scipy imported but not declared is named; an import whose distribution
    has another name (sklearn from scikit-learn) or whose requirement carries a marker is declared."""
    dists = {"sklearn": ["scikit-learn"], "tensorflow": ["tensorflow_cpu"], "scipy": ["scipy"]}
    reqs = ["scikit-learn>=1.2", 'tensorflow-cpu<3,>=2.16; platform_machine == "x86_64"', "numpy"]
    assert undeclared_imports({"sklearn", "tensorflow", "numpy", "scipy"}, dists, reqs) == ["scipy"]
    assert undeclared_imports({"sklearn", "tensorflow", "numpy"}, dists, reqs) == []
