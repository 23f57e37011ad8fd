"""The suite catches every deliberate bug in ``tools/mutants.py`` (slow tier: a copy and a pytest run each)."""

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutants.py"


def _tool():
    spec = importlib.util.spec_from_file_location("equivtest_mutants", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_mutant_names_text_that_is_in_the_code_once():
    """Fast: a mutant whose original text moved would silently test nothing."""
    tool = _tool()
    root = TOOL.parents[1]
    for m in tool.MUTANTS:
        assert (root / m.path).read_text().count(m.old) == 1, m.name


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("torch", "tensorflow")),
                    reason="needs torch and tensorflow: pip install 'equivtest[all]'")
def test_the_suite_catches_every_mutant(capsys):
    assert _tool().main([]) == 0, capsys.readouterr().out
