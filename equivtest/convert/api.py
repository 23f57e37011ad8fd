"""``convert`` and ``verify`` a user's model file, and ``assert_converted`` for a project's own tests.

``verify`` runs both models in their own framework (ONNX models in ONNX Runtime) on the
user's features and reports:

* the maximum |dp| between the two models' p(class 1), checked at the suite's probability
  tolerance for the arithmetic's dtype (1e-6 in float32, 1e-12 in float64) plus, for weights
  stored in bfloat16 or float16, the most that storage can move p (:func:`core.storage_logit_bound`);
* the maximum |d logit| (z1 - z0 for a two-way head), against the bound the storage and the
  arithmetic set;
* the decisions: the softmax's argmax (exact ties to class 0) against the converted head's
  ``logit > 0``, which is the same rule; they must agree on every item whose margin is past the
  logit bound, and the items where ``p > 0.5`` and ``p >= 0.5`` would decide differently
  (p rounds to exactly 0.5) are counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..compare import PROBA_TOLERANCES
from ..errors import FeatureError, InputError
from . import core
from .core import HALF, LOGITS, SIGMOID, SOFTMAX, UNIT_ROUNDOFF, ConversionError, Rounding
from .formats import FORMATS, detect, need

TIE_RULE = ("softmax: argmax, exact ties to class 0 (predict 1 iff z1 > z0); sigmoid: logit > 0 "
            "(the same rule; p > 0.5 and p >= 0.5 part from it where p rounds to exactly 0.5)")
#: Hugging Face heads by the names transformers gives them, preferred when a folder has several candidates
HF_HEAD_NAMES = ("score", "classifier", "classifier.out_proj", "classifier.dense_out", "logits_proj")


def detect_format(path) -> str:
    """'keras', 'torch', 'safetensors', 'hf' or 'onnx' (one line, :class:`ConversionError`, for anything else)."""
    return detect(path)


# ------------------------------------------------------------------------------------------ convert
@dataclass
class ConversionResult:
    source: str
    out: str
    format: str
    layer: str
    to: str
    split: str | None
    units: tuple[int, int]  # (before, after)
    n_features: int
    params: tuple[int, int]  # the head's parameter count (before, after)
    rounding: Rounding

    def to_dict(self) -> dict:
        return {"source": self.source, "out": self.out, "format": self.format, "layer": self.layer,
                "to": self.to, "split": self.split, "units": list(self.units), "n_features": self.n_features,
                "params": list(self.params), "rounding": self.rounding.to_dict()}

    def describe(self) -> str:
        k0, k1 = self.units
        return (f"converted {self.source} ({FORMATS[self.format].what}) -> {self.out}: head '{self.layer}' "
                f"({k0}, {self.n_features}) -> ({k1}, {self.n_features}) {self.to}"
                + (f", {self.split} split" if self.split else "")
                + f"; head parameters {self.params[0]} -> {self.params[1]}; weights {self.rounding.describe()}")


#: what OUT may be called for each format (a torch state_dict takes any name but another format's)
OUT_SUFFIXES = {"keras": (".keras", ".h5", ".hdf5"), "safetensors": (".safetensors",), "onnx": (".onnx",)}


def _check_out(src: Path, out: Path, *, overwrite: bool, fmt: str) -> None:
    if out.exists() and src.exists() and (out.resolve() == src.resolve() or out.samefile(src)):
        raise ConversionError(out, "OUT is the same as IN; write the converted model to a new path")
    if src.is_dir() and src.resolve() in out.resolve().parents:
        raise ConversionError(out, f"OUT is inside IN ('{src}'); write the converted folder beside it")
    suffix = out.suffix.lower()
    if fmt in OUT_SUFFIXES and suffix not in OUT_SUFFIXES[fmt]:
        raise ConversionError(out, f"a {FORMATS[fmt].what} is written as {' or '.join(OUT_SUFFIXES[fmt])}; "
                                   "give OUT that suffix")
    others = {x for f, xs in OUT_SUFFIXES.items() if f != fmt for x in xs}
    if fmt in ("torch", "hf") and suffix in others:
        raise ConversionError(out, f"ends in {suffix}, but the converted model is a {FORMATS[fmt].what}")
    if out.exists() and not overwrite:
        raise ConversionError(out, "already exists (pass --overwrite to replace it)")
    if out.exists() and (out.is_dir() != (fmt == "hf")):
        raise ConversionError(out, "exists and is a " + ("folder" if out.is_dir() else "file")
                                   + f"; a {FORMATS[fmt].what} is written as a " + ("folder" if fmt == "hf" else "file"))
    if not out.parent.is_dir():
        raise ConversionError(out, f"its folder '{out.parent}' does not exist")


def convert(src, out, *, to: str = SIGMOID, split: str = "zero", layer: str | None = None,
            overwrite: bool = False) -> ConversionResult:
    """Convert the model file ``src`` (2-way softmax to 1-logit sigmoid, or back with ``to="softmax"``).

    The arithmetic is float64, stored once in the file's own dtype (:func:`core.convert_weights`);
    everything else in the file is kept.  Bad input raises :class:`ConversionError` (one line) and
    writes nothing; OUT is written atomically.
    """
    if to not in (SIGMOID, SOFTMAX):
        raise InputError(f"--to {to!r}: expected sigmoid or softmax")
    if split not in core.SPLITS:
        raise InputError(f"--split {split!r}: expected zero or symmetric")
    src, out = Path(src), Path(out)
    fmt = detect(src)
    _check_out(src, out, overwrite=overwrite, fmt=fmt)
    need(fmt)
    if fmt == "keras":
        from . import kerasio

        head, conv = kerasio.convert(src, out, to=to, split=split, layer=layer)
        name, d = head.dense.name, head.weights()[0].shape[1]
    elif fmt == "onnx":
        from . import onnxio

        head, conv = onnxio.convert(src, out, to=to, split=split, layer=layer)
        name, d = head.matmul.name or head.w_name, conv.weight.shape[1]
    else:
        name, d, conv = _convert_tensors(src, out, fmt, to=to, split=split, layer=layer, overwrite=overwrite)
    k0, k1 = core.target_units(to)
    has_bias = conv.bias is not None
    return ConversionResult(str(src), str(out), fmt, name, to, split if to == SOFTMAX else None, (k0, k1), d,
                            (k0 * (d + has_bias), k1 * (d + has_bias)), conv.rounding)


def _pick_layer(path, tensors, units, layer, *, hf: bool):
    """The head: named by ``layer``, or the only candidate; several are listed and ``--layer`` asked for.

    Two-row tables that are not layers (BERT's token-type embeddings, norms) are not candidates; in a
    Hugging Face folder a candidate with transformers' head name (``score``, ``classifier``, ...) is
    taken when it is the only one so named."""
    from . import tensors as T

    if layer is not None:
        return T.find_layer(path, tensors, units=units, layer=layer)
    heads = {k: t for k, t in tensors.items() if "embed" not in k.lower() and "norm" not in k.lower()}
    try:
        return T.find_layer(path, heads, units=units)
    except ConversionError as exc:
        if not hf or "candidate" not in exc.problem:
            raise
        cands = T.candidates(heads, units)
        named = [k for k in cands if k.rsplit(".", 1)[0] in HF_HEAD_NAMES]
        if len(named) == 1:
            return T.find_layer(path, tensors, units=units, layer=named[0])
        raise


def _convert_tensors(src, out, fmt, *, to, split, layer, overwrite):
    from . import tensors as T

    k0 = core.target_units(to)[0]
    if fmt == "torch":
        tensors = T.read_state_dict(src)
        lay = _pick_layer(src, tensors, k0, layer, hf=False)
        new, conv = T.replace_layer(tensors, lay, to=to, split=split)
        T.write_state_dict(new, out)
    elif fmt == "safetensors":
        tensors, meta = T.read_safetensors(src)
        lay = _pick_layer(src, tensors, k0, layer, hf=False)
        new, conv = T.replace_layer(tensors, lay, to=to, split=split)
        T.write_safetensors(new, out, meta)
    else:
        folder = T.read_hf(src)
        config = T.hf_config_converted(src, folder.config, to=to)
        tensors, where, metas = T.hf_tensors(folder)
        lay = _pick_layer(src, tensors, k0, layer, hf=True)
        new, conv = T.replace_layer(tensors, lay, to=to, split=split)
        changed = {lay.weight_key} | ({lay.bias_key} if lay.bias_key else set())
        T.write_hf(folder, out, tensors=new, where=where, metas=metas, changed=changed, config=config,
                   overwrite=overwrite)
    return lay.name, lay.n_features, conv


# ------------------------------------------------------------------------------------------ models
class WeightsModel:
    """A head stored in a weights-only file, applied with torch on features at the layer's input."""

    def __init__(self, path, fmt: str, layer: str | None = None):
        from . import tensors as T

        self.path = path
        if fmt == "torch":
            tensors = T.read_state_dict(path)
        elif fmt == "safetensors":
            tensors = T.read_safetensors(path)[0]
        else:
            tensors = T.hf_tensors(T.read_hf(path))[0]
        lay = _pick_layer(path, tensors, (1, 2), layer, hf=fmt == "hf")
        self.layer, self.units, self.dtype = lay.name, lay.units, lay.dtype
        self.weight, self.bias = lay.weight, lay.bias
        self.activation = SOFTMAX if lay.units == 2 else SIGMOID
        self.compute_dtype = "float64" if lay.dtype == "float64" else "float32"  # half precision: in float32
        self.input_shape = (lay.n_features,)
        self._stored = (tensors[lay.weight_key], None if lay.bias_key is None else tensors[lay.bias_key])

    def evaluate(self, X: np.ndarray):
        from .tensors import apply_head

        return apply_head(*self._stored, X, float64=self.dtype == "float64")


def load_model(path, layer: str | None = None):
    """The model in ``path``, ready to ``evaluate(X) -> (output, logits, head input)``."""
    fmt = detect(path)
    need(fmt)
    if fmt == "keras":
        from .kerasio import KerasModel

        m = KerasModel(path, layer)
    elif fmt == "onnx":
        from .onnxio import OnnxModel

        m = OnnxModel(path, layer)
    else:
        m = WeightsModel(path, fmt, layer)
    m.format, m.weights_only = fmt, FORMATS[fmt].weights_only  # what the format is, declared once
    return m


# ------------------------------------------------------------------------------------------ features
def load_features(spec, *, dataset: str | None = None) -> tuple[np.ndarray, str]:
    """The features array of ``spec`` (.npy, .npz, .h5, or a built-in source name) and how to name it.

    An ``.npz`` or ``.h5`` with several arrays needs ``dataset``; one with a single array, or an h5 in
    the seed's schema (``train``), does not.
    """
    p = Path(str(spec))
    suffix = p.suffix.lower()
    if suffix in (".npy", ".npz", ".h5", ".hdf5") or p.exists():
        if not p.is_file():
            raise FeatureError(f"features '{spec}'", "does not exist")
        try:
            if suffix == ".npy":
                X, name = np.load(p, allow_pickle=False), "the array"
            elif suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    X, name = _pick(spec, list(z.files), dataset, lambda k: z[k])
            else:
                import h5py

                with h5py.File(p, "r") as f:
                    keys = [k for k in f if isinstance(f[k], h5py.Dataset)]
                    X, name = _pick(spec, keys, dataset, lambda k: f[k][()], prefer="train")
        except FeatureError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FeatureError(f"features '{spec}'", f"cannot be read (truncated or corrupted? {msg[:160]})") from None
    else:
        from ..sources import load_features as builtin

        X, name = builtin(str(spec)).X, "the built-in features"
    return check_features(X, spec, name), name


def check_features(X, spec: str = "array", name: str = "the array") -> np.ndarray:
    """``X`` as a numeric array with one row per item and only finite values, or one line saying what is wrong."""
    try:
        X = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise FeatureError(f"features '{spec}'", f"{name} is not an array of numbers ({exc})") from None
    if X.dtype.kind not in "biuf" or X.ndim < 2 or X.shape[0] == 0:
        raise FeatureError(f"features '{spec}'", f"{name} is {X.dtype} of shape {X.shape}; expected numbers, "
                                                 "one row per item")
    if not np.isfinite(X).all():
        raise FeatureError(f"features '{spec}'", f"{name} holds NaN or infinite values")
    return X


def _pick(spec, keys, dataset, get, prefer=None):
    if dataset is not None:
        if dataset not in keys:
            raise FeatureError(f"features '{spec}'", f"has no dataset '{dataset}' (it has {', '.join(keys) or 'none'})")
        return get(dataset), f"dataset '{dataset}'"
    if len(keys) == 1:
        return get(keys[0]), f"dataset '{keys[0]}'"
    if prefer in keys:
        return get(prefer), f"dataset '{prefer}'"
    raise FeatureError(f"features '{spec}'", f"has {len(keys)} datasets ({', '.join(keys) or 'none'}); "
                                             "name one with --dataset")


# ------------------------------------------------------------------------------------------ verify
@dataclass
class VerifyCheck:
    name: str
    value: float
    op: str
    tolerance: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.tolerance) if self.op == "<=" else bool(self.value == self.tolerance)

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "op": self.op, "tolerance": self.tolerance,
                "passed": self.passed, "detail": self.detail}

    def line(self) -> str:
        return (f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.value:.3g} {self.op} {self.tolerance:.3g}"
                + (f" ({self.detail})" if self.detail else ""))


