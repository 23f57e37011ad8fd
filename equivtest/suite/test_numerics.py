"""Numerical hygiene every backend starts with, whatever the device."""

import pytest


def test_tf32_is_off_unless_asked(backend):
    """Every backend with a TF32 switch starts with it off (EQUIVTEST_TF32 unset), on any device."""
    import os

    if os.environ.get("EQUIVTEST_TF32"):
        pytest.skip("EQUIVTEST_TF32 is set for this run")
    state = backend.tf32()
    assert state in (None, False), f"backend '{backend.name}' starts with TF32 on"
