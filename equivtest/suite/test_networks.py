"""Whole networks in the NumPy float64 oracle: gradients, the per-layer rule, and its negative control.

(Framework bodies, cross-framework conversion and the command come with the rest of
the whole-network work; these tests pin the mathematics they will be compared with.)
"""

from __future__ import annotations

import numpy as np
import pytest

from equivtest import rand
from equivtest.backends.numpy import Backend
from equivtest.backends.numpy.network import backward, col2im, forward, im2col, train_network
from equivtest.backends.numpy.ops import loss_and_grad
from equivtest.compare import (
    CONTROL_MARGIN,
    TOLERANCES,
    assert_trajectories_close,
    assert_trajectories_differ,
)
from equivtest.heads import softmax_to_sigmoid
from equivtest.networks import GroupRates, Network, group_rates
from equivtest.plan import Plan
from equivtest.sources import digits, surrogate

from .helpers import skip_if_declared_unsupported
from .tiers import FIRST

TOL64 = TOLERANCES["float64"]


def _case(body):
    if body == "cnn":
        data = digits(images=True)
        return Network("cnn", data.input_shape, widths=(8, 16)), data
    data = surrogate(1000, 32, seed=2)
    return Network(body, data.input_shape), data


def test_im2col_and_col2im_are_adjoint():
    bg = rand.generator(3)
    x, g = rand.normal(bg, (2, 6, 5, 3)), rand.normal(bg, (2, 4, 3, 27))
    assert np.isclose(np.sum(im2col(x) * g), np.sum(x * col2im(g, x.shape)), rtol=1e-12, atol=0)


#: central differences at step EPS in float64: the truncation error is O(EPS^2) (about 1e-12 here) and the
#: rounding error of the quotient about 2^-52 x |L| / EPS = 1.8e-10 at a loss of 0.8; measured worst over
#: every coordinate 1.2e-10 (mlp and cnn).  5e-10 leaves a factor ~3 above that worst case.
EPS, FD_ATOL = 1e-6, 5e-10


@pytest.mark.fast_cells(dict(body="mlp"))
@pytest.mark.parametrize("body", ["mlp", "cnn"])
def test_network_gradients_match_finite_differences(body):
    """Every parameter's closed-form gradient, body and head, against central differences (float64, masked),
    and the check resolves a gradient 0.01 % off (the control)."""
    net, data = _case(body)
    plan = Plan(dtype="float64")
    bg = rand.generator(5)
    # random biases: with zero biases, blank image patches sit exactly on ReLU's kink, where a finite
    # difference straddles it and no derivative exists
    params = [[k.copy(), 0.1 * rand.normal(bg, b.shape)] for k, b in plan.body_weights(net)]
    w = plan.initial_weights("softmax", net.width)
    head = [w.kernel.copy(), 0.1 * rand.normal(bg, w.bias.shape)]
    x, y = data.X_train[:16].astype(np.float64), data.y_train[:16]
    masks = [(rand.uniform(bg, (16, w)) < 0.5) * 2.0 for w in net.dropout_widths]

    def loss():
        h, _ = forward(net, params, x, masks)
        return loss_and_grad("softmax", h @ head[0] + head[1], y, y.astype(float), None, grad=False)[0]

    h, cache = forward(net, params, x, masks)
    _, _, gz = loss_and_grad("softmax", h @ head[0] + head[1], y, y.astype(float), None)
    grads = [*backward(net, params, cache, gz @ head[0].T), h.T @ gz, gz.sum(axis=0)]
    flat = [p for layer in params for p in layer] + head
    numeric = []
    for p in flat:
        d = np.empty_like(p)
        for j in range(p.size):
            i = np.unravel_index(j, p.shape)
            old = p[i]
            p[i] = old + EPS
            up = loss()
            p[i] = old - EPS
            down = loss()
            p[i] = old
            d[i] = (up - down) / (2 * EPS)
        numeric.append(d)
    worst = max(float(np.max(np.abs(d - g))) for d, g in zip(numeric, grads))
    assert worst <= FD_ATOL, f"{body}: closed form vs central differences {worst:.3g} > {FD_ATOL:g}"
    off = max(float(np.max(np.abs(d - g * (1 + 1e-4)))) for d, g in zip(numeric, grads))
    assert off > 10 * FD_ATOL, f"{body}: a gradient 0.01 % off is only {off:.3g} away (control)"


