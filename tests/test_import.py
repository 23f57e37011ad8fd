"""Importing equivtest or loading its plugin imports no framework."""

import subprocess
import sys

import pytest

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")


def test_import_equivtest_and_plugin_imports_no_framework():
    code = (
        "import sys, equivtest, equivtest.plugin, equivtest.data, equivtest.heads, equivtest.plan, "
        "equivtest.compare, equivtest.trajectory, equivtest.session, equivtest.backends, equivtest.backends.numpy, "
        "equivtest.suite.plugin, equivtest.rand, equivtest.portability, equivtest.machine, equivtest.cli, "
        "equivtest.convert, equivtest.convert.api, equivtest.convert.formats, equivtest.convert.tensors, "
        "equivtest.convert.kerasio, equivtest.convert.onnxio\n"
        f"bad = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported frameworks: {out.stdout.strip()}"


def test_plugin_is_registered_through_the_entry_point():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="pytest11") if ep.name == "equivtest"]
    assert eps and eps[0].value == "equivtest.plugin"


@pytest.mark.slow
def test_the_keras_backend_leaves_the_users_keras_backend_variable_alone():
    import importlib.util

    import pytest

    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        pytest.skip("needs TensorFlow and Keras: pip install 'equivtest[tensorflow]'")
    code = ("import os; os.environ['KERAS_BACKEND'] = 'jax'\n"
            "import equivtest.backends.keras.tensorflow as k\n"
            "print(os.environ['KERAS_BACKEND'], k.keras.backend.backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.stdout.split() == ["jax", "tensorflow"]  # the user's value stays; Keras runs on TensorFlow
