"""``equivtest convert`` and ``equivtest verify`` on files each framework trains and saves itself.

For every format (Keras ``.keras`` and ``.h5``, a torch ``state_dict``, ``safetensors``, a
Hugging Face-style folder, ONNX): a trained model converts, reloads in its framework, and
verifies at the suite's probability tolerance (1e-6 in float32, 1e-12 in float64); a
deliberately wrong conversion (beta = w0 - w1, or the bias left as b1) fails ``verify``; and
every bad input is one line, exit 2, with nothing written.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from equivtest import heads
from equivtest.cli import main
from equivtest.compare import CONTROL_MARGIN, PROBA_TOLERANCES
from equivtest.convert import api, core
from equivtest.errors import BackendUnavailable
from equivtest.suite.tiers import FIRST  # noqa: F401  (the tier markers' vocabulary)

D, N, HIDDEN = 12, 400, 6
FORMATS = ("torch", "safetensors", "hf", "onnx", "keras", "keras-h5")


def need(fmt: str) -> None:
    """Skip, naming the extra, when ``fmt``'s framework is not installed."""
    from equivtest.convert.formats import need as need_format

    try:
        need_format({"keras-h5": "keras", "hf": "hf"}.get(fmt, fmt))
        if fmt == "onnx":
            need_format("torch")  # the ONNX models here are exported from a trained torch model
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def data(dtype="float32"):
    """Features with a linear class boundary: the same bits on every machine (PCG64, fixed seed)."""
    rng = np.random.default_rng(7)
    X = rng.random((N, D))
    y = (X @ np.linspace(-1.0, 1.0, D) > 0).astype(np.int64)
    return X.astype(dtype), y


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ makers
def _train_torch(model, X, y, steps=40, lr=0.5):
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model


def make(fmt: str, folder, dtype: str = "float32"):
    """Train a two-class softmax classifier with ``fmt``'s framework, save it there; (path, head-input features)."""
    X, y = data("float64" if dtype == "float64" else "float32")
    if fmt in ("torch", "safetensors"):
        import torch

        torch.manual_seed(0)
        model = _train_torch(torch.nn.Linear(D, 2).to(getattr(torch, "float64" if dtype == "float64" else "float32")),
                             X, y)
        sd = {k: v.detach().to(getattr(torch, dtype)) for k, v in model.state_dict().items()}
        if fmt == "torch":
            path = folder / "model.pt"
            torch.save(sd, path)
        else:
            from safetensors.torch import save_file

            path = folder / "model.safetensors"
            save_file(sd, str(path), metadata={"format": "pt"})
        return path, X
    if fmt == "hf":
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        tdt = getattr(torch, dtype)
        body, clf = torch.nn.Linear(D, HIDDEN).to(tdt), torch.nn.Linear(HIDDEN, 2).to(tdt)
        _train_torch(torch.nn.Sequential(body, torch.nn.ReLU(), clf), X.astype(dtype), y)
        path = folder / "hf-model"
        path.mkdir()
        tensors = {"embeddings.token_type_embeddings.weight": torch.randn(2, HIDDEN, dtype=tdt),  # not a head
                   "encoder.dense.weight": body.weight.detach(), "encoder.dense.bias": body.bias.detach(),
                   "classifier.weight": clf.weight.detach(), "classifier.bias": clf.bias.detach()}
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                      "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
                                                      "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}))
        (path / "tokenizer.json").write_text('{"version": "1.0"}')
        with torch.no_grad():
            H = torch.relu(body(torch.from_numpy(X.astype(dtype)))).numpy()
        return path, H
    if fmt == "onnx":
        import torch

        torch.manual_seed(0)
        tdt = getattr(torch, dtype)
        net = torch.nn.Sequential(torch.nn.Linear(D, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 2)).to(tdt)
        _train_torch(net, X.astype(dtype), y)
        path = folder / "model.onnx"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(torch.nn.Sequential(net, torch.nn.Softmax(-1)), (torch.from_numpy(X[:2]),), str(path),
                              dynamo=False, input_names=["x"], output_names=["p"], dynamic_axes={"x": {0: "n"}})
        return path, X
    if fmt in ("keras", "keras-h5"):
        from equivtest.convert.kerasio import _keras

        keras = _keras()
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((D,), dtype=dtype), keras.layers.Dense(HIDDEN, activation="relu", dtype=dtype),
                                  keras.layers.Dropout(0.5), keras.layers.Dense(2, activation="softmax", name="head",
                                                                                 dtype=dtype)])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
        model.fit(X, y, epochs=3, batch_size=32, verbose=0)
        path = folder / ("model.keras" if fmt == "keras" else "model.h5")
        from equivtest.convert.kerasio import _quiet

        with _quiet():
            model.save(str(path))
        return path, X
    raise ValueError(fmt)


