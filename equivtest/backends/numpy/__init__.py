"""The NumPy reference backend: closed-form gradients, float64 by default; the oracle.

Losses, for logits z of one batch of size B (mean over the batch):

- softmax: ``L = mean(lse(z) - z_y)`` with ``lse`` the stable log-sum-exp;
  ``dL/dz = (softmax(z) - onehot(y)) / B``.
- sigmoid: ``L = mean(softplus(z) - y z)`` (= binary cross-entropy on logits);
  ``dL/dz = (sigmoid(z) - y) / B``.

Optimizers follow PyTorch's update equations (Keras's are the same maps written
differently, except Adam's epsilon, which Keras adds before bias correction):

- SGD: ``w -= lr g``; momentum ``buf = mu buf + g``; plain ``w -= lr buf``;
  Nesterov ``w -= lr (g + mu buf)``.
- Adam: ``m, v`` moving averages; ``w -= lr m_hat / (sqrt(v_hat) + eps)``
  (``epsilon_convention="torch"``) or, as Keras writes it,
  ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)`` (``"keras"``).
  AdamW: the same after ``w -= lr wd w``.
- RMSprop: ``v = rho v + (1 - rho) g^2``; ``w -= lr g / (sqrt(v) + eps)``
  (torch) or ``lr g / sqrt(v + eps)`` (Keras).
- Adagrad: ``acc = acc0 + sum g^2``; ``w -= lr g / (sqrt(acc) + eps)`` (torch) or
  ``lr g / sqrt(acc + eps)`` (Keras).
- Weight decay: coupled adds ``wd w`` to the gradient; decoupled does
  ``w -= lr wd w`` before the update.

The frameworks differ only by where epsilon enters; :func:`reference_for`
picks the convention a framework backend uses, so cross-framework checks
compare like with like.
"""

from __future__ import annotations

import numpy as np

from ...heads import UNITS, Weights, check_head
from ...heads import predict_proba as _predict_proba
from ...plan import Plan
from ...trajectory import Trajectory
from .._base import BaseBackend


class Backend(BaseBackend):
    name = "numpy"
    framework = "numpy"

    def __init__(self, epsilon_convention: str = "torch"):
        if epsilon_convention not in ("torch", "keras"):
            raise ValueError(f"epsilon_convention must be 'torch' or 'keras', got {epsilon_convention!r}")
        self._epsilon_convention = epsilon_convention

    @property
    def epsilon_convention(self) -> str:
        """The oracle follows either framework's convention, chosen per instance (``reference_for``)."""
        return self._epsilon_convention

    def version(self) -> str:
        return np.__version__

    def count_params(self, head: str, d: int) -> int:
        """The elements of the arrays this backend trains (as :meth:`train` allocates them)."""
        k = UNITS[check_head(head)]
        return sum(p.size for p in _parameters(Weights(np.zeros((d, k)), np.zeros(k)), np.float64))

    def predict_proba(self, weights: Weights, X, *, device="cpu", dtype="float32"):
        self.resolve_device(device)
        return _predict_proba(weights.astype(dtype), np.asarray(X, dtype=dtype))

    def count_network_params(self, network, head: str) -> int:
        """The elements of the arrays the oracle trains for ``network`` with ``head``."""
        from ...plan import Plan

        k = UNITS[check_head(head)]
        body = sum(w.size + b.size for w, b in Plan().body_weights(network))
        return body + sum(p.size for p in _parameters(Weights(np.zeros((network.width, k)), np.zeros(k)), np.float64))

    def network_loop(self):
        from .network import train_network

        def loop(backend, network, head, body_init, head_init, plan, data, rates, device):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # check_finite reports
                return train_network(backend, network, head, body_init, head_init, plan, data, rates)

        return loop

    def train(self, head, init, plan: Plan, data, *, device="cpu", masks="plan", callback=None,
              record_history=False) -> Trajectory:
        # overflow is caught by check_finite at the step it appears, not reported as a NumPy warning
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._train(head, init, plan, data, device, masks, callback, record_history)

    def _train(self, head, init, plan: Plan, data, device, masks, callback, record_history) -> Trajectory:
        """The head is the network with body ``none``: one loop (:func:`.network.train_network`) for both."""
        from ...networks import head_alone
        from .network import train_network

        self._check_train_args(head, init, plan, data, masks)
        device = self.resolve_device(device)
        net, rates = head_alone(plan, data.n_features)
        return train_network(self, net, head, [], init, plan, data, rates, masks=masks, callback=callback,
                             record_history=record_history, meta=self._meta(head, plan, data, device, masks))


def _parameters(init: Weights, dtype) -> list[np.ndarray]:
    """The arrays the oracle trains: the kernel (d, k) and the bias (k,), copied from ``init``."""
    return [init.kernel.astype(dtype, copy=True), init.bias.astype(dtype, copy=True)]


def reference_for(backend) -> Backend:
    """The float64 oracle for ``backend``: a NumPy backend with its Adam epsilon convention."""
    return Backend(epsilon_convention=getattr(backend, "epsilon_convention", "torch"))