@pytest.mark.fast_cells(dict(optimizer="sgd"), dict(body="mlp"))  # every body once, every optimizer once
@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("nesterov", 0.02), ("adam", 1e-3)])
@pytest.mark.parametrize("body", ["none", "mlp", "cnn"])
def test_network_per_layer_rule_holds(body, optimizer, lr):
    """Softmax network at lr vs sigmoid network (converted head) at head x2, body x1: float64-exact."""
    net, data = _case(body)
    if body == "none":
        net = Network("none", data.input_shape)
    p = Plan(epochs=2, batch_size=64, lr=lr, optimizer=optimizer, dtype="float64")
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    be = Backend()
    soft = train_network(be, net, "softmax", bw, hw, p, data, group_rates(lr, 0.0, "softmax"))
    sig = train_network(be, net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data, group_rates(lr, 0.0, "sigmoid"))
    assert_trajectories_close(soft, sig, **TOL64)
    for (k1, b1), (k2, b2) in zip(soft.body, sig.body):  # the body followed the same path
        assert np.max(np.abs(k1 - k2)) <= 1e-10 and np.max(np.abs(b1 - b2)) <= 1e-10


@pytest.mark.fast_cells(dict(optimizer="sgd"))
@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("adam", 1e-3)])
@pytest.mark.parametrize("body", ["mlp", "cnn"])
def test_network_global_x2_breaks_once_the_body_trains(body, optimizer, lr):
    """The seed's rule on a whole network: the body runs twice as fast and the paths part (CONTROL_MARGIN)."""
    net, data = _case(body)
    p = Plan(epochs=2, batch_size=64, lr=lr, optimizer=optimizer, dtype="float64")
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    be = Backend()
    soft = train_network(be, net, "softmax", bw, hw, p, data, group_rates(lr, 0.0, "softmax"))
    glob = train_network(be, net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data,
                         group_rates(lr, 0.0, "sigmoid", rule="global"))
    assert_trajectories_differ(soft, glob, factor=CONTROL_MARGIN, **TOLERANCES["float32"])


@pytest.mark.parametrize("body", ["mlp", "cnn"])
def test_network_global_x2_holds_with_a_frozen_body(body):
    net, data = _case(body)
    p = Plan(epochs=2, batch_size=64, lr=0.05, optimizer="momentum", dtype="float64")
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    be = Backend()
    soft = train_network(be, net, "softmax", bw, hw, p, data, GroupRates(0.0, 0.05))
    glob = train_network(be, net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data, GroupRates(0.0, 2 * 0.05))
    assert_trajectories_close(soft, glob, **TOL64)


#: counted by hand, layer by layer (kernel + bias), for the networks of ``_case``:
#: none on 32 features: head 2 x (32 + 1) = 66 or 32 + 1 = 33;
#: mlp on 32 features: Dense 32 (32 x 32 + 32 = 1056), Dense 16 (32 x 16 + 16 = 528), head on 16: 34 or 17;
#: cnn on 8 x 8 x 1 images, widths (8, 16): Conv 3x3 1 -> 8 (9 x 8 + 8 = 80), Conv 3x3 8 -> 16
#: (9 x 8 x 16 + 16 = 1168), global average pooling, head on 16: 34 or 17
COUNTS = {"none": (66, 33), "mlp": (1056 + 528 + 34, 1056 + 528 + 17), "cnn": (80 + 1168 + 34, 80 + 1168 + 17)}


@pytest.mark.parametrize("body", ["none", "mlp", "cnn"])
def test_networks_differ_by_exactly_d_plus_1_parameters(body):
    """The oracle's own arrays, against counts made by hand: the head halves, the body is shared."""
    net, data = _case(body)
    if body == "none":
        net = Network("none", data.input_shape)
    p = Plan()
    body = [a.size for kb in p.body_weights(net) for a in kb]
    head = {h: sum(a.size for a in (p.initial_weights(h, net.width).kernel, p.initial_weights(h, net.width).bias))
            for h in ("softmax", "sigmoid")}
    assert (sum(body) + head["softmax"], sum(body) + head["sigmoid"]) == COUNTS[net.body]