@dataclass
class VerifyResult:
    original: dict
    converted: dict
    features: dict
    compute_dtype: str
    checks: list[VerifyCheck]
    decisions: dict
    bound: dict
    onnx: dict | None = None
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        from .. import __version__
        from ..machine import machine_info

        return {"equivtest_version": __version__, "command": "verify",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "environment": machine_info(), "original": self.original, "converted": self.converted,
                "features": self.features, "compute_dtype": self.compute_dtype, "tie_rule": TIE_RULE,
                "decisions": self.decisions, "bound": self.bound, "onnx": self.onnx,
                "checks": [c.to_dict() for c in self.checks], "passed": self.passed, "wall_s": self.wall_s}

    def failure_message(self) -> str:
        bad = [c.line() for c in self.checks if not c.passed]
        return (f"{self.converted['path']} does not verify against {self.original['path']} on "
                f"{self.features['source']}: " + "; ".join(bad))

    def text(self) -> str:
        o, c = self.original, self.converted
        lines = [f"original : {o['path']} ({o['format']}, '{o['layer']}' {o['units']}-way {o['activation']}, {o['dtype']})",
                 f"converted: {c['path']} ({c['format']}, '{c['layer']}' {c['units']}-way {c['activation']}, {c['dtype']})",
                 f"features : {self.features['source']} ({' x '.join(map(str, self.features['shape']))}), "
                 f"arithmetic in {self.compute_dtype}",
                 f"decisions: {self.decisions['agree']} / {self.decisions['total']} agree; "
                 f"{self.decisions['ties_p_half']} item(s) with p exactly 0.5 (where p > 0.5 and p >= 0.5 differ)",
                 f"tie rule : {TIE_RULE}", ""]
        lines += [ch.line() for ch in self.checks]
        lines += ["", ("verified" if self.passed else "NOT verified") + f" ({len(self.checks)} checks, {self.wall_s:.1f} s)"]
        return "\n".join(lines)


