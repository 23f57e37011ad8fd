"""Skips counted by reason, and the reasons a skip may have.

A skip is allowed only for a reason the run cannot help: a capability the
registry declares absent (:func:`equivtest.backends.refusal`, float64, an
engine), a framework not installed (the reason names the extra), a device not
asked for or not present, a backend not selected, a benchmark without
``--bench``, or a machine feature that is absent.  Any other skip hides a test
that should have run (an adapter that lost an optimizer used to look like
this), so the suite's summary lists it and the run fails.
"""

from __future__ import annotations

import re
from collections import Counter

#: what an allowed skip reason looks like, each with the kind of reason it is
ALLOWED = (
    (re.compile(r"^backend '[\w-]+' does not offer "), "a capability the registry declares absent"),
    (re.compile(r"^backend '[\w-]+' does not (support|train in) float64"), "declared: float64"),
    (re.compile(r"^backend '[\w-]+' has no data-parallel engine"), "declared: no data-parallel engine"),
    (re.compile(r"^backend '[\w-]+' has no TF32 switch"), "declared: device kinds"),
    (re.compile(r"pip install '?equivtest\["), "a missing extra"),
    (re.compile(r"^needs backends .*: add them to --backend"), "a backend not selected"),
    (re.compile(r"(needs a GPU|compares a GPU with the CPU|baselines are stored for the CPU|a CUDA device is present)"),
     "a device"),
    (re.compile(r"^benchmark: run with --bench"), "--bench"),
    (re.compile(r"^EQUIVTEST_TF32 is set"), "the run's own setting"),
    (re.compile(r"^NumPy dispatches to no optional SIMD target"), "a machine feature that is absent"),
    (re.compile(r"^the platform has no fork server"), "a machine feature that is absent"),
)


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = longrepr[2]
    else:
        reason = str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def by_reason(reports) -> Counter:
    return Counter(_reason(r) for r in reports)


def allowed(reason: str) -> bool:
    return any(rx.search(reason) for rx, _ in ALLOWED)


def undeclared(counts) -> list[str]:
    return sorted(r for r in counts if not allowed(r))
