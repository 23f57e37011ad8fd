"""Whole networks in Keras 3 on TensorFlow: Conv2D (NHWC) and Dense bodies, two optimizers.

Keras optimizers have no parameter groups, so the per-layer rule uses Keras's
documented way of customising ``fit``: a ``keras.Model`` subclass whose
``train_step`` (with ``tf.GradientTape`` on TensorFlow, torch autograd on
PyTorch, as Keras's guides to customising ``fit()`` write them; on JAX, whose
``fit`` carries one optimizer's state, the loop of Keras's guide to training
from scratch in JAX) applies one optimizer to the body's
variables and another to the head's.  The plan's masks come in as a second
input and multiply the activations where the Dropout layer sits.  Coupled weight
decay is an L2 regularizer per group (decay / 2), decoupled decay the group
optimizer's ``weight_decay``.
"""

from __future__ import annotations

import numpy as np

from ...heads import SOFTMAX, UNITS, Weights
from ...networks import GroupRates, Network
from ...plan import Plan
from ...trajectory import Trajectory


def build(net: Network, head: str, dt: str, body_reg=None, head_reg=None):
    """The network's layers in Keras: (inputs [x, mask], body layers, head layer, output)."""
    import keras

    regs = {"kernel_regularizer": body_reg, "bias_regularizer": body_reg, "dtype": dt}
    a, b = net.widths
    x_in = keras.Input(net.input_shape, dtype=dt)
    m_in = keras.Input((net.dropout_widths[0],), dtype=dt)
    if net.body == "mlp":
        body = [keras.layers.Dense(a, activation="relu", **regs), keras.layers.Dense(b, activation="relu", **regs)]
        h = body[1](body[0](x_in) * m_in)
    elif net.body == "cnn":
        body = [keras.layers.Conv2D(a, 3, activation="relu", **regs),
                keras.layers.Conv2D(b, 3, activation="relu", **regs)]
        h = keras.layers.GlobalAveragePooling2D(dtype=dt)(body[1](body[0](x_in))) * m_in
    else:
        body, h = [], x_in * m_in
    dense = keras.layers.Dense(UNITS[head], activation="softmax" if head == SOFTMAX else "sigmoid",
                               kernel_regularizer=head_reg, bias_regularizer=head_reg, dtype=dt)
    return [x_in, m_in], body, dense, dense(h)


def count_params(net: Network, head: str) -> int:
    """Keras's own count for the network (``Model.count_params()``)."""
    import keras

    inputs, _, _, out = build(net, head, "float32")
    return int(keras.Model(inputs, out).count_params())


