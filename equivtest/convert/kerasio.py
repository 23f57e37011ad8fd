"""Keras 3 models (``.keras``, legacy ``.h5``): find the head, rebuild the model around a new one, evaluate.

The head is the model's last layer: a ``Dense`` with softmax / sigmoid / no activation, or a
``Dense`` followed by a ``Softmax`` or ``Activation`` layer.  The converted model is the same
graph up to the Dense's input, then a new Dense with the same name and dtype policy; every
other layer (and its weights) is the original's.  Models are loaded with ``safe_mode=True``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import numpy as np

from .. import atomic
from ..backends.keras import quiet_native_stderr
from .core import (
    LOGITS,
    SIGMOID,
    SOFTMAX,
    ConversionError,
    Converted,
    convert_weights,
    dtype_name,
    target_units,
)

#: how many rows one forward call takes in ``evaluate`` (bounded memory on large feature files)
CHUNK = 4096


def _keras():
    from .formats import need

    need("keras")
    from ..backends import before_tensorflow

    before_tensorflow()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native_stderr():  # TensorFlow's start-up notices, when Keras runs on it
        import keras
    return keras


@contextlib.contextmanager
def _quiet():
    """No Python warnings or absl log lines from Keras (legacy .h5 notices, input-structure notes)."""
    import logging

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)


def load(path):
    keras = _keras()
    try:
        with _quiet():
            return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # a user's file: any failure to read it is one line, never a traceback
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise ConversionError(path, "holds code that Keras's safe_mode=True refuses to load (a Lambda layer "
                                        "or a custom object); equivtest never loads with safe_mode=False") from None
        if "Could not locate" in str(exc) or "Unknown layer" in str(exc):
            raise ConversionError(path, f"needs a custom class that is not registered ({msg[:160]}); equivtest "
                                        "loads with safe_mode=True and no custom objects") from None
        if "File not found" in str(exc) or "BadZipFile" in type(exc).__name__:
            raise ConversionError(path, "cannot be read as a Keras model (not a complete .keras zip or h5 file: "
                                        "truncated or corrupted?)") from None
        raise ConversionError(path, f"cannot be read as a Keras model (truncated or corrupted? "
                                    f"{type(exc).__name__}: {msg[:200]})") from None


@dataclass
class KerasHead:
    model: object
    dense: object
    activation: str  # softmax | sigmoid | logits
    after: object | None  # a separate Softmax / Activation layer after the Dense, or None

    @property
    def units(self) -> int:
        return int(self.dense.units)

    @property
    def dtype(self) -> str:
        return dtype_name(self.dense.kernel.dtype)

    @property
    def compute_dtype(self) -> str:
        """The dtype the head computes in (``mixed_bfloat16``: bfloat16 on float32 weights)."""
        return dtype_name(self.dense.compute_dtype)

    def weights(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(weight (k, d), bias (k,) or None) in float64, torch layout."""
        k = np.asarray(self.dense.kernel.numpy(), dtype=np.float64).T.copy()
        b = None if self.dense.bias is None else np.asarray(self.dense.bias.numpy(), dtype=np.float64)
        return k, b


def _activation_name(obj) -> str | None:
    act = getattr(obj, "activation", None)
    name = getattr(act, "__name__", None) or (act if isinstance(act, str) else None)
    return {"softmax": SOFTMAX, "sigmoid": SIGMOID, "linear": LOGITS}.get(name)


def find_head(path, model, *, units=(1, 2), layer: str | None = None) -> KerasHead:
    keras = _keras()
    units = (units,) if isinstance(units, int) else tuple(units)
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        raise ConversionError(path, "is a model that was never built (no input shape was given before it was "
                                    "saved); build it with keras.Input(...) and save it again")
    if len(model.inputs) != 1:
        raise ConversionError(path, f"has {len(model.inputs)} inputs; equivtest feeds one features array")
    if len(model.outputs) != 1:
        raise ConversionError(path, f"has {len(model.outputs)} outputs; equivtest converts a one-output classifier")
    layers = model.layers
    last = layers[-1]
    after = None
    if isinstance(last, keras.layers.Softmax) or (isinstance(last, keras.layers.Activation)
                                                   and _activation_name(last) in (SOFTMAX, SIGMOID)):
        after, last = last, layers[-2] if len(layers) > 1 else None
    if layer is not None:
        named = [lay for lay in layers if lay.name == layer]
        if not named:
            raise ConversionError(path, f"has no layer '{layer}' (its layers: "
                                        f"{', '.join(lay.name for lay in layers[-6:])})")
        if named[0] is not last:
            raise ConversionError(path, f"layer '{layer}' is not the model's last layer; equivtest converts "
                                        f"the output head ('{getattr(last, 'name', '?')}')")
    if not isinstance(last, keras.layers.Dense):
        raise ConversionError(path, f"its last layer '{getattr(last, 'name', '?')}' is a "
                                    f"{type(last).__name__}, not a Dense head")
    want = " or ".join(f"{u}-unit" for u in units)
    if int(last.units) not in units:
        raise ConversionError(path, f"its last layer '{last.name}' is Dense({last.units}), not a {want} head")
    act = _activation_name(last)
    if after is not None:
        if act != LOGITS:
            raise ConversionError(path, f"its head '{last.name}' has activation {act} followed by a "
                                        f"{type(after).__name__} layer")
        act = SOFTMAX if isinstance(after, keras.layers.Softmax) else _activation_name(after)
    if act is None:
        raise ConversionError(path, f"its head '{last.name}' has activation "
                                    f"{getattr(last.activation, '__name__', last.activation)}; "
                                    "expected softmax, sigmoid or none (logits)")
    if act == SOFTMAX and int(last.units) == 1 or act == SIGMOID and int(last.units) == 2:
        raise ConversionError(path, f"its head '{last.name}' is Dense({last.units}) with {act}, "
                                    "which is not a two-class classifier")
    return KerasHead(model, last, act, after)


