"""Convert a user's trained two-class softmax classifier to the one-logit sigmoid it equals, and verify it.

``convert(IN, OUT)`` and ``verify(ORIGINAL, CONVERTED, features)`` read the files the
frameworks write themselves: a Keras 3 model (``.keras``, legacy ``.h5``), a PyTorch
``state_dict`` (loaded with ``weights_only=True`` only), a ``safetensors`` file, a
Hugging Face-style folder (``config.json`` + ``model.safetensors``) and an ONNX model.
``assert_converted`` is the same verification as a one-line assertion for a project's
own tests.  Importing this package imports no framework; each format imports its own
when a file of that format is read.
"""

from __future__ import annotations

from .core import ConversionError, Converted, Rounding, convert_weights, round_to

#: the file-level API, imported on first use (it is larger than the arithmetic)
_API = ("convert", "verify", "assert_converted", "load_model", "detect_format", "ConversionResult", "VerifyResult")
__all__ = ["ConversionError", "Converted", "Rounding", "convert_weights", "round_to", *_API]


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'equivtest.convert' has no attribute {name!r}")
