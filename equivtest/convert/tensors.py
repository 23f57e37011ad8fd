"""Weights-only files: a PyTorch ``state_dict``, a ``safetensors`` file, a Hugging Face-style folder.

Each is read into an ordered ``{name: torch.Tensor}``; the head is found among its
tensors (:func:`find_layer`), replaced, and every other tensor is written back
unchanged, in its order.  A ``state_dict`` is loaded with ``weights_only=True``
and nothing else: a file that needs code unpickled is refused, never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import atomic
from .core import UNIT_ROUNDOFF, ConversionError, convert_weights, dtype_name, target_units

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
HF_TORCH = "pytorch_model.bin"


def _torch():
    from .formats import need

    need("torch")
    import torch

    return torch


@dataclass
class Layer:
    """The head found in a tensor file: its name (the prefix of ``.weight``), weight (k, d), optional bias."""

    name: str
    weight_key: str
    bias_key: str | None
    weight: np.ndarray  # float64 values, (k, d)
    bias: np.ndarray | None  # float64 values, (k,)
    dtype: str  # the stored dtype

    @property
    def units(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.weight.shape[1])


def _as_f64(t) -> np.ndarray:
    return t.detach().to("cpu").double().numpy()


def find_layer(path, tensors: dict, *, units: int | tuple[int, ...] = 2, layer: str | None = None) -> Layer:
    """The one head with ``units`` rows: named by ``layer`` (``classifier`` or ``classifier.weight``), or the only candidate.

    A candidate is a 2-D floating tensor with ``units`` rows whose name ends in ``weight`` (with
    its ``bias`` of shape (units,) where there is one).  None, or several, is one line naming them.
    """
    units = (units,) if isinstance(units, int) else tuple(units)
    want = " or ".join(f"({u}, d)" for u in units)

    def bias_of(wkey, k):
        bkey = wkey[: -len("weight")] + "bias" if wkey.endswith("weight") else None
        b = tensors.get(bkey) if bkey else None
        if b is None:
            return None
        if tuple(b.shape) != (k,):
            raise ConversionError(path, f"layer '{wkey}' has bias '{bkey}' of shape {tuple(b.shape)}, "
                                        f"expected ({k},)")
        return bkey

    if layer is not None:
        wkey = layer if layer in tensors else f"{layer}.weight"
        if wkey not in tensors:
            close = [k for k in tensors if layer in k][:5]
            raise ConversionError(path, f"has no layer '{layer}' (no tensor '{layer}.weight')"
                                  + (f"; names like it: {', '.join(close)}" if close else ""))
        w = tensors[wkey]
        if w.ndim != 2 or int(w.shape[0]) not in units:
            raise ConversionError(path, f"layer '{layer}' has weight {tuple(w.shape)}, not a {want} head")
        cands = [wkey]
    else:
        cands = candidates(tensors, units)
        if not cands:
            rows = sorted({int(t.shape[0]) for t in tensors.values() if getattr(t, "ndim", 0) == 2})
            raise ConversionError(path, f"no {want} head among its {len(tensors)} tensors (2-D weights have "
                                        f"{', '.join(map(str, rows)) or 'no'} rows); name the layer with --layer")
        if len(cands) > 1:
            raise ConversionError(path, f"{len(cands)} candidate {want} heads ({', '.join(cands)}); "
                                        "name one with --layer")
    wkey = cands[0]
    w = tensors[wkey]
    if dtype_name(w.dtype) not in UNIT_ROUNDOFF:
        raise ConversionError(path, f"layer '{wkey}' is stored as {dtype_name(w.dtype)}; equivtest converts "
                                    f"{', '.join(UNIT_ROUNDOFF)} heads")
    bkey = bias_of(wkey, int(w.shape[0]))
    if bkey is not None and dtype_name(tensors[bkey].dtype) not in UNIT_ROUNDOFF:
        raise ConversionError(path, f"bias '{bkey}' is stored as {dtype_name(tensors[bkey].dtype)}; equivtest "
                                    f"converts {', '.join(UNIT_ROUNDOFF)} heads")
    name = wkey[: -len(".weight")] if wkey.endswith(".weight") else wkey
    return Layer(name, wkey, bkey, _as_f64(w), None if bkey is None else _as_f64(tensors[bkey]),
                 dtype_name(w.dtype))


def candidates(tensors: dict, units) -> list[str]:
    """Names of the tensors that could be a head's weight: 2-D, ``units`` rows, a float dtype equivtest converts."""
    units = (units,) if isinstance(units, int) else tuple(units)
    return [k for k, t in tensors.items()
            if k.endswith("weight") and getattr(t, "ndim", 0) == 2 and int(t.shape[0]) in units
            and dtype_name(getattr(t, "dtype", "")) in UNIT_ROUNDOFF]


