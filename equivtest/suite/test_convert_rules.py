"""What carries over when a trained softmax head is converted, and what does not (RULES.md T35 to T39).

Five rules about a converted head rather than about training: how the two heads decide at a tie, torch's
``pos_weight``, temperature scaling, Platt scaling converted back to two classes, and storing the converted
weights in bfloat16.  Each "holds" test has a "breaks" counterpart that asserts the failure by a stated
margin (:data:`~equivtest.compare.CONTROL_MARGIN` x the tolerance unless the row says otherwise).  No training
runs here: each test is a few array operations on fixed, seeded data, well under a second.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from equivtest import heads
from equivtest.compare import CONTROL_MARGIN, PROBA_TOLERANCES, assert_allclose
from equivtest.heads import Weights, predict_proba, sigmoid_to_softmax, softmax_to_sigmoid

F32 = np.float32

#: Probabilities (or losses, or gradients) of two heads that are the same function, compared in float64: the
#: project's float64 probability tolerance.  Each side is a handful of correctly rounded operations per item
#: (a dot product of 32 terms, exp, log), so the two agree to a few float64 ulps, about 1e-16 x values of order
#: 1; 1e-12 leaves four orders of magnitude of headroom, and 100 x it (1e-10) is still orders of magnitude
#: below every control here, whose gaps are of order 1e-2 to 1.
TOL64 = PROBA_TOLERANCES["float64"]["atol"]


# ----------------------------------------------------------------------------- T35: the tie rule
#: Where the band of z whose float32 sigmoid is exactly 0.5 may end, on either side of 0.  With correctly
#: rounded float32 arithmetic, 1 / (1 + exp(-z)) is 0.5 exactly for -3 x 2^-24 < z < 1.5 x 2^-24 (exp(-z)
#: rounds to 1, or to a float32 whose sum with 1 rounds back to 2), and the stable form e^z / (1 + e^z) (for
#: z < 0) for -2^-25 <= z < 0; a vectorised exp 1-2 ulp off moves the edges by fractions of 2^-24 (NumPy's
#: AVX2 loop: 0.69 to 2.07 x 2^-24, docs/performance.md).  Asserted: each edge lies in [2^-25, 2^-22], which
#: holds every analysed edge (0.5, 1.5 and 3 x 2^-24, the first at its lower end) and the measured ones.
BAND_EDGE_RANGE = (2.0 ** -25, 2.0 ** -22)
#: the constructed margins: "tiny" ones strictly inside the band on every machine (|z| < 2^-26, half the
#: smallest edge allowed), "clear" ones strictly outside (|z| >= 2^-21, twice the largest)
TINY_MAX, CLEAR_MIN = 2.0 ** -26, 2.0 ** -21
TIE_SEED = 35


def _naive_sigmoid(z):
    """1 / (1 + exp(-z)) in the input's dtype: what most code writes."""
    z = np.asarray(z)
    one = z.dtype.type(1)
    return one / (one + np.exp(-z))


#: the float32 sigmoids whose p >= 0.5 / p > 0.5 decisions are checked: the textbook form and the stable one
#: the project uses (1 / (1 + e^-z) for z >= 0, e^z / (1 + e^z) below)
NUMPY_SIGMOIDS = {"1/(1+exp(-z))": _naive_sigmoid, "equivtest.heads.sigmoid": heads.sigmoid}


def _bits(x: float) -> int:
    return int(np.asarray([x], dtype=F32).view(np.int32)[0])


def half_band_edge(sig, sign: float) -> float:
    """The largest |z| of the given sign whose float32 ``sig(z)`` is exactly 0.5.

    A search over float32 bit patterns between 2^-30 and 2^-20 (the patterns of positive floats are ordered
    as the floats): each round evaluates 4097 evenly spaced patterns in one call (one vectorised code path, as
    the items below take) and narrows to the step where 0.5 ends.  Then a check that the band is contiguous
    there: the 4096 floats just inside the edge give 0.5 and the 4096 just outside do not.
    """
    def halves(b0, b1):
        bits = np.unique(np.linspace(b0, b1, 4097).round().astype(np.int32))
        return bits, sig(bits.view(F32) * F32(sign)) == F32(0.5)

    lo, hi = _bits(2.0 ** -30), _bits(2.0 ** -20)
    bits, half = halves(lo, hi)
    assert half[0] and not half[-1], "the band of 0.5 must start below 2^-30 and end below 2^-20"
    while hi - lo > 1:
        bits, half = halves(lo, hi)
        k = int(np.nonzero(half)[0].max())
        lo, hi = int(bits[k]), int(bits[k + 1])
    inside = np.arange(lo - 4095, lo + 1, dtype=np.int32).view(F32) * F32(sign)
    outside = np.arange(hi, hi + 4096, dtype=np.int32).view(F32) * F32(sign)
    assert np.all(sig(inside) == F32(0.5)) and not np.any(sig(outside) == F32(0.5)), "the band is not contiguous"
    return float(np.asarray([lo], dtype=np.int32).view(F32)[0])