def _p1(out: np.ndarray, z: np.ndarray, activation: str, units: int) -> np.ndarray:
    """p(class 1) from a model's own output; a logits-only model's through float64's logistic."""
    out = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    if activation == LOGITS:
        from ..heads import sigmoid

        return sigmoid(_logit(z, units))
    return out[:, 1] if units == 2 else out[:, 0]


def _logit(z: np.ndarray, units: int) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    return z[:, 1] - z[:, 0] if units == 2 else z[:, 0]


def _describe(m) -> dict:
    return {"path": str(m.path), "format": m.format, "layer": m.layer, "units": m.units, "activation": m.activation,
            "dtype": m.dtype, "compute_dtype": m.compute_dtype, "n_params": int(m.weight.size + (0 if m.bias is None else m.bias.size))}


def _check_width(m, X: np.ndarray, spec: str, name: str) -> None:
    want = tuple(m.input_shape)
    got = tuple(X.shape[1:])
    if m.weights_only:  # the layer applies to the last axis: rows (N, d) or tokens (N, T, d)
        want, got = want[-1:], got[-1:]
    ok = len(want) == len(got) and all(w is None or w == g for w, g in zip(want, got))
    if not ok:
        where = f"layer '{m.layer}' input" if m.weights_only else "model input"
        shape = " x ".join("?" if w is None else str(w) for w in want)
        raise FeatureError(f"features '{spec}'", f"{name} has rows of shape {' x '.join(map(str, got))}, but "
                                                 f"{m.path}'s {where} takes {shape}")