@pytest.mark.fast_cells(dict(backend=FIRST), dict(body="mlp"))
@pytest.mark.parametrize("body", ["none", "mlp", "cnn"])
def test_framework_counts_networks_by_hand(backend, body):
    """Each framework's own count (``count_params()``, ``sum(p.numel())``) is the hand count."""
    net, data = _case(body)
    if body == "none":
        net = Network("none", data.input_shape)
    got = (backend.count_network_params(net, "softmax"), backend.count_network_params(net, "sigmoid"))
    assert got == COUNTS[net.body]


def test_network_inputs_are_checked():
    from equivtest.errors import InputError

    with pytest.raises(InputError, match="body 'cnn' needs images"):
        Network("cnn", (64,))
    with pytest.raises(InputError, match="needs feature vectors"):
        Network("mlp", (8, 8, 1))
    with pytest.raises(InputError, match="unknown body"):
        Network("resnet", (64,))


# -- every backend that trains whole networks, against the oracle -------------------------------------
def _train(backend, *args, **kw):
    return backend.train_network(*args, **kw)  # a NotImplementedError here is a failure: nothing is declared


#: plan options every network loop must honour as the head's does (or the registry declares it refused)
NETWORK_OPTIONS = {"plain": {}, "class weights": dict(class_weight=(1.0, 3.0)), "label smoothing":
                   dict(label_smoothing=0.2), "focal": dict(loss="focal", focal_gamma=2.0, focal_alpha=0.5),
                   # coupled decay: each framework's L2 (torch's weight_decay, Keras's regularizers or, on JAX,
                   # the same penalty in the step) against the oracle's decay * w in every gradient
                   "coupled L2": dict(optimizer="coupled L2")}
#: a power of two: Keras holds a regularizer's factor (decay / 2) at float32 precision, so 0.1 would part from the
#: float64 oracle by 1.3e-10 (measured), a float32 rounding of the constant; 0.0625 is exact in both
COUPLED_L2 = dict(name="sgd", weight_decay=0.125)


@pytest.mark.fast_cells(dict(backend=FIRST, dtype="float32", option="plain"),
                        dict(body="mlp", dtype="float32", option="plain"),
                        dict(backend=FIRST, body="mlp", dtype="float32", option="class weights"))  # each once