def train_network(backend, net: Network, head: str, body_init, head_init: Weights, plan: Plan, data,
                  rates: GroupRates, device: str = "cpu") -> Trajectory:
    import contextlib

    import keras
    from keras import ops

    from .._base import all_finite, check_finite

    kind = keras.backend.backend()
    if kind == "jax":
        return _train_network_jax(backend, net, head, body_init, head_init, plan, data, rates)
    if kind not in ("tensorflow", "torch"):
        raise NotImplementedError(f"backend '{backend.name}' does not train whole networks on Keras's {kind}")
    from .common import floatx, keras_loss, make_optimizer

    dt = plan.dtype
    opt = plan.optimizer

    def group(lr, decay):
        coupled = decay and opt.decay == "coupled"
        reg = keras.regularizers.L2(decay / 2) if coupled else None
        optimizer = make_optimizer(plan.replace(lr=lr, optimizer=opt.replace(weight_decay=0.0 if coupled else decay)))
        return reg, optimizer

    n, steps = len(data.y_train), plan.steps_per_epoch(len(data.y_train))
    if kind == "tensorflow":
        import tensorflow as tf

        place = tf.device(backend.tf_device(device))
    else:
        place = contextlib.nullcontext()
    with floatx(dt), place:
        # inside floatx: the optimizers keep their learning rates and slots in the run's dtype
        body_reg, body_opt = group(rates.body_lr, rates.body_decay) if rates.body_lr > 0 else (None, None)
        head_reg, head_opt = group(rates.head_lr, rates.head_decay)
        inputs, body, dense, out = build(net, head, dt, body_reg, head_reg)
        loss_fn = keras_loss(head, plan)
        # a frozen body (learning rate 0) is left out of the update, as a user would freeze it
        body_vars = [v for layer in body for v in layer.trainable_variables] if body_opt is not None else []
        head_vars = dense.trainable_variables

        def hits(p, y):
            if head == SOFTMAX:
                return ops.equal(ops.argmax(p, axis=-1), ops.argmax(y, axis=-1))
            return ops.equal(p[:, 0] > 0.5, y[:, 0] > 0.5)

        class TorchTwoGroups(keras.Model):
            """The same on Keras's torch backend: autograd, as Keras's guide to customising ``fit()``
            with PyTorch writes it; runs eagerly, so each step's figures are read as it ends."""

            def train_step(self, batch):
                import torch

                (x, m), y, sw = keras.utils.unpack_x_y_sample_weight(batch)
                self.zero_grad()
                p = self((x, m), training=True)
                loss = loss_fn(y, p, sample_weight=sw)
                total = loss + sum(self.losses) if self.losses else loss
                total.backward()
                grads = [v.value.grad for v in body_vars + head_vars]
                with torch.no_grad():
                    if body_vars:
                        body_opt.apply(grads[: len(body_vars)], body_vars)
                    head_opt.apply(grads[len(body_vars):], head_vars)
                eager_record.append((float(loss.detach()), int(ops.sum(ops.cast(hits(p.detach(), y), "int32")))))
                return {"loss": loss}

        eager_record: list = []
        if kind == "tensorflow":
            record = {"loss": tf.Variable(tf.zeros(steps, dt)), "right": tf.Variable(tf.zeros(steps, tf.int32)),
                      "step": tf.Variable(0)}

        class TwoGroups(keras.Model):
            """``fit`` with one optimizer per parameter group (Keras's documented train_step override)."""

            def train_step(self, batch):
                (x, m), y, sw = keras.utils.unpack_x_y_sample_weight(batch)
                with tf.GradientTape() as tape:
                    p = self((x, m), training=True)
                    loss = loss_fn(y, p, sample_weight=sw)  # class weights: sum(w l) / B, as the head's
                    total = loss + (tf.add_n(self.losses) if self.losses else 0.0)
                grads = tape.gradient(total, body_vars + head_vars)
                if body_vars:
                    body_opt.apply(grads[: len(body_vars)], body_vars)
                head_opt.apply(grads[len(body_vars):], head_vars)
                hit = (tf.argmax(p, axis=-1) == tf.argmax(y, axis=-1)) if head == SOFTMAX else \
                    ((p[:, 0] > 0.5) == (y[:, 0] > 0.5))
                i = record["step"]
                record["loss"].scatter_nd_update([[i]], [tf.cast(loss, dt)])
                record["right"].scatter_nd_update([[i]], [tf.reduce_sum(tf.cast(hit, tf.int32))])
                record["step"].assign_add(1)
                return {"loss": loss}

        model = (TwoGroups if kind == "tensorflow" else TorchTwoGroups)(inputs, out)
        model.compile(jit_compile=False)
        set_initial(body, dense, body_init, head_init, dt)
        X, Y, Xv, Yv, ones_v = arrays(net, head, data, dt)
        sw = row_weights(plan, data, dt)
        losses, correct, val_loss, val_acc = [], [], [], []
        for epoch in range(plan.epochs):
            order = plan.batch_order(epoch, n)
            masks = scaled_masks(plan, epoch, n, net.dropout_widths[0], dt)
            if kind == "tensorflow":
                record["step"].assign(0)
            eager_record.clear()
            model.fit([X[order], masks], Y[order], sample_weight=None if sw is None else sw[order],
                      batch_size=plan.batch_size, epochs=1, shuffle=False, verbose=0)
            if kind == "tensorflow":
                losses.append(record["loss"].numpy().copy())
                correct.append(record["right"].numpy().copy())
            else:
                losses.append(np.array([r[0] for r in eager_record]))
                correct.append(np.array([r[1] for r in eager_record]))
            check_finite(backend.name, head, losses[-1], epoch * steps,
                         all_finite(*(ops.convert_to_numpy(v) for v in model.trainable_variables)))
            pv = model.predict([Xv, ones_v], batch_size=max(len(Xv), 1), verbose=0)
            vl, va = val_figures(loss_fn, head, pv, Yv, data.y_val)
            val_loss.append(vl)
            val_acc.append(va)
        return network_trajectory(backend.name, net, head, plan, rates, n, losses, correct, val_loss, val_acc, dense, body,
                           device)


