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


class NonFiniteLoss(ArithmeticError):
    """A training loss or weight became NaN or infinite; the run stopped at that step.

    ``str(err)`` reads ``non-finite loss at step k (backend, head)`` with k counted
    from 1, as Keras prints steps and epochs; ``step`` is the index into the run's
    ``step_loss`` (k - 1, counted over the whole run).
    """

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step