def out_path(fmt, folder, name="converted"):
    return folder / {"torch": f"{name}.pt", "safetensors": f"{name}.safetensors", "hf": name, "onnx": f"{name}.onnx",
                     "keras": f"{name}.keras", "keras-h5": f"{name}.h5"}[fmt]


def reloads_as_one_logit(fmt, src, out) -> None:
    """The converted file loads in its own framework, with a one-unit head and every other weight unchanged."""
    if fmt in ("torch", "safetensors"):
        import torch

        if fmt == "torch":
            sd = torch.load(out, weights_only=True)
        else:
            from safetensors.torch import load_file

            sd = load_file(str(out))
        lin = torch.nn.Linear(D, 1, dtype=sd["weight"].dtype)
        lin.load_state_dict(sd)  # loads into a one-output layer
        assert tuple(sd["weight"].shape) == (1, D) and tuple(sd["bias"].shape) == (1,)
    elif fmt == "hf":
        from safetensors.torch import load_file

        cfg = json.loads((out / "config.json").read_text())
        assert cfg["num_labels"] == 1 and cfg["problem_type"] == "multi_label_classification"
        assert cfg["id2label"] == {"0": "POSITIVE"} and cfg["label2id"] == {"POSITIVE": 0}
        old, new = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
        assert tuple(new["classifier.weight"].shape) == (1, HIDDEN)
        for k in old:
            if not k.startswith("classifier."):
                assert new[k].dtype == old[k].dtype and bool((new[k] == old[k]).all()), k
        assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    elif fmt == "onnx":
        import onnx
        import onnxruntime as ort

        onnx.checker.check_model(onnx.load(str(out)))
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        X, _ = data()
        (p,) = sess.run(None, {"x": X[:5].astype(sess.get_inputs()[0].type == "tensor(double)" and "float64" or "float32")})
        assert p.shape == (5, 1)
    else:
        from equivtest.convert.kerasio import _keras, _quiet

        keras = _keras()
        with _quiet():
            a, b = keras.saving.load_model(str(src)), keras.saving.load_model(str(out))
        assert b.layers[-1].units == 1 and b.layers[-1].get_config()["activation"] == "sigmoid"
        assert type(b) is type(a)  # a Sequential stays a Sequential
        assert b.layers[-1].name == a.layers[-1].name
        body = lambda m: [lay for lay in m.layers[:-1] if not isinstance(lay, keras.layers.InputLayer)]  # noqa: E731
        assert [lay.name for lay in body(a)] == [lay.name for lay in body(b)]
        for la, lb in zip(body(a), body(b)):
            assert la.name == lb.name
            for wa, wb in zip(la.get_weights(), lb.get_weights()):
                np.testing.assert_array_equal(wa, wb)


