"""The framework's own parameter count: d + 1 for sigmoid, 2(d + 1) for softmax."""

import pytest


@pytest.mark.parametrize("d", [1, 7, 300, 2048])
def test_framework_counts_halve(backend, d):
    soft, sig = backend.count_params("softmax", d), backend.count_params("sigmoid", d)
    assert sig == d + 1
    assert soft == 2 * (d + 1)
    assert soft == 2 * sig


def test_seed_counts(backend):
    assert backend.count_params("softmax", 2048) == 4098
    assert backend.count_params("sigmoid", 2048) == 2049
