"""equivtest: prove that a two-class softmax head and a one-logit sigmoid head are the same classifier.

Importing this package imports no machine-learning framework: torch, tensorflow and
keras are imported only by ``equivtest.backends.<name>`` when that backend is asked for.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendUnavailable, FeatureError, InputError

__all__ = ["__version__", "InputError", "FeatureError", "BackendUnavailable"]