def converted_model(head: KerasHead, conv: Converted, *, to: str):
    """The same model with the head replaced by Dense(k', activation) holding ``conv``'s weights."""
    keras = _keras()
    d = head.dense
    k_new = target_units(to)[1]
    act = "linear" if head.activation == LOGITS else (SIGMOID if to == SIGMOID else SOFTMAX)
    # the same layer in all but its width and activation: initializers, regularizers, constraints, dtype policy
    config = dict(d.get_config(), units=k_new, activation=act)
    new = type(d).from_config(config)
    if isinstance(head.model, keras.Sequential):  # a Sequential stays one: its layers, then the new head
        kept = [lay for lay in head.model.layers if lay is not d and lay is not head.after]
        inp = head.model.inputs[0]
        model = keras.Sequential([keras.Input(batch_shape=inp.shape, dtype=inp.dtype)] + kept + [new],
                                 name=head.model.name)
    else:  # a functional model: the same graph up to the head's input, then the new head
        model = keras.Model(head.model.inputs, new(d.input), name=head.model.name)
    # NumPy has no bfloat16: such values go in as float32, exact there, and Keras stores them back exactly
    kdtype = np.float32 if "bfloat16" in str(d.kernel.dtype) else d.kernel.dtype
    new.kernel.assign(np.asarray(conv.weight.T, dtype=kdtype))
    if d.bias is not None:
        new.bias.assign(np.asarray(conv.bias, dtype=kdtype))
    return model


def convert(path, out, *, to: str, split: str, layer: str | None):
    model = load(path)
    head = find_head(path, model, units=target_units(to)[0], layer=layer)
    w, b = head.weights()
    conv = convert_weights(w, b, to=to, split=split, dtype=head.dtype)
    new = converted_model(head, conv, to=to)
    with atomic.atomic_path(out) as tmp, _quiet():  # Keras warns that .h5 is a legacy format: the user chose it
        new.save(str(tmp))
    return head, conv


class KerasModel:
    """A Keras model evaluated on features at its input: p(class 1), the logit, the head's input."""

    def __init__(self, path, layer: str | None = None):
        self.path = path
        self.model = load(path)
        self.head = find_head(path, self.model, layer=layer)
        keras = _keras()
        self._body = keras.Model(self.model.inputs, self.head.dense.input)
        self.units = self.head.units
        self.activation = self.head.activation
        self.dtype = self.head.dtype
        self.compute_dtype = self.head.compute_dtype
        self.layer = self.head.dense.name
        self.weight, self.bias = self.head.weights()
        shape = self.model.inputs[0].shape
        self.input_shape = tuple(shape[1:])
        self.input_dtype = dtype_name(self.model.inputs[0].dtype)

    def evaluate(self, X: np.ndarray):
        keras = _keras()
        ops = keras.ops
        X = np.asarray(X, dtype=self.input_dtype)
        d = self.head.dense
        with _quiet():
            return self._evaluate(X, ops, d)

    def _evaluate(self, X, ops, d):
        outs, zs, hs = [], [], []
        for lo in range(0, len(X), CHUNK):
            x = X[lo:lo + CHUNK]
            out = ops.convert_to_numpy(self.model(x, training=False))
            h = self._body(x, training=False)
            k = ops.cast(d.kernel, d.compute_dtype)
            z = ops.matmul(ops.cast(h, d.compute_dtype), k)
            if d.bias is not None:
                z = z + ops.cast(d.bias, d.compute_dtype)
            outs.append(out)
            zs.append(ops.convert_to_numpy(z))
            hs.append(ops.convert_to_numpy(h))
        return np.concatenate(outs), np.concatenate(zs), np.concatenate(hs)
