"""Step-level progress: the loops that step in Python report every step, and the terminal display shows them."""

import io

import numpy as np
import pytest

from equivtest.plan import Plan
from equivtest.sources import surrogate

DATA = surrogate(300, 12, seed=4)
PLAN = Plan(epochs=2, batch_size=64, lr=0.05)  # 240 training rows: steps of 64, 64, 64, 48


class Recorder:
    def __init__(self):
        self.epochs, self.steps = [], []

    def __call__(self, epoch, logs):
        self.epochs.append(epoch)

    def step(self, epoch, step, steps):
        self.steps.append((epoch, step, steps))


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_every_step_is_reported_counted_from_1_and_changes_nothing(name):
    from equivtest.backends import available, get

    ok, why = available(name)
    if not ok:
        pytest.skip(why)
    be = get(name)
    rec = Recorder()
    w = PLAN.initial_weights("softmax", DATA.n_features)
    with_hook = be.train("softmax", w, PLAN, DATA, callback=rec)
    plain = be.train("softmax", w, PLAN, DATA, callback=lambda e, logs: None)
    k = PLAN.steps_per_epoch(len(DATA.y_train))
    assert k == 4
    assert rec.steps == [(e, s, k) for e in range(PLAN.epochs) for s in range(1, k + 1)]
    assert rec.epochs == list(range(PLAN.epochs))
    np.testing.assert_array_equal(with_hook.step_loss, plain.step_loss)  # a display never moves the numbers


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_the_terminal_shows_a_bar_over_the_epochs_steps_and_a_pipe_does_not():
    from equivtest.cli import Progress

    live = Progress(FakeTerminal(), quiet=False)
    try:
        assert live.shows_steps
        live.training(6)
        live.run("torch", "softmax")
        live.step("torch", "softmax", 0, 2, 4)
        task = next(t for t in live._live.tasks if "steps" in t.description)
        assert (task.completed, task.total, task.visible) == (2, 4, True)
        assert task.description.strip() == "epoch 1 steps"
        live.run("torch", "sigmoid_converted")  # a new run hides the last run's step bar until it steps
        assert not task.visible
    finally:
        live.close()
    piped = Progress(io.StringIO(), quiet=False)
    assert not piped.shows_steps
    piped.step("torch", "softmax", 0, 1, 4)  # nothing to show, nothing raised