# ------------------------------------------------------------------------------------------ holds
@pytest.mark.fast_cells(dict(dtype="float32"))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_trained_model_converts_reloads_and_verifies(tmp_path, capsys, fmt, dtype):
    need(fmt)
    src, H = make(fmt, tmp_path, dtype)
    out = out_path(fmt, tmp_path)
    code, stdout, err = run(capsys, "convert", src, out)
    assert code == 0, err
    d = D if fmt in ("torch", "safetensors") else HIDDEN  # the head's input width
    assert f"-> (1, {d})" in stdout and f"head parameters {2 * (d + 1)} -> {d + 1}" in stdout  # half of them
    reloads_as_one_logit(fmt, src, out)
    feats = tmp_path / "features.npy"
    np.save(feats, H if fmt == "hf" else data(dtype)[0])
    res = api.verify(src, out, str(feats))
    tol = PROBA_TOLERANCES[dtype]["atol"]  # the bar: 1e-6 in float32, 1e-12 in float64
    assert res.passed, res.failure_message()
    assert res.compute_dtype == dtype
    assert res.decisions["max_abs_dp"] <= tol
    assert res.decisions["agree"] == res.decisions["total"] == N


#: the two slips the issue names; each must move p by far more than the tolerance on a trained model
MISTAKES = {
    "beta = w0 - w1": lambda w: heads.Weights((w.kernel[:, 0] - w.kernel[:, 1])[:, None], w.bias[1:] - w.bias[:1]),
    "bias left as b1": lambda w: heads.Weights((w.kernel[:, 1] - w.kernel[:, 0])[:, None], w.bias[1:].copy()),
}


