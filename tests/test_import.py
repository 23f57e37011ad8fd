"""Importing equivtest or loading its plugin imports no framework."""

import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")


def test_import_equivtest_and_plugin_imports_no_framework():
    code = (
        "import sys, equivtest, equivtest.plugin, equivtest.data, equivtest.heads, equivtest.plan, "
        "equivtest.compare, equivtest.trajectory, equivtest.session, equivtest.backends, equivtest.backends.numpy\n"
        f"bad = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported frameworks: {out.stdout.strip()}"


def test_plugin_is_registered_through_the_entry_point():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="pytest11") if ep.name == "equivtest"]
    assert eps and eps[0].value == "equivtest.plugin"
