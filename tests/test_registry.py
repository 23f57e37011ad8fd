"""The registry declares what each backend does not offer; only those cells skip, anything else fails."""

import pytest

from equivtest.backends import refusal
from equivtest.plan import Optimizer, Plan
from equivtest.sources import surrogate
from equivtest.suite.helpers import train_pair


def test_a_declared_refusal_is_one_line_naming_backend_option_and_reason():
    p = Plan(optimizer=Optimizer("sgd", weight_decay=0.05, decay="decoupled"))
    reason = refusal("torch", p)
    assert reason == ("backend 'torch' does not offer decoupled decay without AdamW: "
                      "torch.optim offers decoupled weight decay in AdamW only")
    assert refusal("numpy", p) is None and refusal("keras", p) is None
    assert refusal("torch", Plan(optimizer="adam")) is None


def test_data_parallel_and_network_refusals_apply_only_where_declared(monkeypatch):
    """What a backend declares for N workers or whole networks only: refused there, offered elsewhere.  (No
    backend declares such a refusal today: every option composes; the mechanism stays for the next one.)"""
    import dataclasses

    from equivtest import backends

    declared = dataclasses.replace(backends.REGISTRY["keras"], refuses_parallel=(("class weights", "reason A"),),
                                   refuses_network=(("autocast", "reason B"),))
    monkeypatch.setitem(backends.REGISTRY, "keras", declared)
    weighted, mixed = Plan(class_weight=(1.0, 3.0)), Plan(autocast="bfloat16")
    assert refusal("keras", weighted) is None and refusal("keras", weighted, network=True) is None
    assert refusal("keras", weighted, world_size=2) == "backend 'keras' does not offer class weights on 2 workers: reason A"
    assert refusal("keras", mixed) is None and refusal("keras", mixed, world_size=2) is None
    assert refusal("keras", mixed, network=True) == "backend 'keras' does not offer autocast for whole networks: reason B"
    assert "float64" in refusal("keras-torch", Plan(dtype="float64"))
    assert "no bfloat16 autocast" in refusal("numpy", Plan(autocast="bfloat16"))


def test_every_option_composes_on_every_engine_and_body():
    """The registry declares no N-worker or whole-network refusal: the composition matrix and the network
    matrix run every such cell (they skip only what is declared)."""
    from equivtest.backends import REGISTRY

    assert {n: (bi.refuses_parallel, bi.refuses_network) for n, bi in REGISTRY.items()} == \
        {n: ((), ()) for n in REGISTRY}


class _LostAdam:
    """A deliberately broken adapter: it lost Adam, which the registry does not declare."""

    name = "torch"

    def train(self, head, w, plan, data, **kw):
        raise NotImplementedError("backend 'torch' has no optimizer 'adam'")


def test_an_undeclared_not_implemented_error_fails_the_test_instead_of_skipping():
    data = surrogate(200, 8, seed=1)
    with pytest.raises(NotImplementedError, match="no optimizer 'adam'"):
        train_pair(_LostAdam(), Plan(optimizer="adam"), data)
    declared = Plan(optimizer=Optimizer("sgd", weight_decay=0.05, decay="decoupled"))
    with pytest.raises(pytest.skip.Exception, match="does not offer decoupled decay"):
        train_pair(_LostAdam(), declared, data)


_RECORD = "import os\nwith open(os.environ['IMPORT_LOG'], 'a') as f:\n    f.write(__name__ + '\\n')\n"


@pytest.mark.parametrize("triton", ["loads", "broken"])
@pytest.mark.parametrize("entry", [
    "from equivtest import backends; backends.get('keras')",  # every Keras-on-TensorFlow backend run
    "from equivtest.convert import kerasio; kerasio._keras()",  # equivtest convert / verify on a Keras file
])
def test_torch_and_triton_load_before_tensorflow(tmp_path, entry, triton):
    """TensorFlow loaded before Triton (which CUDA builds of torch bring, and load on the first optimizer)
    crashes the process: every path that loads TensorFlow loads torch and Triton first.  Stand-ins for the
    three record the order they are imported in; TensorFlow's ends the process there (nothing else runs).
    A Triton that fails to import (``broken``) is left out, as torch leaves it out, and Keras still loads."""
    import os
    import subprocess
    import sys

    for name in ("torch", "triton"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(_RECORD)
    if triton == "broken":
        (tmp_path / "triton" / "__init__.py").write_text(_RECORD + "raise ImportError('libtriton.so: undefined symbol')\n")
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(_RECORD + "raise SystemExit(0)\n")
    log = tmp_path / "imports.log"
    env = {**os.environ, "IMPORT_LOG": str(log), "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", entry], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert log.read_text().split() == ["torch", "triton", "tensorflow"]