@pytest.mark.fast_cells(dict(fmt="torch"))
@pytest.mark.parametrize("mistake", list(MISTAKES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_wrong_conversion_fails_verify(tmp_path, capsys, monkeypatch, fmt, mistake):
    need(fmt)
    src, H = make(fmt, tmp_path)
    out = out_path(fmt, tmp_path)
    monkeypatch.setattr(heads, "softmax_to_sigmoid", MISTAKES[mistake])
    assert run(capsys, "convert", src, out)[0] == 0
    monkeypatch.undo()
    feats = tmp_path / "features.npy"
    np.save(feats, H if fmt == "hf" else data()[0])
    code, stdout, _ = run(capsys, "verify", src, out, "--features", feats, "--out", tmp_path / "rep")
    assert code == 1, stdout
    assert "FAIL max |dp|" in stdout and "NOT verified" in stdout
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["passed"] is False
    dp = rep["decisions"]["max_abs_dp"]
    assert dp > CONTROL_MARGIN * PROBA_TOLERANCES["float32"]["atol"], f"the slip moved p by {dp:.3g} only"


# ------------------------------------------------------------------------------------------ the reverse, dtypes
@pytest.mark.parametrize("split", core.SPLITS)
def test_to_softmax_round_trips_under_either_split(tmp_path, capsys, split):
    need("torch")
    import torch

    src, X = make("torch", tmp_path, "float64")
    sig, back = tmp_path / "sig.pt", tmp_path / f"back-{split}.pt"
    assert run(capsys, "convert", src, sig)[0] == 0
    code, stdout, err = run(capsys, "convert", sig, back, "--to", "softmax", "--split", split)
    assert code == 0, err
    w = torch.load(back, weights_only=True)["weight"].numpy()
    beta = torch.load(sig, weights_only=True)["weight"].numpy()[0]
    if split == "zero":
        assert (w[0] == 0).all() and (w[1] == beta).all()
    else:
        assert (w[0] == -w[1]).all()  # w0 + w1 = 0, exactly
    feats = tmp_path / "X.npy"
    np.save(feats, X)
    res = api.verify(src, back, str(feats))
    assert res.passed and res.decisions["max_abs_dp"] <= PROBA_TOLERANCES["float64"]["atol"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_storage_is_reported_and_verifies_within_its_bound(tmp_path, capsys, dtype):
    need("torch")
    src, X = make("torch", tmp_path, dtype)
    out = tmp_path / "half.pt"
    code, stdout, _ = run(capsys, "convert", src, out, "--json")
    assert code == 0
    rounding = json.loads(stdout)["rounding"]
    assert rounding["dtype"] == dtype and 0 < rounding["max_rel"] <= core.UNIT_ROUNDOFF[dtype]
    feats = tmp_path / "X.npy"
    np.save(feats, X)
    res = api.verify(src, out, str(feats))
    assert res.passed, res.failure_message()
    assert res.bound["storage_dtype"] == dtype and res.bound["max_storage_logit"] > 0
    # the tolerance is the float32 one plus the storage's bound: the measured gap stays inside it
    assert res.decisions["max_abs_dp"] <= res.bound["proba_tolerance"]


# ------------------------------------------------------------------------------------------ Hugging Face
def test_hugging_face_config_says_one_logit_bce_and_the_reverse_restores_the_labels(tmp_path, capsys):
    need("hf")
    src, H = make("hf", tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(capsys, "convert", src, one)[0] == 0
    cfg = json.loads((one / "config.json").read_text())
    # num_labels 1 alone means MSE regression in transformers: the problem type says BCE with logits
    assert (cfg["num_labels"], cfg["problem_type"]) == (1, "multi_label_classification")
    assert run(capsys, "convert", one, two, "--to", "softmax")[0] == 0
    cfg2 = json.loads((two / "config.json").read_text())
    assert cfg2["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"} and cfg2["num_labels"] == 2
    assert cfg2["problem_type"] == "single_label_classification" and "equivtest" not in cfg2
    np.save(tmp_path / "H.npy", H)
    assert api.verify(src, two, str(tmp_path / "H.npy")).passed


def test_hugging_face_sharded_folder_rewrites_only_the_heads_shard(tmp_path, capsys):
    need("hf")
    from safetensors.torch import load_file, save_file

    src, H = make("hf", tmp_path)
    tensors = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    shards = {"model-00001-of-00002.safetensors": [k for k in tensors if not k.startswith("classifier")],
              "model-00002-of-00002.safetensors": ["classifier.weight", "classifier.bias"]}
    for name, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(src / name), metadata={"format": "pt"})
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    out = tmp_path / "conv"
    assert run(capsys, "convert", src, out)[0] == 0
    first = "model-00001-of-00002.safetensors"
    assert (out / first).read_bytes() == (src / first).read_bytes()  # copied, not rewritten
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values()) - 4 * (HIDDEN + 1)
    np.save(tmp_path / "H.npy", H)
    assert api.verify(src, out, str(tmp_path / "H.npy")).passed


# ------------------------------------------------------------------------------------------ library, ONNX export
def test_assert_converted_passes_and_names_the_failed_check(tmp_path, capsys, monkeypatch):
    need("torch")
    from equivtest.convert import assert_converted

    src, X = make("torch", tmp_path)
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    assert run(capsys, "convert", src, good)[0] == 0
    assert assert_converted(src, good, X).passed
    monkeypatch.setattr(heads, "softmax_to_sigmoid", MISTAKES["bias left as b1"])
    assert run(capsys, "convert", src, bad)[0] == 0
    with pytest.raises(AssertionError, match=r"does not verify .* FAIL max \|dp\|"):
        assert_converted(src, bad, X)


def test_export_onnx_checks_onnx_runtime_against_the_framework(tmp_path, capsys):
    need("torch")
    need("onnx")
    src, X = make("torch", tmp_path)
    out = tmp_path / "sig.pt"
    assert run(capsys, "convert", src, out)[0] == 0
    np.save(tmp_path / "X.npy", X)
    code, stdout, _ = run(capsys, "verify", src, out, "--features", tmp_path / "X.npy", "--export-onnx",
                          "--out", tmp_path / "rep")
    assert code == 0, stdout
    assert {"original_head.onnx", "converted_head.onnx", "report.json"} <= set(os.listdir(tmp_path / "rep"))
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    onnx_checks = [c for c in rep["checks"] if c["name"].startswith("ONNX Runtime")]
    assert len(onnx_checks) == 2 and all(c["passed"] for c in onnx_checks)


# ------------------------------------------------------------------------------------------ bad input
def _two_heads(tmp):
    import torch

    p = tmp / "two.pt"
    torch.save({"a.weight": torch.zeros(2, D), "a.bias": torch.zeros(2), "b.weight": torch.zeros(2, D),
                "b.bias": torch.zeros(2)}, p)
    return ["convert", p, tmp / "o.pt"], "2 candidate (2, d) heads (a.weight, b.weight); name one with --layer"


def _three_way(tmp):
    import torch

    p = tmp / "three.pt"
    torch.save({"weight": torch.zeros(3, D), "bias": torch.zeros(3)}, p)
    return ["convert", p, tmp / "o.pt"], "no (2, d) head"


def _pickled_code(tmp):
    import torch

    p = tmp / "module.pt"
    torch.save(torch.nn.Linear(D, 2), p)  # the whole module: unpickling it runs torch.nn code
    return ["convert", p, tmp / "o.pt"], "weights_only=True refuses it"


def _not_a_model(tmp):
    p = tmp / "notes.txt"
    p.write_text("hello\n")
    return ["convert", p, tmp / "o.pt"], "is not a model file equivtest reads"


def _truncated(suffix, fmt):
    def setup(tmp):
        src, _ = make(fmt, tmp)
        p = tmp / f"cut{suffix}"
        p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        return ["convert", p, tmp / f"o{suffix}"], "truncated or corrupted"
    return setup


def _out_is_in(tmp):
    src, _ = make("torch", tmp)
    return ["convert", src, src], "OUT is the same as IN"


def _out_exists(tmp):
    src, _ = make("torch", tmp)
    (tmp / "o.pt").write_bytes(b"keep")
    return ["convert", src, tmp / "o.pt"], "already exists (pass --overwrite"


def _width(tmp):
    src, X = make("torch", tmp)
    conv = tmp / "c.pt"
    assert main(["convert", str(src), str(conv)]) == 0
    np.save(tmp / "wide.npy", np.zeros((5, D + 1), np.float32))
    return ["verify", src, conv, "--features", tmp / "wide.npy", "--out", tmp / "rep"], \
        f"has rows of shape {D + 1}, but {src}'s layer 'weight' input takes {D}"


def _bad_config(tmp):
    src, _ = make("hf", tmp)
    (src / "config.json").write_text("{not json")
    return ["convert", src, tmp / "o"], "is not valid JSON"


def _keras_lambda(tmp):
    from equivtest.convert.kerasio import _keras, _quiet

    keras = _keras()
    m = keras.Sequential([keras.Input((D,)), keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Dense(2, activation="softmax")])
    p = tmp / "lambda.keras"
    with _quiet():
        m.save(str(p))
    return ["convert", p, tmp / "o.keras"], "safe_mode=True refuses"


def _keras_three_way(tmp):
    from equivtest.convert.kerasio import _keras, _quiet

    keras = _keras()
    m = keras.Sequential([keras.Input((D,)), keras.layers.Dense(3, activation="softmax", name="head")])
    p = tmp / "three.keras"
    with _quiet():
        m.save(str(p))
    return ["convert", p, tmp / "o.keras"], "its last layer 'head' is Dense(3), not a 2-unit head"


def _onnx_three_way(tmp):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["z"], transB=1), helper.make_node("Softmax", ["z"], ["p"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, D])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 3])],
        initializer=[numpy_helper.from_array(np.ones((3, D), np.float32), "W"),
                     numpy_helper.from_array(np.zeros(3, np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    p = tmp / "three.onnx"
    onnx.save(model, str(p))
    return ["convert", p, tmp / "o.onnx"], "is 3-way, not 2-way"


def _hf_three_labels(tmp):
    src, _ = make("hf", tmp)
    cfg = json.loads((src / "config.json").read_text())
    cfg["id2label"] = {"0": "A", "1": "B", "2": "C"}
    (src / "config.json").write_text(json.dumps(cfg))
    return ["convert", src, tmp / "o"], "has 3 labels (A, B, C); converting to sigmoid needs a two-class"


def _keras_width(tmp):
    src, _ = make("keras", tmp)
    np.save(tmp / "wide.npy", np.zeros((5, D + 1), np.float32))
    return ["verify", src, src, "--features", tmp / "wide.npy", "--out", tmp / "rep"], \
        f"has rows of shape {D + 1}, but {src}'s model input takes {D}"


def _hidden_two_row_layer(tmp):
    import torch

    m = torch.nn.Sequential(torch.nn.Linear(D, 2), torch.nn.ReLU(), torch.nn.Linear(2, 16), torch.nn.ReLU(),
                            torch.nn.Linear(16, 2, bias=False))  # a 2-unit hidden layer, a bias-free head
    p = tmp / "deep.pt"
    torch.save(m.state_dict(), p)
    return ["convert", p, tmp / "o.pt"], "2 candidate (2, d) heads (0.weight, 4.weight); name one with --layer"


def _hf_two_weight_files(tmp):
    src, _ = make("hf", tmp)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(src / "model.safetensors")), src / "pytorch_model.bin")
    return ["convert", src, tmp / "o"], "holds the weights more than once (model.safetensors, pytorch_model.bin)"


def _out_inside_in(tmp):
    src, _ = make("hf", tmp)
    return ["convert", src, src / "inner"], "OUT is inside IN"


def _out_suffix(tmp):
    src, _ = make("torch", tmp)
    return ["convert", src, tmp / "o.safetensors"], "ends in .safetensors, but the converted model is a PyTorch"


def _fp8_head(tmp):
    import torch

    p = tmp / "fp8.pt"
    torch.save({"fc.weight": torch.zeros(2, D).to(torch.float8_e4m3fn), "fc.bias": torch.zeros(2)}, p)
    return ["convert", p, tmp / "o.pt", "--layer", "fc"], "layer 'fc.weight' is stored as float8_e4m3fn"


def _hf_label_keys(tmp):
    src, _ = make("hf", tmp)
    cfg = json.loads((src / "config.json").read_text())
    cfg["id2label"] = {"neg": "NEGATIVE", "pos": "POSITIVE"}
    cfg.pop("label2id")
    (src / "config.json").write_text(json.dumps(cfg))
    return ["convert", src, tmp / "o"], "id2label keys are neg, pos; expected 0 to 1"


def _overflow(tmp):
    src, _ = make("torch", tmp)
    conv = tmp / "c.pt"
    assert main(["convert", str(src), str(conv)]) == 0
    np.save(tmp / "huge.npy", np.full((4, D), 1e39))
    return ["verify", src, conv, "--features", tmp / "huge.npy", "--out", tmp / "rep"], "outputs non-finite"


BAD = {"not a model": ("torch", _not_a_model), "three-way head": ("torch", _three_way),
       "several heads": ("torch", _two_heads), "pickled code": ("torch", _pickled_code),
       "truncated state_dict": ("torch", _truncated(".pt", "torch")),
       "truncated safetensors": ("safetensors", _truncated(".safetensors", "safetensors")),
       "truncated onnx": ("onnx", _truncated(".onnx", "onnx")),
       "truncated keras": ("keras", _truncated(".keras", "keras")),
       "keras Lambda layer": ("keras", _keras_lambda), "hf config not JSON": ("hf", _bad_config),
       "OUT is IN": ("torch", _out_is_in), "OUT exists": ("torch", _out_exists),
       "features width": ("torch", _width), "keras three-way head": ("keras", _keras_three_way),
       "onnx three-way head": ("onnx", _onnx_three_way), "hf three labels": ("hf", _hf_three_labels),
       "keras features width": ("keras", _keras_width), "a hidden 2-unit layer": ("torch", _hidden_two_row_layer),
       "hf weights twice": ("hf", _hf_two_weight_files), "OUT inside IN": ("hf", _out_inside_in),
       "OUT suffix": ("torch", _out_suffix), "float8 head": ("torch", _fp8_head),
       "hf id2label keys": ("hf", _hf_label_keys), "features overflow float32": ("torch", _overflow)}


@pytest.mark.fast_cells(dict(case=tuple(k for k, (fmt, _) in BAD.items() if fmt == "torch")))
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    fmt, setup = BAD[case]
    need(fmt)
    args, expected = setup(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, stdout, err = run(capsys, *args)
    assert code == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("equivtest: error: "), err
    assert expected in lines[0], lines[0]
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before, f"written: {sorted(set(after) - set(before))}"


def test_several_candidates_convert_once_named(tmp_path, capsys):
    need("torch")
    args, _ = _two_heads(tmp_path)
    code, stdout, err = run(capsys, *args, "--layer", "b")
    assert code == 0 and "head 'b'" in stdout, err


def test_formats_are_detected_from_the_bytes_not_the_name(tmp_path):
    need("safetensors")
    src, _ = make("safetensors", tmp_path)
    renamed = tmp_path / "weights.bin"
    shutil.copy(src, renamed)
    assert api.detect_format(renamed) == "safetensors"
    src_pt, _ = make("torch", tmp_path)
    assert api.detect_format(src_pt) == "torch"


# ------------------------------------------------------------------------------------------ head forms
@pytest.mark.slow
@pytest.mark.parametrize("form", ["Softmax layer", "logits"])
def test_keras_heads_with_a_softmax_layer_or_logits_convert(tmp_path, capsys, form):
    need("keras")
    from equivtest.convert.kerasio import _keras, _quiet

    keras = _keras()
    keras.utils.set_random_seed(1)
    X, y = data()
    inp = keras.Input((D,))
    z = keras.layers.Dense(2, name="head")(keras.layers.Dense(HIDDEN, activation="relu")(inp))
    out = keras.layers.Softmax()(z) if form == "Softmax layer" else z
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=form == "logits"))
    model.fit(X, y, epochs=2, verbose=0)
    src, conv = tmp_path / "m.keras", tmp_path / "c.keras"
    with _quiet():
        model.save(str(src))
    assert run(capsys, "convert", src, conv)[0] == 0
    with _quiet():
        new = keras.saving.load_model(str(conv))
    assert new.layers[-1].get_config()["activation"] == ("sigmoid" if form == "Softmax layer" else "linear")
    np.save(tmp_path / "X.npy", X)
    res = api.verify(src, conv, str(tmp_path / "X.npy"))
    assert res.passed, res.failure_message()


