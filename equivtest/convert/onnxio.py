"""ONNX models: find the 2-way Gemm (or MatMul + Add) and its Softmax at the output, convert, run with ONNX Runtime.

The head is the node chain that makes the graph's one output: ``Gemm`` (or ``MatMul`` then
``Add``) with constant initializers, optionally followed by ``Softmax`` or ``Sigmoid``.  The
converted model has the same graph with that weight and bias replaced, ``Softmax`` swapped for
``Sigmoid`` (or back), and the output's last dimension set to the new unit count; it passes
``onnx.checker`` before it is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import atomic
from . import core
from .core import LOGITS, SIGMOID, SOFTMAX, ConversionError

_ACT = {"Softmax": SOFTMAX, "Sigmoid": SIGMOID}


def _onnx():
    from .formats import need

    need("onnx")
    import onnx

    return onnx


def load(path):
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, OSError, ValueError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(path, f"cannot be read as an ONNX model (truncated or corrupted? "
                                    f"{type(exc).__name__}: {msg[:200]})") from None
    return model


@dataclass
class OnnxHead:
    model: object
    matmul: object  # the Gemm or MatMul node
    add: object | None  # the Add node after a MatMul
    act: object | None  # the Softmax / Sigmoid node, or None (logits out)
    activation: str
    w_name: str
    b_name: str | None
    transposed: bool  # weight stored (k, d) (Gemm transB=1) rather than (d, k)
    scale: tuple[float, float]  # Gemm's alpha, beta
    input_name: str  # the head's input tensor
    logits_name: str  # the head's pre-activation output

    def _init(self, name):
        return next(t for t in self.model.graph.initializer if t.name == name)

    def weights(self) -> tuple[np.ndarray, np.ndarray | None, str]:
        from onnx import numpy_helper

        w = numpy_helper.to_array(self._init(self.w_name))
        dtype = core.dtype_name(w.dtype)
        w64 = np.asarray(w, dtype=np.float64) * self.scale[0]
        w64 = w64 if self.transposed else w64.T
        b = None
        if self.b_name is not None:
            b = np.asarray(numpy_helper.to_array(self._init(self.b_name)), dtype=np.float64).reshape(-1) * self.scale[1]
        return w64.copy(), b, dtype


def _attr(node, name, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def find_head(path, model, *, units=(1, 2)) -> OnnxHead:
    units = (units,) if isinstance(units, int) else tuple(units)
    g = model.graph
    if len(g.output) != 1:
        raise ConversionError(path, f"has {len(g.output)} outputs ({', '.join(o.name for o in g.output)}); "
                                    "equivtest converts a one-output classifier")
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name for t in g.initializer}
    out = g.output[0].name
    node = producer.get(out)
    act, activation = None, LOGITS
    if node is not None and node.op_type in _ACT:
        act, activation = node, _ACT[node.op_type]
        node = producer.get(node.input[0])
    add = None
    if node is not None and node.op_type == "Add":
        add = node
        a, b = node.input
        node, b_name = (producer.get(a), b) if b in inits else (producer.get(b), a)
        if b_name not in inits:
            raise ConversionError(path, "its last Add has no constant bias")
    if node is None or node.op_type not in ("Gemm", "MatMul") or (add is not None and node.op_type != "MatMul"):
        what = node.op_type if node is not None else "a graph input"
        raise ConversionError(path, f"its output is not made by a Gemm or MatMul (+ Add) head (found {what})")
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0):
            raise ConversionError(path, "its last Gemm transposes its input (transA=1), which equivtest does not convert")
        x, w_name = node.input[0], node.input[1]
        b_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        transposed = bool(_attr(node, "transB", 0))
        scale = (float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0)))
    else:
        x, w_name = node.input
        transposed, scale = False, (1.0, 1.0)
        b_name = b_name if add is not None else None
    for name in (w_name, b_name):
        if name is not None and name not in inits:
            raise ConversionError(path, f"its head's '{name}' is not a constant initializer")
    uses = [i for n in g.node for i in n.input]
    for name in (w_name, b_name):
        if name is not None and uses.count(name) > 1:
            raise ConversionError(path, f"its head's '{name}' is shared with other nodes")
    head = OnnxHead(model, node, add, act, activation, w_name, b_name, transposed, scale, x,
                    (add or node).output[0])
    w, b, _ = head.weights()
    want = " or ".join(f"{u}-way" for u in units)
    if w.shape[0] not in units:
        raise ConversionError(path, f"its head '{node.name or node.op_type}' is {w.shape[0]}-way, not {want}")
    if b is not None and b.shape != (w.shape[0],):
        raise ConversionError(path, f"its head's bias has {b.size} values for {w.shape[0]} units")
    if activation == SOFTMAX and w.shape[0] == 1 or activation == SIGMOID and w.shape[0] == 2:
        raise ConversionError(path, f"its head is {w.shape[0]}-way with {act.op_type}, "
                                    "which is not a two-class classifier")
    if act is not None and act.op_type == "Softmax" and _attr(act, "axis", -1) not in (-1, 1):
        raise ConversionError(path, f"its Softmax is over axis {_attr(act, 'axis', -1)}, not the classes")
    return head


def converted_model(head: OnnxHead, conv: core.Converted, *, to: str):
    onnx = _onnx()
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(head.model)
    g = model.graph
    np_dtype = helper.tensor_dtype_to_np_dtype(next(t for t in g.initializer if t.name == head.w_name).data_type)
    w = conv.weight if head.transposed else conv.weight.T
    for i, t in enumerate(g.initializer):
        if t.name == head.w_name:
            g.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w).astype(np_dtype), t.name))
        elif t.name == head.b_name:
            b = conv.bias.reshape(tuple(d for d in t.dims[:-1]) + (conv.bias.size,)) if len(t.dims) > 1 else conv.bias
            g.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(b).astype(np_dtype), t.name))
    for node in g.node:
        if node.op_type == "Gemm" and node.name == head.matmul.name and list(node.output) == list(head.matmul.output):
            for a in node.attribute:
                if a.name in ("alpha", "beta"):
                    a.f = 1.0  # the scales are folded into the stored values
        if head.act is not None and list(node.output) == list(head.act.output):
            del node.attribute[:]
            if to == SIGMOID:
                node.op_type = "Sigmoid"
            else:
                node.op_type = "Softmax"
                node.attribute.extend([helper.make_attribute("axis", -1)])
    k_new = core.target_units(to)[1]
    dims = g.output[0].type.tensor_type.shape.dim
    if len(dims):
        dims[len(dims) - 1].Clear()
        dims[len(dims) - 1].dim_value = k_new
    keep = [vi for vi in g.value_info if vi.name not in (head.logits_name, g.output[0].name)]
    del g.value_info[:]
    g.value_info.extend(keep)
    onnx.checker.check_model(model)
    return model


def convert(path, out, *, to: str, split: str, layer: str | None):
    onnx = _onnx()
    model = load(path)
    head = find_head(path, model, units=core.target_units(to)[0])
    if layer is not None and layer not in (head.matmul.name, head.w_name):
        raise ConversionError(path, f"has no head named '{layer}' (its head is the "
                                    f"{head.matmul.op_type} '{head.matmul.name}' with weight '{head.w_name}')")
    w, b, dtype = head.weights()
    conv = core.convert_weights(w, b, to=to, split=split, dtype=dtype)
    new = converted_model(head, conv, to=to)
    with atomic.atomic_path(out) as tmp:
        onnx.save(new, str(tmp))
    return head, conv


def _session(model):
    from .formats import need

    need("onnx")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An ONNX model run with ONNX Runtime: p(class 1), the logit, the head's input."""

    def __init__(self, path, layer: str | None = None):
        from onnx import helper

        self.path = path
        self.model = load(path)
        self.head = find_head(path, self.model)
        self.activation = self.head.activation
        self.weight, self.bias, self.dtype = self.head.weights()
        self.units = int(self.weight.shape[0])
        self.compute_dtype = self.dtype  # ONNX Runtime computes in the initializers' dtype
        self.layer = self.head.matmul.name or self.head.w_name
        g = self.model.graph
        inits = {t.name for t in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1:
            raise ConversionError(path, f"has {len(inputs)} inputs; equivtest feeds one features array")
        self.input_name = inputs[0].name
        tt = inputs[0].type.tensor_type
        self.input_dtype = core.dtype_name(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)[1:]
        probe = type(self.model)()
        probe.CopyFrom(self.model)
        have = {o.name for o in probe.graph.output}
        for name in (self.head.logits_name, self.head.input_name):
            if name not in have:
                probe.graph.output.append(helper.make_empty_tensor_value_info(name))
        self._names = [g.output[0].name, self.head.logits_name, self.head.input_name]
        self._sess = _session(probe)

    def evaluate(self, X: np.ndarray):
        X = np.asarray(X, dtype=self.input_dtype)
        tt = self.model.graph.input[[i.name for i in self.model.graph.input].index(self.input_name)].type.tensor_type
        fixed = tt.shape.dim[0].dim_value if len(tt.shape.dim) and tt.shape.dim[0].HasField("dim_value") else 0
        if not fixed or fixed == len(X):
            out, z, h = self._sess.run(self._names, {self.input_name: X})
            return np.asarray(out), np.asarray(z), np.asarray(h)
        # a graph exported with a fixed batch size (torch.onnx.export's default): run it batch by batch,
        # the last batch padded with zeros and the padding dropped
        parts = []
        for lo in range(0, len(X), fixed):
            x = X[lo:lo + fixed]
            pad = np.zeros((fixed - len(x),) + X.shape[1:], dtype=X.dtype)
            res = self._sess.run(self._names, {self.input_name: np.concatenate([x, pad])})
            parts.append([np.asarray(r)[: len(x)] for r in res])
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def head_model(weight: np.ndarray, bias: np.ndarray | None, activation: str, dtype: str):
    """A one-node ONNX head (Gemm, then Softmax / Sigmoid / nothing) holding ``weight`` (k, d) in ``dtype``."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    np_dtype = np.float64 if dtype == "float64" else np.float32
    elem = TensorProto.DOUBLE if np_dtype is np.float64 else TensorProto.FLOAT
    k, d = weight.shape
    inits = [numpy_helper.from_array(weight.astype(np_dtype), "W")]
    inputs = ["x", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np_dtype), "B"))
        inputs.append("B")
    nodes = [helper.make_node("Gemm", inputs, ["logits"], transB=1, name="head")]
    out = "logits"
    if activation != LOGITS:
        nodes.append(helper.make_node("Softmax" if activation == SOFTMAX else "Sigmoid", ["logits"], ["p"],
                                      **({"axis": -1} if activation == SOFTMAX else {})))
        out = "p"
    outputs = [helper.make_tensor_value_info(out, elem, [None, k])]
    if out != "logits":  # the logits too, so that the check can read them
        outputs.append(helper.make_tensor_value_info("logits", elem, [None, k]))
    graph = helper.make_graph(nodes, "equivtest_head", [helper.make_tensor_value_info("x", elem, [None, d])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="equivtest")
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model


def run_head(model, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(output, logits) of a :func:`head_model` on ``X``, by ONNX Runtime."""
    sess = _session(model)
    elem = model.graph.input[0].type.tensor_type.elem_type
    dtype = np.float64 if elem == 11 else np.float32  # TensorProto.DOUBLE
    res = sess.run(None, {"x": np.asarray(X, dtype=dtype)})
    return np.asarray(res[0]), np.asarray(res[-1])