def _train_network_jax(backend, net: Network, head: str, body_init, head_init: Weights, plan: Plan, data,
                       rates: GroupRates) -> Trajectory:
    """Keras on JAX: ``fit``'s ``train_step`` is stateless and carries one optimizer, so the loop is the one
    Keras's guide "writing a training loop from scratch in JAX" writes: ``model.stateless_call``,
    ``jax.value_and_grad``, and each group's optimizer ``stateless_apply``-ed to its own variables."""
    import jax
    import keras

    from .._base import all_finite, check_finite
    from .common import floatx, keras_loss

    dt = plan.dtype
    n, steps = len(data.y_train), plan.steps_per_epoch(len(data.y_train))
    with floatx(dt):
        body_opt, head_opt = group_optimizers(plan, rates)
        inputs, body, dense, out = build(net, head, dt)
        model = keras.Model(inputs, out)
        set_initial(body, dense, body_init, head_init, dt)
        loss_fn = keras_loss(head, plan)
        body_vars, head_vars = group_variables(body, dense, body_opt, head_opt)
        step = jax.jit(jax_step(model, loss_fn, body_opt, head_opt, body_vars, head_vars, head,
                                coupled_decays(plan, rates)))
        state = JaxState.of(model, body_opt if body_vars else None, head_opt)
        X, Y, Xv, Yv, ones_v = arrays(net, head, data, dt)
        sw = row_weights(plan, data, dt)
        losses, correct, val_loss, val_acc = [], [], [], []
        for epoch in range(plan.epochs):
            order = plan.batch_order(epoch, n)
            masks = scaled_masks(plan, epoch, n, net.dropout_widths[0], dt)
            ls, cs = [], []
            for s, t in plan.batch_bounds(n):
                idx = order[s:t]
                loss, c, *state.values = step(*state.values, X[idx], masks[s:t], Y[idx],
                                              None if sw is None else sw[idx])
                ls.append(loss)
                cs.append(c)
            losses.append(np.asarray(jax.device_get(ls), dtype=np.float64))
            correct.append(np.asarray(jax.device_get(cs)))
            check_finite(backend.name, head, losses[-1], epoch * steps, all_finite(*jax.device_get(state.values[0])))
            pv, _ = model.stateless_call(state.values[0], state.values[1], [Xv, ones_v], training=False)
            vl, va = val_figures(loss_fn, head, pv, Yv, data.y_val)
            val_loss.append(vl)
            val_acc.append(va)
        state.write_back()
        return network_trajectory(backend.name, net, head, plan, rates, n, losses, correct, val_loss, val_acc, dense, body,
                           "cpu")


def coupled_decays(plan: Plan, rates: GroupRates) -> tuple[float, float]:
    """(body, head) coupled decay: each group's L2 penalty (decay / 2) ||w||^2 on kernel and bias, whose gradient
    is decay * w, as ``torch.optim``'s coupled ``weight_decay`` and the oracle add it; (0, 0) for decoupled."""
    if plan.optimizer.decay != "coupled":
        return 0.0, 0.0
    return float(rates.body_decay), float(rates.head_decay)


def group_optimizers(plan: Plan, rates: GroupRates):
    """(body, head) optimizers at the groups' rates, with the decay when it is decoupled (coupled decay is the
    loss's L2 penalty, :func:`coupled_decays`); no body optimizer for a frozen body."""
    from .common import make_optimizer

    opt = plan.optimizer
    coupled = opt.decay == "coupled"
    body_opt = make_optimizer(plan.replace(lr=rates.body_lr, optimizer=opt.replace(
        weight_decay=0.0 if coupled else rates.body_decay))) if rates.body_lr > 0 else None
    head_opt = make_optimizer(plan.replace(lr=rates.head_lr, optimizer=opt.replace(
        weight_decay=0.0 if coupled else rates.head_decay)))
    return body_opt, head_opt


def group_variables(body, dense, body_opt, head_opt) -> tuple[list, list]:
    """The body's and the head's trainable variables, each group's optimizer built on them (no body
    variables when the body is frozen)."""
    body_vars = [v for layer in body for v in layer.trainable_variables] if body_opt is not None else []
    head_vars = list(dense.trainable_variables)
    if body_vars:
        body_opt.build(body_vars)
    head_opt.build(head_vars)
    return body_vars, head_vars


def set_initial(body, dense, body_init, head_init: Weights, dt: str) -> None:
    """The plan's body weights and the run's head weights into the Keras layers."""
    for layer, (k, bias) in zip(body, body_init):
        layer.set_weights([np.asarray(k, dtype=dt), np.asarray(bias, dtype=dt)])
    dense.set_weights([head_init.kernel.astype(dt), head_init.bias.astype(dt)])


def arrays(net: Network, head: str, data, dt: str):
    """(X, Y, X_val, Y_val, ones for the validation masks) in the run's dtype, Y as the head's targets."""
    from .common import keras_targets

    Xv = data.X_val.astype(dt)
    return (data.X_train.astype(dt), keras_targets(head, data.y_train, dt), Xv, keras_targets(head, data.y_val, dt),
            np.ones((len(Xv), net.dropout_widths[0]), dtype=dt))


