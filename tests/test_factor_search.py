"""The learning-rate factor search behind every "no factor rescues it" claim (``rules.best_lr_factor``).

Such a claim is only as strong as the minimum the search finds, so the search is checked on gaps whose
minimum is known: inside the range, between two grid points, at an end of the range, and on a plateau.
"""

import math

import pytest

from equivtest.rules import FACTOR_BOUNDS, best_lr_factor


def _v(at: float):
    """|log2 f - log2 at|: a V in log2(factor) with its minimum, 0, at ``at``."""
    return lambda f: abs(math.log2(f) - math.log2(at))


@pytest.mark.parametrize("at", [3.0, 0.3, 1.0 / 15.0, 15.5])
def test_the_search_finds_a_minimum_between_grid_points_to_its_tolerance(at):
    """17 grid points over 1/16..16 are 0.5 apart in log2, and none is within 0.04 of these minima; the
    refinement brings the factor within xtol of each."""
    lo, hi = (math.log2(b) for b in FACTOR_BOUNDS)
    on_grid = min(_v(at)(2.0 ** (lo + (hi - lo) * i / 16)) for i in range(17))
    assert on_grid >= 0.04, "the grid alone must not find these minima (else the test shows nothing)"
    factor, gap, seen = best_lr_factor(_v(at), xtol=1e-4)
    assert abs(math.log2(factor) - math.log2(at)) <= 1e-4 and gap <= 1e-4
    assert (factor, gap) in seen and gap == min(g for _, g in seen)


def test_the_search_keeps_to_its_bounds_and_returns_the_smallest_gap_it_saw():
    """A gap falling toward 16 and beyond: the answer is the end of the range, and no factor outside it is tried."""
    factor, gap, seen = best_lr_factor(lambda f: 1.0 / f, grid=13)
    lo, hi = FACTOR_BOUNDS
    assert all(lo <= f <= hi for f, _ in seen)
    assert factor == pytest.approx(hi, rel=1e-3) and gap == min(g for _, g in seen)


def test_a_plateau_returns_its_level():
    """A flat minimum (as the focal gap's, set by the first step's loss): any factor on it, its level exactly."""
    factor, gap, _ = best_lr_factor(lambda f: max(0.25, abs(math.log2(f) - 3.0)), grid=13)
    assert gap == 0.25 and abs(math.log2(factor) - 3.0) <= 0.25