def test_onnx_matmul_add_softmax_head_converts(tmp_path, capsys):
    need("onnx")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    W, B = rng.normal(size=(D, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["z"]),
         helper.make_node("Softmax", ["z"], ["p"], axis=-1)], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, D])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 2])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    src, conv = tmp_path / "mm.onnx", tmp_path / "c.onnx"
    onnx.save(model, str(src))
    assert run(capsys, "convert", src, conv)[0] == 0
    new = onnx.load(str(conv))
    assert [n.op_type for n in new.graph.node] == ["MatMul", "Add", "Sigmoid"]
    np.save(tmp_path / "X.npy", data()[0])
    res = api.verify(src, conv, str(tmp_path / "X.npy"))
    assert res.passed, res.failure_message()


def test_exact_ties_decide_class_0_in_both_heads(tmp_path):
    """w0 = w1 and b0 = b1: every item is an exact tie; argmax says class 0, and so must logit > 0."""
    need("torch")
    import torch

    w = torch.linspace(-1, 1, D)
    src, conv = tmp_path / "tie.pt", tmp_path / "tie-conv.pt"
    torch.save({"weight": torch.stack([w, w]), "bias": torch.tensor([0.25, 0.25])}, src)
    api.convert(src, conv)
    res = api.verify(src, conv, data()[0])
    assert res.passed and res.decisions["max_abs_dlogit"] == 0.0
    assert res.decisions["agree"] == res.decisions["total"] == N  # a rule ">= 0" would decide class 1 on all
    assert res.decisions["ties_p_half"] == N  # p is exactly 0.5: "p > 0.5" and "p >= 0.5" part on every item


