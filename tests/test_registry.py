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