def replace_layer(tensors: dict, lay: Layer, *, to: str, split: str):
    """``tensors`` with the head converted (a new dict, other tensors the same objects), and the Converted."""
    torch = _torch()
    bias_dtype = None if lay.bias_key is None else dtype_name(tensors[lay.bias_key].dtype)
    conv = convert_weights(lay.weight, lay.bias, to=to, split=split, dtype=lay.dtype, bias_dtype=bias_dtype)
    out = {}
    for k, t in tensors.items():
        if k in (lay.weight_key, lay.bias_key):  # each in its own dtype (a float16 bias beside float32 weights)
            t = torch.from_numpy(conv.weight if k == lay.weight_key else conv.bias).to(t.dtype).contiguous()
        out[k] = t
    return out, conv


def apply_head(weight, bias, X: np.ndarray, *, float64: bool):
    """(p, logits, X) of a stored head on ``X`` with torch: softmax over two rows, sigmoid of one.

    Float64 weights are applied in float64, every other dtype in float32 (half-precision values are
    exact in float32, as autocast's accumulators hold them).
    """
    torch = _torch()
    dt = torch.float64 if float64 else torch.float32
    w, b = weight.to(dt), None if bias is None else bias.to(dt)
    x = torch.from_numpy(np.ascontiguousarray(X)).to(dt)
    with torch.no_grad():
        z = torch.nn.functional.linear(x, w, b)
        out = torch.softmax(z, dim=-1) if w.shape[0] == 2 else torch.sigmoid(z)
    return out.numpy(), z.numpy(), np.asarray(X)


# ------------------------------------------------------------------------------------------ state_dict
def read_state_dict(path) -> dict:
    torch = _torch()
    import pickle
    import zipfile

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        why = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise ConversionError(path, "needs code unpickled to load (weights_only=True refuses it: "
                                    f"{why.strip()[:160]}); equivtest never loads with weights_only=False — "
                                    "save model.state_dict() instead") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConversionError(path, f"cannot be read as a torch file (truncated or corrupted? "
                                    f"{type(exc).__name__}: {_first_line(exc)})") from None
    return _tensor_mapping(path, obj)


def _tensor_mapping(path, obj) -> dict:
    torch = _torch()
    if not isinstance(obj, dict):
        raise ConversionError(path, f"holds an object of type {type(obj).__name__}, not a state_dict (a dict of "
                                    "tensors)")
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            hint = "; save model.state_dict() alone" if isinstance(v, dict) else ""
            raise ConversionError(path, f"is not a state_dict: key '{k}' holds a {type(v).__name__}, "
                                        f"not a tensor{hint}")
    return dict(obj)


def write_state_dict(tensors: dict, path) -> None:
    torch = _torch()
    with atomic.atomic_path(path) as tmp:
        torch.save(tensors, tmp)


# ------------------------------------------------------------------------------------------ safetensors
def read_safetensors(path) -> tuple[dict, dict | None]:
    from .formats import need

    need("safetensors")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ConversionError(path, f"cannot be read as safetensors (truncated or corrupted? "
                                    f"{type(exc).__name__}: {_first_line(exc)})") from None
    return tensors, meta


def write_safetensors(tensors: dict, path, metadata: dict | None) -> None:
    from safetensors.torch import save_file

    with atomic.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# ------------------------------------------------------------------------------------------ Hugging Face
@dataclass
class HFFolder:
    """A Hugging Face-style folder: its config and the file(s) its tensors live in."""

    path: Path
    config: dict
    files: list[str] = field(default_factory=list)  # the weight files, relative to path
    kind: str = "safetensors"  # safetensors | sharded | torch


