"""Device names parsed once (``equivtest.devices``)."""

import pytest

from equivtest.devices import Device, parse_devices
from equivtest.errors import InputError


@pytest.mark.parametrize("spec, kind, index, canonical, tf", [
    ("cpu", "cpu", None, "cpu", "/CPU:0"),
    (" CUDA ", "cuda", None, "cuda:0", "/GPU:0"),
    ("gpu", "cuda", None, "cuda:0", "/GPU:0"),
    ("cuda:2", "cuda", 2, "cuda:2", "/GPU:2"),
    ("mps", "mps", None, "mps", "/GPU:0"),
    (None, "cpu", None, "cpu", "/CPU:0"),
])
def test_each_name_gives_its_kind_index_and_spellings(spec, kind, index, canonical, tf):
    d = Device.parse(spec)
    assert (d.kind, d.index, d.canonical, d.tensorflow) == (kind, index, canonical, tf)
    assert d.is_accelerator == (kind in ("cuda", "mps"))


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "mps:1", "cpu:0"])
def test_unknown_names_fail_listing_the_valid_ones(spec):
    with pytest.raises(InputError, match=r"unknown device .*valid names: cpu, cuda, mps, auto \(or cuda:N\)"):
        Device.parse(spec)


def test_a_list_keeps_order_without_repeats():
    assert [str(d) for d in parse_devices("cpu, cuda,cpu,cuda:1")] == ["cpu", "cuda", "cuda:1"]
    assert parse_devices("") == [Device("cpu")]


def test_run_refuses_several_devices_instead_of_dropping_them(tmp_path):
    from equivtest.cli import main

    assert main(["run", "--features", "synthetic:100x4", "--backend", "numpy", "--device", "cpu,cuda",
                 "--out", str(tmp_path)]) == 2