@pytest.mark.slow
def test_a_mixed_bfloat16_keras_head_verifies_and_a_slip_still_fails(tmp_path, capsys, monkeypatch):
    """Keras computes a mixed_bfloat16 head in bfloat16: the check on p allows for that arithmetic, and the
    check of the stored heads in float64 still catches a slip far inside it."""
    need("keras")
    from equivtest.convert.kerasio import _keras, _quiet

    keras = _keras()
    X, y = data()
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2, activation="softmax", name="head",
                                                                    dtype="mixed_bfloat16")])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.fit(X, y, epochs=2, verbose=0)
    src, good, bad = tmp_path / "m.keras", tmp_path / "good.keras", tmp_path / "bad.keras"
    with _quiet():
        model.save(str(src))
    assert run(capsys, "convert", src, good)[0] == 0
    res = api.verify(src, good, X)
    assert res.passed and res.compute_dtype == "bfloat16", res.failure_message()
    monkeypatch.setattr(heads, "softmax_to_sigmoid", MISTAKES["bias left as b1"])
    assert run(capsys, "convert", src, bad)[0] == 0
    res = api.verify(src, bad, X)
    stored = res.checks[-1]
    assert stored.name.startswith("stored heads") and not stored.passed and not res.passed


def test_a_fixed_batch_onnx_graph_and_a_per_token_head_verify(tmp_path, capsys):
    need("onnx")
    import warnings

    import torch

    torch.manual_seed(0)
    X, _ = data()
    lin = torch.nn.Linear(D, 2)
    src, conv = tmp_path / "static.onnx", tmp_path / "c.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Sequential(lin, torch.nn.Softmax(-1)), (torch.from_numpy(X[:7]),), str(src),
                          dynamo=False)  # no dynamic_axes: the batch is fixed at 7, N = 400 is not a multiple
    assert run(capsys, "convert", src, conv)[0] == 0
    assert api.verify(src, conv, X).passed
    pt, pt_conv = tmp_path / "tok.pt", tmp_path / "tok-c.pt"
    torch.save(lin.state_dict(), pt)
    assert run(capsys, "convert", pt, pt_conv)[0] == 0
    res = api.verify(pt, pt_conv, X.reshape(40, 10, D))  # a head on every token: 400 items
    assert res.passed and res.decisions["total"] == N


