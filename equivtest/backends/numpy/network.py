"""The NumPy float64 oracle for whole networks: closed-form gradients of every body.

Dense layers by matrix products; 3 x 3 "valid" convolutions by im2col (the nine
shifted views side by side, in the kernel's (kh, kw, in) order) and col2im
(their gradients added back); global average pooling and Dropout elementwise.
Canonical (Keras) layouts throughout.  ``tests`` check every gradient against
finite differences.
"""

from __future__ import annotations

import numpy as np

from ...heads import Weights
from ...networks import GroupRates, Network
from ...plan import Plan
from ...trajectory import Trajectory


def im2col(x: np.ndarray) -> np.ndarray:
    """(B, H, W, C) -> (B, H - 2, W - 2, 9 C): each output position's 3 x 3 patch, ordered (kh, kw, C)."""
    ho, wo = x.shape[1] - 2, x.shape[2] - 2
    return np.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(3) for j in range(3)], axis=-1)


def col2im(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The adjoint of :func:`im2col`: each patch gradient added back to the pixels it came from."""
    out = np.zeros(shape, dtype=g.dtype)
    ho, wo, c = shape[1] - 2, shape[2] - 2, shape[3]
    for k, (i, j) in enumerate((i, j) for i in range(3) for j in range(3)):
        out[:, i:i + ho, j:j + wo, :] += g[..., k * c:(k + 1) * c]
    return out


def forward(net: Network, params, x: np.ndarray, masks):
    """The body's output h (B, width) and what the backward pass needs.

    ``params``: [(kernel, bias), ...] per body layer; ``masks``: per Dropout layer,
    ``scale`` where kept and 0 elsewhere (B, units), or None (no dropout).
    """
    m = masks[0] if masks else None
    if net.body == "none":
        return (x if m is None else x * m), None
    (k1, b1), (k2, b2) = params
    if net.body == "mlp":
        a1 = x @ k1 + b1
        h1 = np.maximum(a1, 0.0)
        h1d = h1 if m is None else h1 * m
        a2 = h1d @ k2 + b2
        return np.maximum(a2, 0.0), (x, a1, h1d, m, a2)
    p1 = im2col(x)
    a1 = p1 @ k1.reshape(-1, k1.shape[-1]) + b1
    h1 = np.maximum(a1, 0.0)
    p2 = im2col(h1)
    a2 = p2 @ k2.reshape(-1, k2.shape[-1]) + b2
    pooled = np.maximum(a2, 0.0).mean(axis=(1, 2))
    return (pooled if m is None else pooled * m), (x, p1, a1, p2, a2, m)


def backward(net: Network, params, cache, gh: np.ndarray) -> list[np.ndarray]:
    """Gradients [dK1, db1, dK2, db2] of the loss given dL/dh (B, width)."""
    if net.body == "none":
        return []
    (k1, b1), (k2, b2) = params
    if net.body == "mlp":
        x, a1, h1d, m, a2 = cache
        ga2 = gh * (a2 > 0)
        gk2, gb2 = h1d.T @ ga2, ga2.sum(axis=0)
        gh1 = ga2 @ k2.T
        if m is not None:
            gh1 = gh1 * m
        ga1 = gh1 * (a1 > 0)
        return [x.T @ ga1, ga1.sum(axis=0), gk2, gb2]
    x, p1, a1, p2, a2, m = cache
    if m is not None:
        gh = gh * m
    ho, wo = a2.shape[1], a2.shape[2]
    ga2 = (gh[:, None, None, :] / (ho * wo)) * (a2 > 0)
    c2 = ga2.shape[-1]
    gk2 = (p2.reshape(-1, p2.shape[-1]).T @ ga2.reshape(-1, c2)).reshape(k2.shape)
    gb2 = ga2.sum(axis=(0, 1, 2))
    gh1 = col2im(ga2 @ k2.reshape(-1, c2).T, a1.shape)
    ga1 = gh1 * (a1 > 0)
    c1 = ga1.shape[-1]
    gk1 = (p1.reshape(-1, p1.shape[-1]).T @ ga1.reshape(-1, c1)).reshape(k1.shape)
    return [gk1, ga1.sum(axis=(0, 1, 2)), gk2, gb2]


def train_network(backend, net: Network, head: str, body_init, head_init: Weights, plan: Plan, data,
                  rates: GroupRates, *, masks: str = "plan", callback=None, record_history: bool = False,
                  meta: dict | None = None) -> Trajectory:
    """The oracle's one training loop: body + head under ``plan`` with per-group ``rates``.

    Body ``none`` is the seed's head on features (``Backend.train`` calls this with it): its rows are
    gathered and masked in place, with no temporaries.  ``masks`` ("plan" or "native"), ``callback``
    (per epoch, Keras-style logs) and ``record_history`` (the head's sigmoid coordinates after each step)
    apply to every body, as every plan option does (class weights, label smoothing, focal loss, decay).
    """
    from ...heads import sigmoid_coordinates
    from .._base import all_finite, batch_sizes, check_finite, epoch_logs, step_hook
    from .ops import OptimizerState, loss_and_grad, weights_and_gamma

    dt = np.dtype(plan.dtype)
    X, Xv = data.features("train", plan.dtype), data.features("val", plan.dtype)
    y, yv = data.y_train, data.y_val
    T, Tv = plan.targets(y), plan.targets(yv)
    W, gamma = weights_and_gamma(plan, head, y)  # class weights, focal alpha and gamma
    Wv = plan.focal_weights(head, yv) if gamma is not None else None
    n = len(y)
    body = [[k.astype(dt, copy=True), b.astype(dt, copy=True)] for k, b in body_init]
    kh, bh = head_init.kernel.astype(dt, copy=True), head_init.bias.astype(dt, copy=True)
    flat_body = [p for layer in body for p in layer]
    opt_body = OptimizerState(plan.optimizer.replace(weight_decay=rates.body_decay), rates.body_lr, flat_body,
                              backend.epsilon_convention) if flat_body else None
    opt_head = OptimizerState(plan.optimizer.replace(weight_decay=rates.head_decay), rates.head_lr, [kh, bh],
                              backend.epsilon_convention)
    scale = dt.type(plan.mask_scale)
    mask_plan = plan if masks == "plan" else plan.replace(mask_stream=plan.native_seed)
    bounds, sizes = plan.batch_bounds(n), batch_sizes(plan, n)
    head_only = net.body == "none"
    buf = np.empty((plan.batch_size,) + X.shape[1:], dtype=dt) if head_only else None
    losses, correct, val_loss, val_acc = [], [], [], []
    history = [] if record_history else None
    on_step = step_hook(callback)
    for epoch in range(plan.epochs):
        order = plan.batch_order(epoch, n)
        drawn = [mask_plan.epoch_masks(epoch, n, w, layer=i) for i, w in enumerate(net.dropout_widths)]
        for step, (s, t) in enumerate(bounds, 1):
            idx = order[s:t]
            if head_only:  # x * scale where kept, else 0, in place
                h = np.take(X, idx, axis=0, out=buf[: t - s])
                if drawn[0] is not None:
                    h *= scale
                    h *= drawn[0][s:t]
                cache = None
            else:
                h, cache = forward(net, body, X[idx], [None if d is None else d[s:t] * scale for d in drawn])
            loss, n_right, gz = loss_and_grad(head, h @ kh + bh, y[idx], T[idx], None if W is None else W[idx],
                                              gamma=gamma)
            if not np.isfinite(loss):
                check_finite(backend.name, head, [loss], len(losses))
            losses.append(loss)
            correct.append(n_right)
            grads = backward(net, body, cache, gz @ kh.T) if opt_body is not None else None
            opt_head.step([h.T @ gz, gz.sum(axis=0)])
            if opt_body is not None:
                opt_body.step(grads)
            if history is not None:
                history.append(sigmoid_coordinates(kh, bh))
            if on_step is not None:
                on_step(epoch, step, len(bounds))
        check_finite(backend.name, head, [], len(losses), all_finite(kh, bh, *flat_body))
        hv = Xv if head_only else forward(net, body, Xv, [None] * len(net.dropout_widths))[0]
        vl, vr, _ = loss_and_grad(head, hv @ kh + bh, yv, Tv, Wv, grad=False, gamma=gamma)
        val_loss.append(vl)
        val_acc.append(vr / len(yv))
        if callback is not None:
            k = len(bounds)
            callback(epoch, epoch_logs(losses[-k:], correct[-k:], sizes[:k], vl, val_acc[-1]))
    as_network = meta is None  # called as a network (a body, possibly none), not as the head's train()
    if as_network:
        meta = {"backend": backend.name, "head": head, "body": net.body, "dtype": plan.dtype, "lr": plan.lr,
                "optimizer": plan.optimizer.label, "rates": rates.__dict__}
    traj = Trajectory.from_steps(losses, correct, sizes, len(bounds), val_loss, val_acc, Weights(kh, bh), meta,
                                 history=None if history is None else np.asarray(history))
    if as_network:
        traj.body = [(k.copy(), b.copy()) for k, b in body]
    return traj
