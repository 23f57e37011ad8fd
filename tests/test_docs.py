"""The documents state the bounds the tests assert, and the README stays a user's guide.

Every number RULES.md and the README state for a rule is one of the bounds below,
read from the code that asserts it; measured figures live in docs/performance.md.
"""

import re
from pathlib import Path

import pytest

from equivtest.compare import CONTROL_MARGIN, PROBA_TOLERANCES, TOLERANCES
from equivtest.suite import test_mixed_precision as bf16

ROOT = Path(__file__).resolve().parents[1]
RULES = (ROOT / "RULES.md").read_text()
README = (ROOT / "README.md").read_text()


def _num(text: str) -> float:
    text = text.strip()
    if text.startswith("2^"):
        return 2.0 ** float(text[2:])
    return float(text)


#: (a pattern with one number, the document, the bound the tests assert)
STATED = [
    (r"to (\S+) in float32 and,", RULES, TOLERANCES["float32"]["atol"]),
    (r"also to (\S+) in float64", RULES, TOLERANCES["float64"]["atol"]),
    (r"by more than (\d+) x that tolerance", RULES, CONTROL_MARGIN),
    (r"step-loss gap <= (2\^-\d+)", RULES, bf16.BFLOAT16_TOL["atol"]),
    (r"val_loss gap <= (\S+),", RULES, bf16.BFLOAT16_VAL_TOL["atol"]),
    (r"step-loss gap <= (\S+) x bfloat16's own drift", RULES, bf16.DRIFT_RATIO),
    (r"breaks \(> (\d+) x 2\^-8\)", RULES, bf16.BFLOAT16_CONTROL_MARGIN),
    (r"checked to (\S+) in float32", README, PROBA_TOLERANCES["float32"]["atol"]),
    (r"and (\S+) in float64;", README, PROBA_TOLERANCES["float64"]["atol"]),
    (r"\((\S+) in float32, \S+ in float64\)", README, TOLERANCES["float32"]["atol"]),
    (r"\(\S+ in float32, (\S+) in float64\)", README, TOLERANCES["float64"]["atol"]),
    (r"at least (\d+) x the tolerance", README, CONTROL_MARGIN),
    (r"max \|dp\| \((\S+) in float32", README, PROBA_TOLERANCES["float32"]["atol"]),
    (r"in float32,\s+(\S+) in float64, plus", README, PROBA_TOLERANCES["float64"]["atol"]),
]


@pytest.mark.parametrize("pattern, doc, bound", STATED, ids=[s[0] for s in STATED])
def test_a_stated_bound_is_the_one_the_tests_assert(pattern, doc, bound):
    found = re.findall(pattern, doc)
    assert found, f"the documents no longer state {pattern!r}"
    for text in found:
        assert _num(text) == bound, f"{pattern!r}: the document says {text}, the tests assert {bound:g}"


def test_a_changed_bound_is_caught():
    """The check above tells a stale number apart: RULES.md with the float32 tolerance edited fails it."""
    stale = RULES.replace("to 1e-5 in float32 and,", "to 1e-4 in float32 and,")
    assert _num(re.findall(STATED[0][0], stale)[0]) != TOLERANCES["float32"]["atol"]


def test_the_readme_is_a_guide_without_dates_issues_or_machine_figures():
    # a user's guide stays short enough to read in one sitting: about 35 lines per command it documents
    assert len(README.splitlines()) <= 250  # the issue: "at most about 250 lines"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "a date in the README"
    assert not re.search(r"\bissue\s+#?\d+", README, re.I), "an issue number in the README"
    assert "this machine" not in README and "T23" not in README
    assert not re.search(r"\bmeasured\b", README, re.I), "a measured figure in the README (docs/performance.md)"


def test_rules_md_keeps_no_measured_figures_or_dates():
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", RULES)
    assert not re.search(r"\bmeasured \d", RULES)


def test_the_readmes_convert_and_verify_commands_parse():
    """Every `equivtest convert` / `verify` line in the README names arguments the command has."""
    import shlex

    from equivtest.cli import build_parser

    lines = [ln.split("#")[0].strip() for ln in README.splitlines()
             if ln.startswith(("equivtest convert ", "equivtest verify "))]
    assert len(lines) >= 6  # one per format, and verify
    parser = build_parser()
    for ln in lines:
        args = parser.parse_args(shlex.split(ln)[1:])  # exits 2 (SystemExit) on an unknown flag
        assert args.command in ("convert", "verify"), ln


def _perf_tables():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("equivtest_perf_tables", ROOT / "tools" / "perf_tables.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_tables_by_machine_are_what_the_stored_files_give():
    """docs/performance.md's tables by machine are tools/perf_tables.py's output from the benchmark JSON files
    and the stored `equivtest run` reports, to the character: no figure there is typed by hand."""
    tool = _perf_tables()
    assert list(tool.BENCHMARKS.glob("*.json")) and list(tool.REPORTS.glob("*.json")), "nothing to write from"
    assert tool.main(["--check"]) == 0, "run: python tools/perf_tables.py"


def _scale_median(d):
    d["benchmarks"][0]["stats"]["median"] *= 1.1  # 10 %: shows at the table's 0.1 ms on any median here


def _change_value(d):
    d["checks"][0]["value"] = 2 * d["checks"][0]["value"] + 1


def _flip_verdict(d):
    d["checks"][0]["passed"] = not d["checks"][0]["passed"]


def _change_val_loss(d):
    next(iter(d["backends"].values()))["runs"]["softmax"]["val_loss"][0] += 0.01  # the table shows 4 decimals


#: one change each to a copy of a stored file: (which files, what changes)
CHANGES = {
    "a benchmark's median": ("bench", _scale_median),
    "a check's value": ("reports", _change_value),
    "a check's verdict": ("reports", _flip_verdict),
    "a val_loss": ("reports", _change_val_loss),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_figure_changed_in_a_stored_file_is_caught(tmp_path, change):
    """The check tells a stale table apart: copies of the files give the document's block (their folder's name
    aside), and one figure changed in a copy gives another block."""
    import json
    import shutil

    tool = _perf_tables()
    doc = (ROOT / "docs" / "performance.md").read_text()
    block = doc[doc.index(tool.BEGIN): doc.index(tool.END) + len(tool.END)]
    folders = {"bench": tmp_path / "bench", "reports": tmp_path / "reports"}
    shutil.copytree(tool.BENCHMARKS, folders["bench"])
    shutil.copytree(tool.REPORTS, folders["reports"])

    def rendered():
        return (tool.render(folders["bench"], folders["reports"])
                .replace(folders["bench"].resolve().as_posix(), "tests/benchmarks/baselines")
                .replace(folders["reports"].resolve().as_posix(), "docs/reports"))

    assert rendered() == block, "the copies do not give the document's block"
    where, mutate = CHANGES[change]
    path = sorted(folders[where].glob("*.json"))[0]
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    assert rendered() != block, f"{change} changed in {path.name}, and the document's block stayed as it was"