def verify(original, converted, features, *, layer: str | None = None, converted_layer: str | None = None,
           dataset: str | None = None, export_onnx: str | Path | None = None) -> VerifyResult:
    """Run ``original`` and ``converted`` on ``features`` and check that they are the same classifier.

    ``features`` is a path (.npy, .npz, .h5), a built-in source name, or an array.  For weights-only
    files they are the features at the layer's input.  ``export_onnx`` (a folder) also exports both
    heads to ONNX there and checks ONNX Runtime against the framework.
    """
    t0 = time.perf_counter()
    a = load_model(original, layer)
    b = load_model(converted, converted_layer or layer)
    if a.weights_only != b.weights_only:
        raise InputError(f"model '{converted}': is a {'weights-only file' if b.weights_only else 'whole model'} "
                         f"but '{original}' is a {'weights-only file' if a.weights_only else 'whole model'}; "
                         "verify compares two of the same kind (features feed both)")
    if isinstance(features, (str, Path)):
        spec = str(features)
        X, name = load_features(spec, dataset=dataset)
    else:  # an array, a list, a tensor: checked as a file's array is
        spec, name = "array", "the array"
        X = check_features(features.numpy() if hasattr(features, "numpy") else features)
    if a.weight.shape[1] != b.weight.shape[1]:
        raise InputError(f"model '{converted}': its head '{b.layer}' takes {b.weight.shape[1]} inputs, but "
                         f"'{original}''s head '{a.layer}' takes {a.weight.shape[1]}: not a conversion of it")
    for m in (a, b):
        _check_width(m, X, spec, name)
    d = a.weight.shape[1]
    out_a, z_a, h_a = (np.asarray(v) for v in a.evaluate(X))
    out_b, z_b, h_b = (np.asarray(v) for v in b.evaluate(X))
    # a head on every row (N, d), or on every token (N, T, d): one item per row of the head's input
    out_a, z_a, h_a = out_a.reshape(-1, out_a.shape[-1]), z_a.reshape(-1, a.units), h_a.reshape(-1, d)
    out_b, z_b, h_b = out_b.reshape(-1, out_b.shape[-1]), z_b.reshape(-1, b.units), h_b.reshape(-1, d)
    p_a, p_b = _p1(out_a, z_a, a.activation, a.units), _p1(out_b, z_b, b.activation, b.units)
    l_a, l_b = _logit(z_a, a.units), _logit(z_b, b.units)
    if not all(np.isfinite(v).all() for v in (p_a, p_b, l_a, l_b)):
        raise FeatureError(f"features '{spec}'", f"{name} makes the models' outputs non-finite (values that "
                                                 f"overflow {a.compute_dtype}?)")
    # the arithmetic's dtype: the coarser of the two models' (half-precision weights applied in float32 are float32)
    compute = max((a.compute_dtype, b.compute_dtype), key=lambda t: UNIT_ROUNDOFF[t])
    u_c = UNIT_ROUNDOFF[compute]
    # the bound on |d logit|: storage of the converted weights in their dtype, plus the two heads' own
    # rounding in the arithmetic's dtype (each dot product of n terms within n u sum|x w| of exact)
    h = np.asarray(h_b, dtype=np.float64)
    n_items = len(h)
    store = core.storage_logit_bound(h, b.weight, b.bias, b.dtype) if b.dtype in HALF else np.zeros(n_items)

    logit_bound = store + _dot_bound(h, a, u_c) + _dot_bound(h, b, u_c)
    dp = np.abs(p_a - p_b)
    dz = np.abs(l_a - l_b)
    if compute in PROBA_TOLERANCES:
        tol_p = PROBA_TOLERANCES[compute]["atol"] + float(store.max(initial=0.0)) / 4
        tol_what = (f"tolerance {PROBA_TOLERANCES[compute]['atol']:g} for {compute}"
                    + (f" + the {b.dtype} storage bound / 4" if b.dtype in HALF else ""))
    else:  # a model computing in half precision: its logits within the bound, its outputs rounded once more
        tol_p = float(logit_bound.max()) / 4 + 2 * u_c
        tol_what = f"the logit bound / 4 + 2 u of {compute}, the dtype the model computes in"
    dec_a, dec_b = l_a > 0, l_b > 0  # argmax with ties to class 0 == z1 - z0 > 0; the sigmoid's logit > 0
    clear = np.abs(l_a) > logit_bound
    disagree_clear = int(np.sum((dec_a != dec_b) & clear))
    checks = [
        VerifyCheck("max |dp|", float(dp.max()), "<=", tol_p, f"p(class 1) of the two models; {tol_what}"),
        VerifyCheck("max |d logit| / bound", float(np.max(dz / np.maximum(logit_bound, 1e-300))), "<=", 1.0,
                    f"max |d logit| {float(dz.max()):.3g}; the bound per item is the storage's u sum|x beta| plus "
                    f"(d + 2) u sum|x w| of each head's arithmetic in {compute}"),
        VerifyCheck("decisions that disagree (past the bound)", float(disagree_clear), "==", 0.0,
                    f"{int(clear.sum())} items with |logit| past the bound; "
                    f"{int(np.sum(dec_a != dec_b))} disagree in all"),
        _stored_check(a, b, np.asarray(h_a, dtype=np.float64), h),
    ]
    bound = {"storage_dtype": b.dtype, "unit_roundoff": UNIT_ROUNDOFF.get(b.dtype), "max_storage_logit": float(
        store.max(initial=0.0)), "max_logit_bound": float(logit_bound.max()), "proba_tolerance": tol_p}
    onnx_rep = None
    if export_onnx is not None:
        onnx_rep = _export_onnx(Path(export_onnx), a, b, h_a, h_b, out_a, out_b, p_a, p_b, compute, tol_p, checks)
    decisions = {"agree": int(np.sum(dec_a == dec_b)), "total": int(n_items),
                 "ties_p_half": int(np.sum(p_b == 0.5)), "rule": TIE_RULE,
                 "max_abs_dp": float(dp.max()), "max_abs_dlogit": float(dz.max())}
    feats = {"source": spec, "dataset": name, "shape": list(X.shape), "dtype": str(X.dtype)}
    return VerifyResult(_describe(a), _describe(b), feats, compute, checks, decisions, bound, onnx_rep,
                        time.perf_counter() - t0)


