"""Errors a user can cause, each carrying one line that says what, where and why.

The CLI turns :class:`InputError` into exit code 2 and the pytest plugin into a
usage error; neither prints a traceback for them.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a features file, a dataset inside it, or an option value.

    ``str(err)`` is a single line, e.g.
    ``features file 'x.h5': dataset 'label' has 24999 rows but 'train' has 25000``.
    """


class FeatureError(InputError):
    """A features source (h5 file, built-in name) that cannot be used."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class BackendUnavailable(RuntimeError):
    """A backend whose framework is not installed (the message names the extra)."""
