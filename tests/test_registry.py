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


def test_data_parallel_refusals_apply_to_more_than_one_worker_only():
    p = Plan(class_weight=(1.0, 3.0))
    assert refusal("keras", p) is None
    assert refusal("keras", p, world_size=2) == ("backend 'keras' does not offer class weights on 2 workers: "
                                                 "its data-parallel path has no class weights yet")
    assert "float64" in refusal("keras-torch", Plan(dtype="float64"))
    assert "no bfloat16 autocast" in refusal("numpy", Plan(autocast="bfloat16"))


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