def tie_items(seed: int = TIE_SEED):
    """Softmax logits (z0, z1) in float32, built so that each item's margin class is known in advance.

    Returns ``z0, z1, kind`` with ``kind`` per item: "tie" (z1 == z0, random magnitudes 2^-20..16), "tiny+" /
    "tiny-" (0 < |z1 - z0| < 2^-26: neighbouring floats z1 = nextafter(z0) with |z0| in [2^-8, 2^-4), and
    margins z drawn log-uniformly in [2^-60, 2^-26) written as the zero split (0, z) and the symmetric split
    (-z/2, z/2), both exact), or "clear" (|z1 - z0| >= 2^-21, both splits).
    """
    rng = np.random.default_rng(seed)
    n = 100

    def mags(lo, hi, k=n):
        return np.exp2(rng.uniform(lo, hi, k)) * rng.choice([-1.0, 1.0], k)

    z0s, z1s, kinds = [], [], []

    def add(z0, z1, kind):
        z0s.append(np.asarray(z0, F32))
        z1s.append(np.asarray(z1, F32))
        kinds.extend(kind if isinstance(kind, list) else [kind] * len(z0))

    a = mags(-20, 4, 2 * n).astype(F32)
    add(a, a, "tie")
    b = mags(-8, -4).astype(F32)  # float32 spacing at |b| < 2^-4 is at most 2^-28
    add(b, np.nextafter(b, F32(np.inf)), "tiny+")
    add(b, np.nextafter(b, F32(-np.inf)), "tiny-")
    tiny = np.clip(mags(-60, -26), -np.nextafter(F32(TINY_MAX), F32(0)), np.nextafter(F32(TINY_MAX), F32(0)))
    clear = mags(-21, 3)
    for z in (tiny.astype(F32), clear.astype(F32)):
        kind = [("tiny+" if v > 0 else "tiny-") if abs(v) < TINY_MAX else "clear" for v in z]
        add(np.zeros_like(z), z, kind)  # the zero split
        add(-(z / F32(2)), z / F32(2), kind)  # the symmetric split
    return np.concatenate(z0s), np.concatenate(z1s), np.asarray(kinds)


def _margin_checked(z0, z1, kind):
    """The converted sigmoid's logit s = z1 - z0 (float32, exact here), with the construction checked."""
    s = z1 - z0
    assert np.all(s[kind == "tie"] == 0) and np.all(s[kind == "tiny+"] > 0) and np.all(s[kind == "tiny-"] < 0)
    assert np.all(np.abs(s[kind == "tiny+"]) < TINY_MAX) and np.all(np.abs(s[kind == "tiny-"]) < TINY_MAX)
    assert np.all(np.abs(s[kind == "clear"]) >= CLEAR_MIN)
    return s


def _predicted_disagreements(kind):
    """Where p >= 0.5 and p > 0.5 part from the argmax: every tie and tiny negative margin (p >= 0.5 says
    class 1, argmax 0), every tiny positive margin (p > 0.5 says class 0, argmax 1); nowhere else."""
    return np.isin(kind, ["tie", "tiny-"]), kind == "tiny+"


def test_tie_rule_argmax_and_logit_sign_agree_on_every_item():
    """T35 holds: the softmax decides by argmax (ties to class 0), the converted sigmoid by its logit > 0.

    The sign of fl(z1 - z0) is the sign of z1 - z0 for any float32 pair (with subnormals, x - y rounds to 0
    only when x == y), so the two decisions agree on every item, the exact ties included.
    """
    z0, z1, kind = tie_items()
    s = _margin_checked(z0, z1, kind)
    argmax = np.argmax(np.stack([z0, z1], axis=1), axis=1)
    assert np.all(argmax[kind == "tie"] == 0), "argmax must send an exact tie to class 0"
    assert np.array_equal(argmax, (s > 0).astype(argmax.dtype)), "argmax and logit > 0 disagree"
    # the same decisions through the project's own accuracy function, for both heads
    y = argmax
    assert heads.hits(heads.SOFTMAX, np.stack([z0, z1], axis=1), y).all()
    assert heads.hits(heads.SIGMOID, s[:, None], y).all()


