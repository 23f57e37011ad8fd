"""The model formats ``convert`` and ``verify`` read: declared once, detected from the file itself.

Detection looks at the bytes, not only the name: a Keras ``.keras`` file is a zip
holding ``config.json``, a torch file a zip holding ``data.pkl`` (or an old-style
pickle), HDF5 starts with its signature, safetensors with an 8-byte header length
and ``{``, ONNX is a protobuf whose name ends ``.onnx``.  Nothing framework-specific
is imported here.
"""

from __future__ import annotations

import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailable
from .core import ConversionError


@dataclass(frozen=True)
class Format:
    name: str
    what: str  # how a message names it
    requires: tuple[str, ...]  # modules that must be importable to read it
    extra: str  # the pip extra that installs them
    weights_only: bool  # holds tensors only (verify then checks the layer on features at its input)


FORMATS: dict[str, Format] = {
    "keras": Format("keras", "Keras 3 model (.keras, legacy .h5)", ("keras",), "tensorflow", False),
    "torch": Format("torch", "PyTorch state_dict (torch.save)", ("torch",), "torch", True),
    "safetensors": Format("safetensors", "safetensors file", ("safetensors", "torch"), "safetensors", True),
    "hf": Format("hf", "Hugging Face-style folder (config.json + model.safetensors, shards or pytorch_model.bin)", ("safetensors", "torch"),
                 "safetensors", True),
    "onnx": Format("onnx", "ONNX model", ("onnx", "onnxruntime"), "onnx", False),
}
KNOWN = ("a Keras .keras/.h5 model, a torch state_dict (.pt/.pth/.bin), a .safetensors file, "
         "a Hugging Face folder (config.json + model.safetensors) or an .onnx model")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def need(fmt: str) -> None:
    """Raise :class:`BackendUnavailable` naming the extra when ``fmt``'s modules are not installed."""
    f = FORMATS[fmt] if fmt in FORMATS else Format(fmt, fmt, (fmt,), fmt, True)
    miss = [m for m in f.requires if importlib.util.find_spec(m) is None]
    if miss:
        raise BackendUnavailable(f"reading a {f.what} needs {', '.join(miss)}, which is not installed: "
                                 f"pip install 'equivtest[{f.extra}]'")


def detect(path) -> str:
    """The format of ``path`` (one of :data:`FORMATS`), or one line saying why it is not a model."""
    p = Path(path)
    if not p.exists():
        raise ConversionError(p, "does not exist")
    if p.is_dir():
        if (p / "config.json").is_file():
            return "hf"
        raise ConversionError(p, f"is a folder without config.json; expected {KNOWN}")
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ConversionError(p, f"cannot be read ({exc.strerror})") from None
    suffix = p.suffix.lower()
    if not head:
        raise ConversionError(p, "is empty")
    if head.startswith(_HDF5_SIGNATURE):
        return "keras"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if "config.json" in names and any(n.startswith("model.weights") for n in names):
            return "keras"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch"
        if suffix == ".keras":
            return "keras"  # a damaged .keras file: its reader says what is wrong
        if suffix in (".pt", ".pth", ".bin"):
            return "torch"
        raise ConversionError(p, f"is a zip file but neither a Keras model nor a torch file; expected {KNOWN}")
    if len(head) >= 9 and head[8:9] == b"{" and suffix != ".onnx":
        return "safetensors"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".bin") or head[:1] == b"\x80":  # legacy (non-zip) torch.save: a pickle
        return "torch"
    if suffix in (".keras", ".h5", ".hdf5"):
        return "keras"
    raise ConversionError(p, f"is not a model file equivtest reads; expected {KNOWN}")