@pytest.mark.parametrize("option", list(NETWORK_OPTIONS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("body", ["none", "mlp", "cnn"])
def test_network_backend_follows_the_oracle(backend, device, body, dtype, option):
    """The framework's network (its own layers and layouts) on the oracle's path, step for step, with each
    loss option (a network loop that dropped one would part from the oracle, which applies it)."""
    if dtype == "float64" and not backend.supports_float64:
        pytest.skip(f"backend '{backend.name}' does not support float64")
    net, data = _case(body)
    if body == "none":
        net = Network("none", data.input_shape)
    # plain SGD: every framework's update is the oracle's to the last bit in float64.  (Keras keeps
    # momentum 0.9 and Adam's constants at float32 precision: 1e-8 and 2e-7 from the oracle in float64,
    # for the head alone as for networks; within one framework the rule holds exactly, see below.)
    from equivtest.plan import Optimizer

    kw = dict(NETWORK_OPTIONS[option])
    kw["optimizer"] = Optimizer(**COUPLED_L2) if kw.get("optimizer") == "coupled L2" else "sgd"
    p = Plan(epochs=2, batch_size=64, lr=0.05, dtype=dtype, **kw)
    skip_if_declared_unsupported(backend.name, p, network=True)
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    rates = group_rates(p.lr, p.optimizer.weight_decay, "softmax")
    got = _train(backend, net, "softmax", bw, hw, p, data, rates=rates, device=device)
    ref = Backend(epsilon_convention=backend.epsilon_convention).train_network(
        net, "softmax", bw, hw, p.replace(dtype="float64"), data, rates=rates)
    # float32 against the float64 oracle: float32 rounding of every product, as for the heads
    # (measured: at most 1.2e-7 in step loss for every body, convolutions included, torch and keras)
    assert_trajectories_close(got, ref, **TOLERANCES[dtype])
    # the control: the oracle with other dropout masks is another path, by the control margin
    other = Backend(epsilon_convention=backend.epsilon_convention).train_network(
        net, "softmax", bw, hw, p.replace(dtype="float64", mask_stream=1), data, rates=rates)
    assert_trajectories_differ(got, other, factor=CONTROL_MARGIN, **TOLERANCES[dtype])


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("momentum", 0.02), ("adam", 1e-3)])
# fast: every optimizer on the mlp (a cnn costs 7 s a cell in torch; its layers are the fast tier's in
# test_network_backend_follows_the_oracle)
@pytest.mark.fast_cells(dict(backend=FIRST, body="mlp"))
@pytest.mark.parametrize("body", ["mlp", "cnn"])
def test_network_per_layer_rule_holds_in_backend(backend, device, body, optimizer, lr):
    net, data = _case(body)
    p = Plan(epochs=2, batch_size=64, lr=lr, optimizer=optimizer)
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    soft = _train(backend, net, "softmax", bw, hw, p, data, rates=group_rates(lr, 0.0, "softmax"), device=device)
    sig = _train(backend, net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data,
                 rates=group_rates(lr, 0.0, "sigmoid"), device=device)
    assert_trajectories_close(soft, sig, **TOLERANCES["float32"])
    glob = _train(backend, net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data,
                  rates=group_rates(lr, 0.0, "sigmoid", rule="global"), device=device)
    assert_trajectories_differ(soft, glob, factor=CONTROL_MARGIN, **TOLERANCES["float32"])


def test_network_layouts_convert_exactly():
    """Canonical (Keras) kernels to torch's layouts and back, and the same predictions from both."""
    torch = pytest.importorskip("torch", reason="needs torch: pip install 'equivtest[torch]'")
    from equivtest.backends.torch.network import TorchNetwork, from_torch_kernel, to_torch_kernel

    net, data = _case("cnn")
    p = Plan(dtype="float64")
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    for k, _ in bw:
        assert np.array_equal(from_torch_kernel(to_torch_kernel(k)), k)
    model = TorchNetwork(net, bw, "softmax", torch.device("cpu"), torch.float64)
    model.set_head(hw)
    x = data.X_val[:50].astype(np.float64)
    with torch.no_grad():
        z = model(torch.as_tensor(x)).numpy()
    h, _ = forward(net, [list(w) for w in bw], x, [None])
    assert np.max(np.abs(z - (h @ hw.kernel + hw.bias))) <= 1e-12