def test_array_features_are_checked_as_a_files_are(tmp_path, capsys):
    need("torch")
    from equivtest.errors import FeatureError

    src, X = make("torch", tmp_path)
    conv = tmp_path / "c.pt"
    assert run(capsys, "convert", src, conv)[0] == 0
    assert api.verify(src, conv, X.tolist()).passed  # a list is an array
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(FeatureError, match="NaN or infinite"):
        api.verify(src, conv, bad)
    with pytest.raises(FeatureError, match="one row per item"):
        api.verify(src, conv, np.zeros((0, D)))


def test_bfloat16_rounding_is_ml_dtypes_bit_for_bit():
    """``core.round_to(x, "bfloat16")`` (NumPy, no framework) gives the value ml_dtypes's cast gives, bit for bit,
    on the suite's cases across the exponent range, subnormals and exact ties included.  Not on the values just
    past a tie: ml_dtypes has cast float64 through float32 (a double rounding) in some releases, and the suite
    checks those exactly instead (``test_bfloat16_rounding_is_one_rounding_to_nearest_even``)."""
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="needs ml_dtypes to compare with (TensorFlow brings it): "
                                                        "pip install 'equivtest[tensorflow]'")
    from equivtest.suite.test_convert_rules import bf16_rounding_cases

    x, _ = bf16_rounding_cases()
    with np.errstate(over="ignore"):  # a few cases round past bfloat16's largest value, to inf, as they should
        theirs = x.astype(ml_dtypes.bfloat16).astype(np.float64)
    ours = core.round_to(x, "bfloat16")
    assert ours.view(np.uint64).tolist() == theirs.view(np.uint64).tolist()