@pytest.mark.parametrize("name", list(NUMPY_SIGMOIDS))
def test_tie_rule_breaks_for_a_threshold_on_the_float32_probability(name):
    """T35 breaks: float32's sigmoid is exactly 0.5 in a band around 0, so thresholding p parts from argmax.

    The count of disagreements is exactly the analysis's: p >= 0.5 says class 1 on every tie and tiny
    negative margin, p > 0.5 says class 0 on every tiny positive margin, and no clear margin moves.
    """
    sig = NUMPY_SIGMOIDS[name]
    for sign in (1.0, -1.0):
        edge = half_band_edge(sig, sign)
        assert BAND_EDGE_RANGE[0] <= edge <= BAND_EDGE_RANGE[1], f"{name}: band edge {sign * edge:.3g}"
    z0, z1, kind = tie_items()
    s = _margin_checked(z0, z1, kind)
    argmax = np.argmax(np.stack([z0, z1], axis=1), axis=1)
    p = sig(s)
    assert p.dtype == F32
    ge_expected, gt_expected = _predicted_disagreements(kind)
    ge_wrong = (p >= F32(0.5)).astype(argmax.dtype) != argmax
    gt_wrong = (p > F32(0.5)).astype(argmax.dtype) != argmax
    assert ge_wrong.sum() == ge_expected.sum() > 0, f"p >= 0.5: {ge_wrong.sum()} disagreements, predicted {ge_expected.sum()}"
    assert gt_wrong.sum() == gt_expected.sum() > 0, f"p > 0.5: {gt_wrong.sum()} disagreements, predicted {gt_expected.sum()}"
    assert np.array_equal(ge_wrong, ge_expected) and np.array_equal(gt_wrong, gt_expected)


@pytest.mark.needs_backends("torch")
def test_tie_rule_in_torch():
    """T35 in torch: ``torch.argmax`` sends ties to class 0 and agrees with logit > 0 on every item;
    thresholding ``torch.sigmoid``'s float32 probability breaks on exactly the predicted items."""
    import torch

    z0, z1, kind = tie_items()
    s = _margin_checked(z0, z1, kind)
    logits = torch.from_numpy(np.stack([z0, z1], axis=1))
    argmax = torch.argmax(logits, dim=1).numpy()
    assert np.all(argmax[kind == "tie"] == 0)
    t_s = logits[:, 1] - logits[:, 0]
    assert np.array_equal(t_s.numpy(), s)
    assert np.array_equal(argmax, (t_s > 0).long().numpy())

    def tsig(z):
        return torch.sigmoid(torch.from_numpy(np.asarray(z, dtype=F32))).numpy()

    for sign in (1.0, -1.0):
        edge = half_band_edge(tsig, sign)
        assert BAND_EDGE_RANGE[0] <= edge <= BAND_EDGE_RANGE[1], f"torch.sigmoid: band edge {sign * edge:.3g}"
    p = torch.sigmoid(t_s)
    ge_expected, gt_expected = _predicted_disagreements(kind)
    assert np.array_equal((p >= 0.5).long().numpy() != argmax, ge_expected)
    assert np.array_equal((p > 0.5).long().numpy() != argmax, gt_expected)
    assert ge_expected.sum() > 0 and gt_expected.sum() > 0


# ----------------------------------------------------------------------------- T36: torch's pos_weight
POS_WEIGHT = 3.0
#: batch 64 with 48 negatives and 16 positives: sum of the class weights [1, 3] over the batch is 96, not 64, so
#: a weighted mean (divided by 96) and a sum over B (divided by 64) part by a third of the loss
POS_BATCH, POS_POSITIVES = 64, 16