def _dot_bound(h: np.ndarray, m, u: float) -> np.ndarray:
    """Per item, the most a head's logit can be off when computed with unit roundoff ``u``: each dot
    product of d + 1 terms is within (d + 2) u sum|x w| of exact (summed over a two-row head's rows)."""
    s = np.abs(h) @ np.abs(m.weight).T + (0 if m.bias is None else np.abs(m.bias))
    return (m.weight.shape[1] + 2) * u * s.sum(axis=1)


def _stored_check(a, b, h_a: np.ndarray, h_b: np.ndarray) -> VerifyCheck:
    """The conversion itself, apart from any framework's arithmetic: both stored heads applied in float64.

    The converted weights are the exact float64 conversion rounded once to their dtype, so the two logits
    differ by at most the storage's ``u sum|x beta|`` (:func:`core.storage_logit_bound`) plus float64's own
    rounding of the two dot products; a slip in the conversion (a sign, a bias) shows here even when the
    models compute in bfloat16, whose arithmetic the check on p must allow for."""
    za = _logit(h_a @ a.weight.T + (0 if a.bias is None else a.bias), a.units)
    zb = _logit(h_b @ b.weight.T + (0 if b.bias is None else b.bias), b.units)
    u = UNIT_ROUNDOFF[b.dtype]
    u64 = UNIT_ROUNDOFF["float64"]
    arith = _dot_bound(h_a, a, u64) + _dot_bound(h_b, b, u64)
    # the bound is taken on the stored beta: |beta| <= |stored| / (1 - u), hence the (1 + 2u)
    bound = core.storage_logit_bound(h_b, b.weight, b.bias, b.dtype) * (1 + 2 * u) + arith
    gap = np.abs(za - zb)
    return VerifyCheck("stored heads in float64: max |d logit| / bound", float(np.max(gap / np.maximum(bound, 1e-300))),
                       "<=", 1.0, f"max |d logit| {float(gap.max()):.3g}; the bound is one rounding to {b.dtype} "
                                  f"(u = {u:.3g}) per stored weight, u sum|x beta|, plus float64's own")