@pytest.mark.needs_backends("torch", "keras")
@pytest.mark.parametrize("dtype, atol", [("float32", 1e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("body", ["mlp", "cnn"])
def test_a_network_moved_between_frameworks_predicts_the_same(body, dtype, atol):
    """The same canonical weights in Keras (Dense/Conv2D, NHWC), PyTorch (Linear/Conv2d, NCHW) and the oracle."""
    from equivtest.backends import get

    get("keras")  # Keras on TensorFlow, imported the way the backend imports it (before `import keras`)
    import keras
    import torch

    from equivtest.backends.keras.common import floatx
    from equivtest.backends.keras.network import build
    from equivtest.backends.torch.network import TorchNetwork

    net, data = _case(body)
    p = Plan(dtype="float64")
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    x = data.X_val[:64].astype(dtype)
    h, _ = forward(net, [list(w) for w in bw], x.astype(np.float64), [None])
    z = h @ hw.kernel + hw.bias
    want = np.exp(z - z.max(1, keepdims=True))
    want = want[:, 1] / want.sum(1)
    model = TorchNetwork(net, bw, "softmax", torch.device("cpu"), getattr(torch, dtype))
    model.set_head(hw)
    with torch.no_grad():
        got_torch = torch.softmax(model(torch.as_tensor(x)), dim=1)[:, 1].numpy()
    with floatx(dtype):
        layers = build(net, "softmax", dtype)
        kmodel = keras.Model(layers.inputs[0], layers.plain)  # the network without dropout
        for layer, (k, b) in zip(layers.body, bw):
            layer.set_weights([k.astype(dtype), b.astype(dtype)])
        layers.dense.set_weights([hw.kernel.astype(dtype), hw.bias.astype(dtype)])
        got_keras = kmodel.predict(x, verbose=0)[:, 1]
    assert np.max(np.abs(got_torch - want)) <= atol
    assert np.max(np.abs(got_keras - want)) <= atol
    assert np.max(np.abs(got_keras - got_torch)) <= atol
    # the control: the first layer's kernel in the other layout (a Dense kernel transposed, or a Conv2D kernel
    # with its spatial axes swapped, the same shape either way) predicts otherwise, by the control margin
    k0, b0 = bw[0]
    slipped = np.ascontiguousarray(k0.T).reshape(k0.shape) if k0.ndim == 2 else np.ascontiguousarray(
        k0.transpose(1, 0, 2, 3))
    wrong = TorchNetwork(net, [(slipped, b0), *bw[1:]], "softmax", torch.device("cpu"), getattr(torch, dtype))
    wrong.set_head(hw)
    with torch.no_grad():
        got_wrong = torch.softmax(wrong(torch.as_tensor(x)), dim=1)[:, 1].numpy()
    assert np.max(np.abs(got_wrong - want)) > CONTROL_MARGIN * atol


@pytest.mark.fast_cells(dict(backend=FIRST, body="mlp"))  # the cnn (9 s in torch) in the slow tier
@pytest.mark.parametrize("body", ["mlp", "cnn"])
def test_network_global_x2_holds_with_a_frozen_body_in_backend(backend, device, body):
    """The seed's case inside a whole network: body learning rate 0 in both, head at lr and 2 lr."""
    net, data = _case(body)
    p = Plan(epochs=2, batch_size=64, lr=0.05, optimizer="momentum")
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    soft = _train(backend, net, "softmax", bw, hw, p, data, rates=GroupRates(0.0, 0.05), device=device)
    sig = _train(backend, net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data, rates=GroupRates(0.0, 0.1),
                 device=device)
    assert_trajectories_close(soft, sig, **TOLERANCES["float32"])
    # the control: the head at x1 (the body still frozen) parts by the margin
    x1 = _train(backend, net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data, rates=GroupRates(0.0, 0.05),
                device=device)
    assert_trajectories_differ(soft, x1, factor=CONTROL_MARGIN, **TOLERANCES["float32"])


@pytest.mark.parametrize("optimizer", [
    pytest.param(dict(name="sgd", momentum=0.9, weight_decay=0.05), id="momentum+l2"),
    pytest.param(dict(name="adamw", weight_decay=0.5, decay="decoupled"), id="adamw"),
])
def test_network_per_layer_rule_with_weight_decay(optimizer):
    """Body decay x1, head decay / 2 (with head lr x2): the rule per group, decay included (float64 oracle);
    the head's decay not halved breaks it."""
    from equivtest.plan import Optimizer

    net, data = _case("mlp")
    lr = 0.02 if optimizer["name"] == "sgd" else 3e-3
    p = Plan(epochs=2, batch_size=64, lr=lr, optimizer=Optimizer(**optimizer), dtype="float64")
    wd = p.optimizer.weight_decay
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    be = Backend()
    soft = train_network(be, net, "softmax", bw, hw, p, data, group_rates(lr, wd, "softmax"))
    rates = group_rates(lr, wd, "sigmoid")
    assert (rates.body_decay, rates.head_decay) == (wd, wd / 2)
    sig = train_network(be, net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data, rates)
    assert_trajectories_close(soft, sig, **TOL64)
    wrong = train_network(be, net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data,
                          GroupRates(lr, 2 * lr, wd, wd))
    assert_trajectories_differ(soft, wrong, factor=CONTROL_MARGIN, **TOLERANCES["float32"])