def _pos_weight_batch(seed: int = 36):
    """Features, labels and a softmax head (torch layout, float64) with unequal class counts."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((POS_BATCH, 16))
    y = np.zeros(POS_BATCH, dtype=np.int64)
    y[rng.permutation(POS_BATCH)[:POS_POSITIVES]] = 1
    W = 0.5 * rng.standard_normal((2, 16))
    b = 0.1 * rng.standard_normal(2)
    return X, y, W, b


def _pos_weight_losses(torch, F, X, y, W, b):
    """The softmax head's parameters (W, b) and the converted sigmoid's (beta, c) as leaf tensors, and both
    losses with their gradients taken: softmax CE with class weights [1, p] summed and divided by B, and
    ``binary_cross_entropy_with_logits(pos_weight=p)`` (mean reduction, which is sum / B)."""
    f64 = torch.float64
    Xt, yt = torch.tensor(X, dtype=f64), torch.tensor(y)
    Wt, bt = torch.tensor(W, dtype=f64, requires_grad=True), torch.tensor(b, dtype=f64, requires_grad=True)
    beta = torch.tensor(W[1] - W[0], dtype=f64, requires_grad=True)
    c = torch.tensor(b[1] - b[0], dtype=f64, requires_grad=True)
    logits2 = Xt @ Wt.T + bt
    z = Xt @ beta + c
    cw = torch.tensor([1.0, POS_WEIGHT], dtype=f64)
    soft = (cw[yt] * F.cross_entropy(logits2, yt, reduction="none")).sum() / len(y)
    sig = F.binary_cross_entropy_with_logits(z, yt.to(f64), pos_weight=torch.tensor(POS_WEIGHT, dtype=f64))
    return Wt, bt, beta, c, logits2, yt, cw, soft, sig


@pytest.mark.needs_backends("torch")
def test_pos_weight_is_class_weights_1_p_summed_over_the_batch_size():
    """T36 holds: BCE-with-logits with ``pos_weight=p`` is the softmax CE weighted [1, p], sum / B, and so
    are its gradients (dL/dbeta = dL/dw1 = -dL/dw0, the same for the bias)."""
    import torch
    import torch.nn.functional as F

    Wt, bt, beta, c, _, _, _, soft, sig = _pos_weight_losses(torch, F, *_pos_weight_batch())
    assert_allclose(sig.item(), soft.item(), name="loss: pos_weight vs class weights [1, p] / B", atol=TOL64)
    soft.backward()
    sig.backward()
    assert_allclose(beta.grad.numpy(), Wt.grad[1].numpy(), name="dL/dbeta vs dL/dw1", atol=TOL64)
    assert_allclose(beta.grad.numpy(), -Wt.grad[0].numpy(), name="dL/dbeta vs -dL/dw0", atol=TOL64)
    assert_allclose(c.grad.item(), bt.grad[1].item(), name="dL/dc vs dL/db1", atol=TOL64)
    assert_allclose(c.grad.item(), -bt.grad[0].item(), name="dL/dc vs -dL/db0", atol=TOL64)


@pytest.mark.needs_backends("torch")
def test_pos_weight_breaks_against_the_weighted_mean_and_swapped_weights():
    """T36 breaks: ``F.cross_entropy(weight=[1, p])`` divides by sum(w_y) (96 here), not B (64), and
    ``weight=[p, 1]`` weights the other class: both part from ``pos_weight=p`` by more than the margin."""
    import torch
    import torch.nn.functional as F

    Wt, _, beta, _, logits2, yt, cw, _, sig = _pos_weight_losses(torch, F, *_pos_weight_batch())
    limit = CONTROL_MARGIN * TOL64
    mean = F.cross_entropy(logits2, yt, weight=cw)
    assert float(cw[yt].sum()) != len(yt), "the control needs sum(w_y) != B"
    swapped = (cw.flip(0)[yt] * F.cross_entropy(logits2, yt, reduction="none")).sum() / len(yt)
    for name, loss in (("weighted mean", mean), ("swapped weights", swapped)):
        gap = abs(loss.item() - sig.item())
        assert gap > limit, f"{name}: loss within {gap:.3g} of pos_weight's (control margin {limit:.3g})"
    sig.backward()
    (g_mean,) = torch.autograd.grad(mean, Wt)
    gap = float((g_mean[1] - beta.grad).abs().max())
    assert gap > limit, f"weighted mean: gradient within {gap:.3g} of pos_weight's (control margin {limit:.3g})"


# ----------------------------------------------------------------------------- T37: temperature scaling
TEMPERATURES = (0.5, 1.0, 2.0, 10.0)


def _softmax_head_and_features(seed: int, n: int = 500, d: int = 32):
    """A float64 softmax head with logits of order 1 to 10 on standard normal features."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = Weights(0.4 * rng.standard_normal((d, 2)), 0.3 * rng.standard_normal(2))
    return X, w


def _softmax_p1(z):
    """softmax(z)[:, 1], computed stably (the softmax itself, not the identity under test)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e[:, 1] / e.sum(axis=1)


def _temperature_pairs(seed: int = 37):
    X, w = _softmax_head_and_features(seed)
    sig = softmax_to_sigmoid(w)
    return X @ w.kernel + w.bias, X @ sig.kernel[:, 0] + sig.bias[0]


@pytest.mark.parametrize("T", TEMPERATURES)
def test_temperature_scaling_carries_over_to_the_converted_logit(T):
    """T37 holds: softmax(z / T)[1] == sigmoid((z1 - z0) / T), the sigmoid's logit divided by the same T."""
    z, s = _temperature_pairs()
    assert_allclose(heads.sigmoid(s / T), _softmax_p1(z / T), name=f"p at T = {T}", atol=TOL64)