def _export_onnx(folder: Path, a, b, h_a, h_b, out_a, out_b, p_a, p_b, compute, tol_p, checks) -> dict:
    """Export both heads to ONNX in ``folder``, run them in ONNX Runtime, check them against the framework."""
    from .. import atomic
    from . import onnxio

    need("onnx")
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    rep = {}
    for tag, m, h, p in (("original", a, h_a, p_a), ("converted", b, h_b, p_b)):
        dtype = "float64" if compute == "float64" else "float32"
        model = onnxio.head_model(m.weight, m.bias, m.activation, dtype)
        path = folder / f"{tag}_head.onnx"
        with atomic.atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
        out, z = onnxio.run_head(model, np.asarray(h, dtype=np.float64))
        p_onnx = _p1(out, z, m.activation, m.units)
        gap = float(np.max(np.abs(p_onnx - p)))
        checks.append(VerifyCheck(f"ONNX Runtime vs {m.format} ({tag})", gap, "<=", tol_p,
                                  f"the exported head {path.name} on the head's input"))
        rep[tag] = {"path": str(path), "max_abs_dp": gap}
    return rep


def assert_converted(original, converted, features, *, layer: str | None = None, dataset: str | None = None):
    """Assert that ``converted`` is ``original``'s classifier on ``features`` (as ``equivtest verify``).

    Raises AssertionError naming each failed check; returns the :class:`VerifyResult` otherwise.
    """
    res = verify(original, converted, features, layer=layer, dataset=dataset)
    if not res.passed:
        raise AssertionError(res.failure_message())
    return res

