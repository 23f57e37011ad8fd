"""Transfer rules: how to run the sigmoid head so it follows the softmax head's path.

One principle covers every case that holds: for two classes the softmax loss
depends on the logits only through beta . x + c (beta = w1 - w0), and
dL/dw1 = -dL/dw0 = dL/dbeta for *any* per-sample loss that is a function of
p(y | x) (cross-entropy, label-smoothed cross-entropy, weighted cross-entropy,
focal loss).  An optimizer that updates each coordinate from that coordinate's
gradient history then moves w1 and w0 by opposite amounts, so beta moves by
twice w1's step, while the sigmoid's own gradient equals dL/dw1:

- **SGD, momentum, Nesterov** (linear in the gradients): lr x 2.
- **Adam, AdamW, RMSprop, Adagrad** (per-coordinate; g0 = -g1 gives the same
  moments and accumulators for w0 and w1, and the sign flips through): lr x 2.
- **Coupled L2** (wd w added to each gradient) with SGD/momentum: the added terms
  are linear, so beta gets wd (w1 - w0) = wd beta at rate eta from the softmax,
  and 2 eta wd' beta from the sigmoid: wd' = wd / 2, from any initial weights.
- **Coupled L2 with an adaptive optimizer** (Adam, RMSprop, Adagrad): g1 = g + wd w1
  and g0 = -g + wd w0 are opposite only if w0 + w1 = 0; then w0 + w1 stays 0 and
  g1 = g + wd beta / 2, the sigmoid's gradient with wd' = wd / 2.  Condition:
  a zero null-space component, e.g. ``sigmoid_to_softmax(..., split="symmetric")``.
  From a Glorot init (w0 + w1 != 0) it breaks.
- **Decoupled weight decay** (AdamW, Keras's ``weight_decay=``): w -= eta wd w
  shrinks beta by eta wd beta; the sigmoid at 2 eta needs wd' = wd / 2; no condition.
- **Label smoothing e**: both heads' targets become y (1 - e) + e / 2 (Keras's
  and PyTorch's definitions with K = 2); the loss is still a function of p: same e.
- **Class / sample weights**: a per-sample factor on a function of p: same
  weights, *if* both heads normalise the same way (sum(w l) / B in Keras;
  PyTorch's ``F.cross_entropy(weight=)`` divides by sum(w) instead, which
  ``F.binary_cross_entropy_with_logits(weight=)`` does not: that pair breaks).
- **More than two classes**: see :mod:`equivtest.kway`; no single factor exists.
"""

from __future__ import annotations

from .heads import lr_factor, weight_decay_factor
from .plan import Plan


def sigmoid_plan(plan: Plan, factor: float | None = None) -> Plan:
    """The plan the converted sigmoid head runs under: lr x 2, weight decay / 2, all else equal.

    ``factor`` overrides the learning-rate factor (1 is the negative control).
    """
    f = lr_factor() if factor is None else float(factor)
    opt = plan.optimizer
    if opt.weight_decay:
        opt = opt.replace(weight_decay=opt.weight_decay * weight_decay_factor())
    return plan.replace(lr=f * plan.lr, optimizer=opt)


def needs_symmetric_init(plan: Plan) -> bool:
    """True where the rule holds only from w0 + w1 = 0 (coupled L2 with an adaptive optimizer)."""
    opt = plan.optimizer
    return bool(opt.weight_decay) and opt.decay == "coupled" and opt.name in ("adam", "rmsprop", "adagrad")


#: where :func:`best_lr_factor` looks for a learning-rate factor: 1/16 .. 16, on a log scale
FACTOR_BOUNDS = (1 / 16, 16.0)


def best_lr_factor(gap, bounds: tuple[float, float] = FACTOR_BOUNDS, grid: int = 17, xtol: float = 1e-4):
    """Minimise ``gap(factor)`` over the learning-rate factor: (factor, gap, evaluations).

    A "no factor rescues it" claim needs the smallest gap any factor reaches, not
    a few hand-picked factors.  ``gap`` is searched on a log scale: a grid of
    ``grid`` points over ``bounds`` finds the basin, then a golden-section search
    refines it between the best grid point's neighbours until that bracket is
    ``xtol`` wide in log2(factor).  The smallest gap evaluated anywhere is
    returned, with its factor and every (factor, gap) evaluated, for the failure
    message.  (scipy's bounded Brent search needs fewer evaluations on a smooth
    gap, but importing ``scipy.optimize`` costs more than the evaluations it
    saves here: docs/performance.md.)
    """
    import math

    lo, hi = math.log2(bounds[0]), math.log2(bounds[1])
    seen: dict[float, float] = {}

    def f(t: float) -> float:
        if t not in seen:
            seen[t] = float(gap(2.0**t))
        return seen[t]

    ts = [lo + (hi - lo) * i / (grid - 1) for i in range(grid)]
    vals = [f(t) for t in ts]
    i = min(range(grid), key=vals.__getitem__)
    a, b = ts[max(i - 1, 0)], ts[min(i + 1, grid - 1)]
    shrink = (math.sqrt(5.0) - 1.0) / 2.0  # each step keeps this share of the bracket, reusing one inner point
    c, d = b - shrink * (b - a), a + shrink * (b - a)
    while b - a > xtol:
        if f(c) <= f(d):  # the minimum of a unimodal gap lies in [a, d]
            b, d = d, c
            c = b - shrink * (b - a)
        else:  # in [c, b]
            a, c = c, d
            d = a + shrink * (b - a)
    t_best = min(seen, key=seen.__getitem__)
    return float(2.0**t_best), seen[t_best], sorted((2.0**t, g) for t, g in seen.items())