def read_hf(path) -> HFFolder:
    path = Path(path)
    cfg_path = path / HF_CONFIG
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(path, f"is a folder without {HF_CONFIG}: not a Hugging Face model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(cfg_path, f"is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(config, dict):
        raise ConversionError(cfg_path, "is not a JSON object")
    found = [f for f in (HF_WEIGHTS, HF_INDEX, HF_TORCH, "pytorch_model.bin.index.json", "tf_model.h5",
                         "flax_model.msgpack", "model.onnx", "onnx/model.onnx") if (path / f).exists()]
    if len(found) > 1:
        raise ConversionError(path, f"holds the weights more than once ({', '.join(found)}); converting one would "
                                    "leave the others with the 2-way head: keep one and convert that")
    if (path / HF_WEIGHTS).is_file():
        return HFFolder(path, config, [HF_WEIGHTS], "safetensors")
    if (path / HF_INDEX).is_file():
        try:
            index = json.loads((path / HF_INDEX).read_text(encoding="utf-8"))
            files = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ConversionError(path / HF_INDEX, f"is not a safetensors index ({_first_line(exc)})") from None
        return HFFolder(path, config, files, "sharded")
    if (path / HF_TORCH).is_file():
        return HFFolder(path, config, [HF_TORCH], "torch")
    raise ConversionError(path, f"has {HF_CONFIG} but no {HF_WEIGHTS}, {HF_INDEX} or {HF_TORCH}")


def hf_tensors(folder: HFFolder) -> tuple[dict, dict[str, str], dict[str, dict | None]]:
    """All tensors, the file each lives in, and each safetensors file's metadata."""
    tensors, where, metas = {}, {}, {}
    for f in folder.files:
        p = folder.path / f
        if not p.is_file():
            raise ConversionError(folder.path, f"its index names '{f}', which is missing")
        if folder.kind == "torch":
            t, meta = read_state_dict(p), None
        else:
            t, meta = read_safetensors(p)
        metas[f] = meta
        for k, v in t.items():
            tensors[k] = v
            where[k] = f
    return tensors, where, metas


def hf_labels(path, config: dict) -> dict[str, str]:
    """``id2label`` as ``{"0": name, ...}``; its size is the head's class count."""
    id2label = config.get("id2label")
    n = config.get("num_labels")
    if isinstance(id2label, dict) and id2label:
        labels = {str(k): str(v) for k, v in id2label.items()}
        if n is not None and n != len(labels):
            raise ConversionError(path, f"{HF_CONFIG} says num_labels {n} but id2label has {len(labels)} entries")
        if set(labels) != {str(i) for i in range(len(labels))}:
            raise ConversionError(path, f"{HF_CONFIG}'s id2label keys are {', '.join(sorted(labels))}; "
                                        f"expected 0 to {len(labels) - 1}")
        return labels
    if isinstance(n, int) and n > 0:
        return {str(i): f"LABEL_{i}" for i in range(n)}
    return {"0": "LABEL_0", "1": "LABEL_1"}  # transformers' default: two labels


def hf_config_converted(path, config: dict, *, to: str) -> dict:
    """The config of the converted classifier.

    To sigmoid: ``num_labels`` 1, ``problem_type`` ``multi_label_classification`` (BCE with logits;
    ``num_labels: 1`` alone means MSE regression), ``id2label`` naming the positive class, and the
    two original labels kept under ``equivtest`` so that ``--to softmax`` can restore them.
    """
    labels = hf_labels(path, config)
    have, want = target_units(to)
    if len(labels) != have:
        kind = "two-class (num_labels 2)" if to == "sigmoid" else "one-logit (num_labels 1)"
        raise ConversionError(path, f"{HF_CONFIG} has {len(labels)} labels ({', '.join(labels.values())}); "
                                    f"converting to {to} needs a {kind} classifier")
    new = dict(config)
    if to == "sigmoid":
        pos = labels["1"]
        new.update(num_labels=1, problem_type="multi_label_classification", id2label={"0": pos}, label2id={pos: 0},
                   equivtest={"converted_from": "softmax", "id2label": labels})
    else:
        pos = labels["0"]
        old = config.get("equivtest", {}).get("id2label") if isinstance(config.get("equivtest"), dict) else None
        usable = isinstance(old, dict) and set(map(str, old)) == {"0", "1"}
        id2label = {str(k): str(v) for k, v in old.items()} if usable else {"0": f"not {pos}", "1": pos}
        new.update(num_labels=2, problem_type="single_label_classification", id2label=id2label,
                   label2id={v: int(k) for k, v in id2label.items()})
        new.pop("equivtest", None)
    return new


def write_hf(folder: HFFolder, out, *, tensors: dict, where: dict, metas: dict, changed: set[str],
             config: dict, overwrite: bool) -> None:
    """Write the converted folder: a new folder beside OUT, then renamed into place.

    Files holding a changed tensor are rewritten; every other file of the folder (tokenizer,
    other shards, README) is copied byte for byte.
    """
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        rewrite = {where[k] for k in changed}
        for src in sorted(folder.path.rglob("*")):
            rel = src.relative_to(folder.path)
            dst = tmp / rel
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            name = str(rel)
            if name == HF_CONFIG:
                atomic.write_text(dst, json.dumps(config, indent=2, sort_keys=False) + "\n")
            elif name in rewrite:
                part = {k: t for k, t in tensors.items() if where[k] == name}
                if folder.kind == "torch":
                    write_state_dict(part, dst)
                else:
                    write_safetensors(part, dst, metas.get(name))
            elif name == HF_INDEX:
                index = json.loads(src.read_text(encoding="utf-8"))
                total = sum(t.numel() * t.element_size() for t in tensors.values())
                index.setdefault("metadata", {})["total_size"] = total
                atomic.write_text(dst, json.dumps(index, indent=2) + "\n")
            else:
                shutil.copy2(src, dst)
        os.chmod(tmp, 0o777 & ~atomic.umask())
        if out.exists():
            if not overwrite:  # checked before; a folder that appeared since is not replaced
                raise ConversionError(out, "already exists (pass --overwrite to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _first_line(exc) -> str:
    s = str(exc).strip()
    return (s.splitlines()[0] if s else type(exc).__name__)[:200]