@pytest.mark.parametrize("T", TEMPERATURES)
def test_temperature_forgotten_or_doubled_breaks(T):
    """T37 breaks: sigmoid(z1 - z0) (T forgotten, T != 1) and sigmoid((z1 - z0) / (2T)) part by the margin."""
    z, s = _temperature_pairs()
    target = _softmax_p1(z / T)
    limit = CONTROL_MARGIN * TOL64
    wrongs = {"(z1 - z0) / (2T)": s / (2 * T)}
    if T != 1.0:
        wrongs["T forgotten"] = s
    for name, logit in wrongs.items():
        gap = np.max(np.abs(heads.sigmoid(logit) - target))
        assert gap > limit, f"T = {T}, {name}: within {gap:.3g} (control margin {limit:.3g})"


# ----------------------------------------------------------------------------- T38: Platt scaling
#: Platt's (a, b) fitted on a validation set: a slope that sharpens (1.7) or flattens (0.4), a nonzero intercept
PLATT = ((1.7, -0.6), (0.4, 0.9))


def _sigmoid_head_and_features(seed: int = 38, n: int = 500, d: int = 32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, Weights(0.4 * rng.standard_normal((d, 1)), 0.3 * rng.standard_normal(1))


@pytest.mark.parametrize("split", ["zero", "symmetric"])
@pytest.mark.parametrize("a, b_platt", PLATT)
def test_platt_scaling_converts_back_under_either_split(a, b_platt, split):
    """T38 holds: sigmoid(a (beta.x + c) + b) is the softmax head ``sigmoid_to_softmax((a beta, a c + b))``;
    by hand under the symmetric split: both rows and biases times a, then -b/2 to b0 and +b/2 to b1."""
    X, sig = _sigmoid_head_and_features()
    platt = heads.sigmoid(a * (X @ sig.kernel[:, 0] + sig.bias[0]) + b_platt)
    calibrated = Weights(a * sig.kernel, a * sig.bias + b_platt)
    assert_allclose(predict_proba(sigmoid_to_softmax(calibrated, split), X), platt,
                    name=f"Platt ({a}, {b_platt}), {split} split", atol=TOL64)
    sym = sigmoid_to_softmax(sig, "symmetric")
    by_hand = Weights(a * sym.kernel, a * sym.bias + np.array([-b_platt / 2, b_platt / 2]))
    assert_allclose(predict_proba(by_hand, X), platt, name="by hand, symmetric split", atol=TOL64)


@pytest.mark.parametrize("a, b_platt", PLATT)
def test_platt_applied_to_one_class_only_breaks(a, b_platt):
    """T38 breaks: under the symmetric split, the intercept added as b/2 to b1 only (the difference moves by
    b/2, not b), or the slope applied to w1 only (the difference becomes (a + 1) beta / 2, not a beta)."""
    X, sig = _sigmoid_head_and_features()
    platt = heads.sigmoid(a * (X @ sig.kernel[:, 0] + sig.bias[0]) + b_platt)
    sym = sigmoid_to_softmax(sig, "symmetric")
    wrongs = {
        "b/2 on b1 only": Weights(a * sym.kernel, a * sym.bias + np.array([0.0, b_platt / 2])),
        "a on w1 only": Weights(sym.kernel * np.array([1.0, a]), a * sym.bias + np.array([-b_platt / 2, b_platt / 2])),
    }
    limit = CONTROL_MARGIN * TOL64
    for name, w in wrongs.items():
        gap = np.max(np.abs(predict_proba(w, X) - platt))
        assert gap > limit, f"Platt ({a}, {b_platt}), {name}: within {gap:.3g} (control margin {limit:.3g})"


# ----------------------------------------------------------------------------- T39: bfloat16 storage
#: the features: the GAP-like surrogate at the seed's width, non-negative with a third exact zeros
BF16_SHAPE = (2000, 2048)
#: the softmax head: float32 rows of magnitude ~0.05 (N(0, 0.05^2)), like a trained head on 2048 features
BF16_WEIGHT_SCALE = 0.05
BF16_SEED = 39
#: bfloat16 keeps 8 significant bits (7 stored): round to nearest is within 2^-8 |x| of x
U_BF16 = 2.0 ** -8
#: The float32-u control: the bfloat16 gap must pass float32's bound (1/65536 of bfloat16's) on more than this
#: share of the items.  Measured 1998 of 2000: only an item whose 2048 roundings cancel to below 1/65536 of
#: the bound can stay under it, and 90 % leaves room for a few more such items on other features.
FLOAT32_U_SHARE = 0.9
#: The float16-u control, per coordinate: a stored weight's relative error over float16's u is below 8 (bfloat16's
#: u is 8 x float16's); any coordinate rounded by more than half a bfloat16 unit passes 4.  Measured 7.95.
FLOAT16_U_WORST = 4.0


@functools.lru_cache(maxsize=1)
def _bf16_head():
    """Surrogate features (float64 copy) and a float32 softmax head in torch layout (2, d), (2,)."""
    from equivtest.sources import surrogate

    X = surrogate(*BF16_SHAPE).X.astype(np.float64)
    rng = np.random.default_rng(BF16_SEED)
    W = (BF16_WEIGHT_SCALE * rng.standard_normal((2, BF16_SHAPE[1]))).astype(F32)
    b = (BF16_WEIGHT_SCALE * rng.standard_normal(2)).astype(F32)
    return X, W, b


@functools.cache  # computed once for the test of the bound and the test of its controls; read, never changed
def bfloat16_storage_figures() -> dict:
    """What storing the converted head in bfloat16 costs on the surrogate (docs/performance.md quotes these).

    The exact converted head (float64) and the bfloat16-stored one are both applied in float64, so the gap is
    the storage rounding alone.  Also: a conversion that rounds the softmax rows to bfloat16 first and subtracts
    in bfloat16 (double rounding), and the logit bound computed with another dtype's u.
    """
    from equivtest.convert.core import UNIT_ROUNDOFF, convert_weights, round_to, storage_logit_bound

    X, W, b = _bf16_head()
    # the exact converted head, computed here (float32 differences are exact in float64), not by the converter
    beta = W[1].astype(np.float64) - W[0].astype(np.float64)
    c = float(b[1]) - float(b[0])
    exact = convert_weights(W, b, to="sigmoid", dtype="float64")
    stored = convert_weights(W, b, to="sigmoid", dtype="bfloat16")
    assert np.array_equal(exact.weight[0], beta) and exact.bias[0] == c, "the float64 conversion is not exact"
    z_exact = X @ beta + c
    dz = np.abs(X @ stored.weight[0] + stored.bias[0] - z_exact)
    dp = np.abs(heads.sigmoid(X @ stored.weight[0] + stored.bias[0]) - heads.sigmoid(z_exact))
    bound = storage_logit_bound(X, exact.weight, exact.bias, "bfloat16")
    worst = int(np.argmax(dz))
    # double rounding: each softmax row to bfloat16, then the difference rounded to bfloat16 again
    Wb, bb = round_to(W, "bfloat16"), round_to(b, "bfloat16")
    beta_dd = round_to(Wb[1] - Wb[0], "bfloat16")
    c_dd = float(round_to(np.asarray([bb[1] - bb[0]]), "bfloat16")[0])
    err_single = np.abs(stored.weight[0] - beta)
    err_dd = np.abs(beta_dd - beta)
    nz = beta != 0
    dz_dd = np.abs(X @ beta_dd + c_dd - z_exact)
    wrong = {dt: dz / storage_logit_bound(X, exact.weight, exact.bias, dt) for dt in ("float16", "float32")}
    rel_single = err_single[nz] / np.abs(beta[nz])
    stored_all = np.append(stored.weight[0], stored.bias[0])
    exact_all = np.append(beta, c)
    return {
        "max_rel": stored.rounding.max_rel,
        # the same, measured here against the exact head: a converter that rounds twice cannot hide it
        "max_rel_measured": float(np.max(np.abs(stored_all - exact_all)[exact_all != 0]
                                         / np.abs(exact_all[exact_all != 0]))),
        "max_abs": stored.rounding.max_abs,
        "max_dlogit": float(dz[worst]),
        "bound_at_max_dlogit": float(bound[worst]),
        "max_dlogit_over_bound": float(np.max(dz / bound)),
        "bound_range": (float(bound.min()), float(bound.max())),
        "max_dp": float(dp.max()),
        "max_dp_over_bound": float(np.max(dp / (bound / 4))),
        "max_logit": float(np.abs(z_exact).max()),
        "double_rounding_coords_past_u_beta": int(np.sum(err_dd[nz] > U_BF16 * np.abs(beta[nz]))),
        "double_rounding_worst_over_u_beta": float(np.max(err_dd[nz] / (U_BF16 * np.abs(beta[nz])))),
        "double_rounding_coords_worse_than_single": int(np.sum(err_dd > err_single)),
        "double_rounding_max_abs": float(err_dd.max()),
        "double_rounding_max_dlogit": float(dz_dd.max()),
        "double_rounding_max_dlogit_over_bound": float(np.max(dz_dd / bound)),
        "float16_u_logit_ratio": float(wrong["float16"].max()),
        "float16_u_coords_past": int(np.sum(rel_single > UNIT_ROUNDOFF["float16"])),
        "float16_u_worst_coord_ratio": float(rel_single.max() / UNIT_ROUNDOFF["float16"]),
        "float32_u_items_past": int(np.sum(wrong["float32"] > 1)),
        "n": int(X.shape[0]),
        "float32_u_logit_ratio_max": float(wrong["float32"].max()),
        "d": int(beta.size),
    }


def test_bfloat16_storage_stays_within_the_rounding_bound():
    """T39 holds: the bfloat16-stored converted head's logit is within u (sum |x_j beta_j| + |c|) of the exact
    one on every item (u = 2^-8), its probability within a quarter of that, and each weight within u |beta_j|."""
    from equivtest.convert.core import UNIT_ROUNDOFF

    f = bfloat16_storage_figures()
    assert UNIT_ROUNDOFF["bfloat16"] == U_BF16
    assert f["max_rel"] <= U_BF16, f"the Rounding record says {f['max_rel']:.3g} relative (u = {U_BF16:.3g})"
    assert f["max_rel_measured"] <= U_BF16, (
        f"a stored weight is {f['max_rel_measured']:.3g} off relative to its exact value (u = {U_BF16:.3g})")
    assert f["max_rel"] == f["max_rel_measured"], "the Rounding record does not measure the stored weights"
    assert f["max_dlogit_over_bound"] <= 1.0, f"logit gap {f['max_dlogit']:.3g} past the storage bound"
    assert f["max_dp_over_bound"] <= 1.0, f"probability gap {f['max_dp']:.3g} past a quarter of the bound"
    assert f["max_dlogit"] > 0, "bfloat16 must have rounded something (else the test checks nothing)"


def test_bfloat16_double_rounding_and_wrong_dtype_bounds_break():
    """T39 breaks: subtracting the rows in bfloat16 after rounding each (double rounding) misses the single
    rounding's bound u |beta_j| on some coordinates, the worst by more than the control margin (cancellation can
    lose a small coordinate), and is further off than the single rounding on some coordinates.  A bound computed
    with another dtype's u: float32's is exceeded on more than 90 % of the items, at the worst item by more than
    the control margin; float16's (1/8 of bfloat16's) per coordinate on more than half the coordinates, the
    worst by more than 4 x (it cannot pass 8 x)."""
    f = bfloat16_storage_figures()
    assert f["double_rounding_coords_past_u_beta"] > 0
    assert f["double_rounding_worst_over_u_beta"] > CONTROL_MARGIN, (
        f"double rounding: worst coordinate {f['double_rounding_worst_over_u_beta']:.3g} x u |beta_j|")
    assert f["double_rounding_coords_worse_than_single"] > 0
    assert f["float32_u_items_past"] > FLOAT32_U_SHARE * f["n"], f"float32's u: {f['float32_u_items_past']} items past"
    assert f["float32_u_logit_ratio_max"] > CONTROL_MARGIN
    assert f["float16_u_coords_past"] > f["d"] // 2, f"float16's u: {f['float16_u_coords_past']} coordinates past"
    assert f["float16_u_worst_coord_ratio"] > FLOAT16_U_WORST


# bfloat16 rounding itself (T39 assumes one rounding to nearest; NumPy has no bfloat16, so equivtest rounds)
#: seeded values over bfloat16's whole exponent range, its subnormals included, and its exact ties
BF16_ROUNDING_SEED, BF16_ROUNDING_N = 391, 1500
#: the largest bfloat16, (2 - 2^-7) 2^127, and the tie between it and 2^128: from there on, rounding overflows
BF16_LARGEST, BF16_OVERFLOW_TIE = 2.0 ** 128 - 2.0 ** 120, 2.0 ** 128 - 2.0 ** 119


def _bf16_bits(r: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns of values that are bfloat16 (a float32 whose low 16 bits are zero)."""
    bits = np.asarray(r, dtype=np.float64).astype(F32).view(np.uint32)
    assert np.array_equal(bits.view(F32).astype(np.float64), r) and not np.any(bits & 0xFFFF), "not a bfloat16"
    return bits >> 16


def _bf16_exact(bits: int):
    """The value of bfloat16 bits (sign 0) as a fraction; 0x7F80 (inf) as 2^128, where a value past the largest
    bfloat16 (bits 0x7F7F, odd) goes, the tie between them included."""
    from fractions import Fraction

    return Fraction(2) ** 128 if bits == 0x7F80 else Fraction(float(np.uint32(bits << 16).view(F32)))


def _not_nearest_even(x: np.ndarray, r: np.ndarray) -> list[int]:
    """The items where r is not the bfloat16 nearest to x, ties to even: r keeps x's sign, and |r|'s neighbours
    one bfloat16 step either way (from its bits) are not nearer to |x|, nor as near with |r| odd (distances
    compared exactly, as fractions)."""
    from fractions import Fraction

    bits = _bf16_bits(np.abs(r))
    wrong = []
    for i, (xi, ri, bi) in enumerate(zip(np.abs(x), np.abs(r), bits)):
        if ri == np.inf:  # past the tie between the largest bfloat16 (odd) and 2^128, or at it: overflow
            if xi < BF16_OVERFLOW_TIE:
                wrong.append(i)
            continue
        d = abs(Fraction(float(xi)) - Fraction(float(ri)))
        steps = [int(bi) + 1, int(bi) - 1] if bi else [1]
        near = [abs(Fraction(float(xi)) - _bf16_exact(n)) for n in steps]
        if any(dn < d for dn in near) or (any(dn == d for dn in near) and int(bi) & 1):
            wrong.append(i)
    return wrong + [i for i in np.flatnonzero(np.signbit(x) != np.signbit(r)) if i not in wrong]


def bf16_rounding_cases() -> tuple[np.ndarray, np.ndarray]:
    """(values over the range, values just past a bfloat16 tie) for positive magnitudes; both signs are used.

    Just past a tie: t (1 + 2^-30) with t an odd multiple of half a bfloat16 spacing.  One rounding goes up to
    the next bfloat16; a float32 rounding first lands exactly on the tie (2^-30 is below float32's precision),
    and the tie then goes to the even neighbour, which is the lower one for about half of them (the drawn
    multiple's parity: 224 of these 400)."""
    rng = np.random.default_rng(BF16_ROUNDING_SEED)
    span = rng.standard_normal(BF16_ROUNDING_N) * np.exp2(rng.uniform(-135, 127, BF16_ROUNDING_N))
    ties = (2 * rng.integers(128, 256, 200) + 1) * np.exp2(rng.integers(-100, 100, 200) - 9.0)
    sub_ties = (2 * rng.integers(0, 2 ** 7, 50) + 1) * 2.0 ** -134  # ties between bfloat16 subnormals
    past = ties * (1 + 2.0 ** -30)
    cases = np.concatenate([span, ties, sub_ties])
    return np.concatenate([cases, -cases]), np.concatenate([past, -past])


def test_bfloat16_rounding_is_one_rounding_to_nearest_even():
    """T39's premise holds: ``round_to(x, "bfloat16")`` is the bfloat16 nearest to each float64 x (ties to even,
    subnormals and exact ties included), checked exactly from each result's neighbours; signed zeros, infinities
    and nan pass through, and what rounds past bfloat16's largest value overflows to inf."""
    from equivtest.convert.core import round_to

    cases, past = bf16_rounding_cases()
    x = np.concatenate([cases, past])
    assert _not_nearest_even(x, round_to(x, "bfloat16")) == []
    special = np.array([0.0, -0.0, np.inf, -np.inf, BF16_OVERFLOW_TIE, np.nextafter(BF16_OVERFLOW_TIE, 0), 2.0 ** -135])
    r = round_to(special, "bfloat16")
    assert np.array_equal(np.signbit(r[:2]), [False, True]) and list(r[2:5]) == [np.inf, -np.inf, np.inf]
    assert r[5] == BF16_LARGEST and r[6] == 0.0  # just below the tie; a quarter of the least subnormal
    assert np.isnan(round_to(np.array([np.nan]), "bfloat16")[0])


def test_bfloat16_rounding_through_float32_first_breaks():
    """T39's premise breaks for a double rounding: float64 to float32, then to bfloat16 (what
    ``torch.from_numpy(x).to(torch.bfloat16)`` does) misses the nearest bfloat16 on every value just past a tie
    whose lower neighbour is even (about half of them: 224 of 400; asserted: more than a third), and on none of the
    values the single rounding is checked on does the checker flag the single rounding (the holds test)."""
    from equivtest.convert.core import round_to

    _, past = bf16_rounding_cases()
    twice = round_to(past.astype(F32).astype(np.float64), "bfloat16")
    wrong = _not_nearest_even(past, twice)
    assert len(wrong) > len(past) / 3, f"rounding through float32 missed only {len(wrong)} of {len(past)}"
    assert _not_nearest_even(past, round_to(past, "bfloat16")) == []