def jax_step(model, loss_fn, body_opt, head_opt, body_vars, head_vars, head: str, decays=(0.0, 0.0)):
    """The training step to jit: ``(tv, ntv, bov, hov, x, m, y) -> (loss, correct, tv, ntv, bov, hov)``.

    ``tv``/``ntv`` are the model's (non-)trainable values, ``bov``/``hov`` the body's and the head's optimizer
    variables; the body's optimizer is applied only when ``body_vars`` is not empty (a frozen body).
    ``decays`` are the groups' coupled decays (:func:`coupled_decays`): their L2 penalties join the loss that
    is differentiated, not the loss that is recorded (as Keras's ``fit`` records the loss without
    ``model.losses``)."""
    import jax
    import jax.numpy as jnp

    order_of = {id(v): i for i, v in enumerate(model.trainable_variables)}
    ib, ih = [order_of[id(v)] for v in body_vars], [order_of[id(v)] for v in head_vars]
    penalties = [(decay / 2, idx) for decay, idx in zip(decays, (ib, ih)) if decay and idx]

    def loss_of(tv, ntv, x, m, y, w):
        p, ntv = model.stateless_call(tv, ntv, [x, m], training=True)
        loss = loss_fn(y, p, sample_weight=w)
        total = loss
        for half, idx in penalties:
            total = total + half * sum(jnp.sum(jnp.square(tv[i])) for i in idx)
        return total, (loss, p, ntv)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def step(tv, ntv, bov, hov, x, m, y, w=None):
        (_, (loss, p, ntv)), grads = grad_fn(tv, ntv, x, m, y, w)
        tv = list(tv)
        if ib:
            new_b, bov = body_opt.stateless_apply(bov, [grads[i] for i in ib], [tv[i] for i in ib])
            for i, v in zip(ib, new_b):
                tv[i] = v
        new_h, hov = head_opt.stateless_apply(hov, [grads[i] for i in ih], [tv[i] for i in ih])
        for i, v in zip(ih, new_h):
            tv[i] = v
        hit = (p.argmax(-1) == y.argmax(-1)) if head == SOFTMAX else ((p[:, 0] > 0.5) == (y[:, 0] > 0.5))
        return loss, hit.sum(), tv, ntv, bov, hov

    return step


class JaxState:
    """The values a from-scratch JAX loop carries between steps: ``[tv, ntv, bov, hov]``."""

    def __init__(self, model, values: list):
        self.model = model
        self.values = values

    @classmethod
    def of(cls, model, body_opt, head_opt) -> JaxState:
        return cls(model, [[v.value for v in model.trainable_variables],
                           [v.value for v in model.non_trainable_variables],
                           [v.value for v in body_opt.variables] if body_opt is not None else [],
                           [v.value for v in head_opt.variables]])

    def write_back(self) -> None:
        """The trained values into the model's variables."""
        for v, value in zip(self.model.trainable_variables, self.values[0]):
            v.assign(value)


def row_weights(plan: Plan, data, dt: str) -> np.ndarray | None:
    """Each training row's class weight in the run's dtype (Keras weighs a row's loss by it and divides the
    sum by the batch size, as the head's ``class_weight=`` does), or None without class weights."""
    sw = plan.sample_weights(data.y_train)
    return None if sw is None else np.asarray(sw, dtype=dt)


def scaled_masks(plan: Plan, epoch: int, n: int, width: int, dt: str) -> np.ndarray:
    """The epoch's masks of the network's Dropout layer as ``scale`` or 0 (ones without dropout)."""
    drawn = plan.epoch_masks(epoch, n, width)
    if drawn is None:
        return np.ones((n, width), dt)
    return (drawn * np.asarray(plan.mask_scale, dtype=dt)).astype(dt)


def val_figures(loss_fn, head: str, pv, Yv, y_val) -> tuple[float, float]:
    """(val_loss, val_accuracy) from the network's probabilities on the validation set."""
    from keras import ops

    pv = np.asarray(ops.convert_to_numpy(pv))
    right = (pv.argmax(1) == y_val) if head == SOFTMAX else ((pv[:, 0] > 0.5) == (y_val == 1))
    return float(ops.convert_to_numpy(loss_fn(Yv, pv))), float(np.mean(right))


def network_trajectory(name: str, net, head, plan, rates, n, losses, correct, val_loss, val_acc, dense, body, device):
    from keras import ops

    from .._base import batch_sizes

    kernel, bias = (ops.convert_to_numpy(v) for v in dense.weights)
    meta = {"backend": name, "head": head, "body": net.body, "device": device, "dtype": plan.dtype,
            "lr": plan.lr, "optimizer": plan.optimizer.label, "rates": rates.__dict__}
    traj = Trajectory.from_steps(np.concatenate(losses), np.concatenate(correct), batch_sizes(plan, n),
                                 plan.steps_per_epoch(n), val_loss, val_acc, Weights(kernel, bias), meta)
    traj.body = [tuple(ops.convert_to_numpy(v) for v in layer.weights) for layer in body]
    return traj
