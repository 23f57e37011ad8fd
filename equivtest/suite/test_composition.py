"""Every plan option composes with data parallelism, or is refused before anything trains.

Each cell is a backend with a data-parallel engine x an option (class weights,
label smoothing, focal loss, bfloat16 autocast, every optimizer preset) x a world
size (2, and 3 with uneven shards: batch 100 over 3 ranks is 34/33/33) x a body
(none, mlp).  A cell shows one of two things:

* N workers follow the backend in one process to the suite's tolerance, **and**
  the option moves the trajectory away from the same plan without it, so an
  engine that dropped the option cannot pass;
* or the registry or the engine declares the cell unsupported, and
  :func:`equivtest.parallel.train` refuses it with one line before training.
"""

from __future__ import annotations

import pytest

from equivtest.backends import refusal
from equivtest.compare import (
    CONTROL_MARGIN,
    TOLERANCES,
    assert_trajectories_close,
    assert_trajectories_differ,
)
from equivtest.errors import InputError
from equivtest.networks import Network, group_rates
from equivtest.parallel import check, engine
from equivtest.plan import Optimizer, Plan
from equivtest.sources import surrogate

from .test_mixed_precision import BFLOAT16_TOL

pytestmark = pytest.mark.workers  # run last: their workers start in the background (plugin)

DATA = surrogate(600, 16, seed=2)  # 480 training rows: batches of 100, 100, 100, 100, 80
BASE = Plan(epochs=2, batch_size=100, lr=0.05, optimizer="sgd", dtype="float32")

OPTIONS = {
    "class weights": dict(class_weight=(1.0, 3.0)),
    "label smoothing": dict(label_smoothing=0.2),
    "focal": dict(loss="focal", focal_gamma=2.0),
    "bfloat16 autocast": dict(autocast="bfloat16"),
    "momentum": dict(optimizer="momentum"),
    "nesterov": dict(optimizer="nesterov"),
    "adam": dict(optimizer="adam", lr=1e-2),
    "rmsprop": dict(optimizer="rmsprop", lr=1e-2),
    "adagrad": dict(optimizer="adagrad"),
    "adamw": dict(optimizer="adamw", lr=1e-2),
    "coupled L2": dict(optimizer=Optimizer(name="sgd", weight_decay=0.25)),  # BASE plus decay alone
}

#: how far an option must move the trajectory from the plan without it: CONTROL_MARGIN x the tolerance, except
#: bfloat16, which moves a float32 run by its rounding only (measured 4e-4 to 1.5e-3 in step loss): 10 x 1e-5
MOVES = {"bfloat16 autocast": 10.0}


@pytest.fixture
def dp_backend(backend):
    if engine(backend.name) is None:
        pytest.skip(f"backend '{backend.name}' has no data-parallel engine (torch, keras and keras-jax have)")
    return backend


def _train(be, plan, world_size, body):
    from equivtest import parallel

    head_init = plan.initial_weights("softmax", 16 if body == "none" else Network(body, DATA.input_shape).width)
    if body == "none":
        if world_size == 0:
            return be.train("softmax", head_init, plan, DATA)
        return parallel.train("softmax", head_init, plan, DATA, world_size, backend=be.name)
    net = Network(body, DATA.input_shape)
    rates = group_rates(plan.lr, plan.optimizer.weight_decay, "softmax")
    if world_size == 0:
        return be.train_network(net, "softmax", plan.body_weights(net), head_init, plan, DATA, rates=rates)
    return parallel.train_network(net, "softmax", plan.body_weights(net), head_init, plan, DATA, rates, world_size,
                                  backend=be.name)


@pytest.mark.fast_cells(dict(backend="torch", option="class weights", world_size=3, body="none"))
@pytest.mark.parametrize("body", ["none", "mlp"])
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_an_option_composes_with_data_parallelism_or_is_refused(dp_backend, option, world_size, body):
    be = dp_backend
    plan = BASE.replace(**OPTIONS[option])
    try:
        check(be.name, plan, len(DATA.y_train), world_size)
        declared = None
    except InputError as exc:
        declared = str(exc)
    if declared:  # refused, in one line, before anything trains
        assert "\n" not in declared and f"backend '{be.name}'" in declared
        with pytest.raises(InputError, match="^backend '"):
            _train(be, plan, world_size, body)
        return
    assert refusal(be.name, plan, world_size=world_size) is None
    many = _train(be, plan, world_size, body)
    assert many.meta["world_size"] == world_size
    one = _train(be, plan, 0, body)
    tol = BFLOAT16_TOL if plan.autocast else TOLERANCES["float32"]
    assert_trajectories_close(many, one, fields=("step_loss", "val_loss"), **tol)
    without = _train(be, BASE, world_size, body)
    assert_trajectories_differ(many, without, factor=MOVES.get(option, CONTROL_MARGIN), **TOLERANCES["float32"])
