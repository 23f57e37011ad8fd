"""The seed's experiment as one function: three runs per backend, then the checks.

Per backend, with the seed's recipe unless told otherwise:

- ``softmax``: Dense(2, softmax) from Glorot init at lr;
- ``sigmoid_converted``: Dense(1, sigmoid) from the converted initial softmax
  weights (beta = w1 - w0, c = b1 - b0) at ``lr_factor`` x lr (the rule's 2, ``heads.lr_factor``);
- ``sigmoid_random``: Dense(1, sigmoid) from its own Glorot init at the same rate.

Dropout masks are the plan's, shared by all three runs (``masks="shared"``), or
drawn independently per run (``"independent"``, the seed's own setting).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from . import __version__
from . import backends as _registry
from .compare import CONTROL_MARGIN, PROBA_TOLERANCES, TOLERANCES, compare_trajectories
from .data import SURROGATE_SHAPE, Dataset
from .errors import NonFiniteLoss
from .heads import lr_factor as rule_lr_factor
from .heads import n_params, sigmoid_to_softmax, softmax_to_sigmoid
from .machine import cpu_model
from .plan import Plan
from .rules import needs_symmetric_init, sigmoid_plan
from .trajectory import Trajectory

RUNS = ("softmax", "sigmoid_converted", "sigmoid_random")
#: whether the three runs share the plan's dropout masks or each draws its own (the seed's setting)
MASK_SHARING = ("shared", "independent")


@dataclass
class Check:
    """One verdict: ``value op tolerance`` (op is ``<=``, ``>`` or ``==``)."""

    name: str
    backend: str
    value: float
    tolerance: float
    op: str
    detail: str = ""
    divergence: dict | None = None  # where two runs split (first step, parameters differing most)

    @property
    def passed(self) -> bool:
        if self.op == "never":  # a recorded failure (a run that stopped), not a comparison
            return False
        if self.op == "<=":
            return bool(self.value <= self.tolerance)
        if self.op == ">":
            return bool(self.value > self.tolerance)
        return bool(self.value == self.tolerance)

    def to_dict(self) -> dict:
        d = {"name": self.name, "backend": self.backend, "value": self.value, "tolerance": self.tolerance,
             "op": self.op, "passed": self.passed, "detail": self.detail}
        if self.divergence is not None:
            d["divergence"] = self.divergence
        return d


@dataclass
class BackendResult:
    backend: str
    device: str
    environment: dict
    runs: dict[str, Trajectory] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    #: runs stopped by a non-finite loss or weight: run name -> the error
    stopped: dict[str, NonFiniteLoss] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    plan: Plan
    dataset: dict
    masks: str
    results: dict[str, BackendResult] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    lr_factor: float = field(default_factory=rule_lr_factor)
    #: a whole network's body ("mlp", "cnn") and the learning-rate rule; None: the seed's head on features
    body: str | None = None
    lr_rule: str = "per-layer"
    #: DistributedDataParallel processes per run (1: one process)
    data_parallel: int = 1

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and not self.interrupted

    def seed_matches_recipe(self) -> bool:
        """True when the plan and features are the seed's (so its figures may stand beside ours)."""
        p = self.plan
        return (p.epochs == 5 and p.batch_size == 128 and p.lr == 1e-3 and p.optimizer.label == "sgd"
                and p.dropout == 0.5 and tuple(self.dataset["shape"]) == SURROGATE_SHAPE)

    def to_dict(self) -> dict:
        return {
            "equivtest_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": {
                "python": platform.python_version(), "platform": platform.platform(),
                "cpu": cpu_model(), "cores": os.cpu_count(),
                "backends": {n: r.environment for n, r in self.results.items()},
            },
            "features": self.dataset,
            "plan": self.plan.to_dict(),
            "masks": self.masks,
            "lr": {"softmax": self.plan.lr, "sigmoid": self.lr_factor * self.plan.lr, "factor": self.lr_factor},
            "network": None if self.body is None else {"body": self.body, "lr_rule": self.lr_rule},
            "data_parallel": self.data_parallel,
            "backends": {
                n: {"device": r.device, "params": r.params,
                    "runs": {k: t.to_dict(weights=False) for k, t in r.runs.items()}}
                for n, r in self.results.items()
            },
            "checks": [c.to_dict() for c in self.checks],
            "seed": seed_reference() if self.seed_matches_recipe() else None,
            "passed": self.passed,
            "interrupted": self.interrupted,
            "wall_s": self.wall_s,
        }


def seed_reference() -> dict:
    """The seed's published figures (``equivtest/seed_results.json``, from ../shared/reference)."""
    return json.loads(resources.files("equivtest").joinpath("seed_results.json").read_text())


def run_specs(plan: Plan, d: int, masks: str = "shared", factor: float | None = None):
    """(name, head, initial weights, plan) for the three runs; the sigmoid's lr is ``factor`` x lr (2)."""
    if masks not in MASK_SHARING:
        raise ValueError(f"masks must be one of {', '.join(MASK_SHARING)}, got {masks!r}")
    w = plan.initial_weights("softmax", d)
    if needs_symmetric_init(plan):  # coupled L2 with an adaptive optimizer: the rule needs w0 + w1 = 0
        w = sigmoid_to_softmax(softmax_to_sigmoid(w), "symmetric")
    sig_plan = sigmoid_plan(plan, factor)
    independent = masks == "independent"
    return [
        ("softmax", "softmax", w, plan),
        ("sigmoid_converted", "sigmoid", softmax_to_sigmoid(w), sig_plan.replace(mask_stream=1 if independent else 0)),
        ("sigmoid_random", "sigmoid", plan.initial_weights("sigmoid", d, stream=1),
         sig_plan.replace(mask_stream=2 if independent else 0)),
    ]


class _RunCallback:
    """A backend's training callback for one run: ``on_epoch(backend, run, epoch, logs)`` after each epoch and,
    where given, ``on_step(backend, run, epoch, step, steps)`` after each step (the loops that step in Python,
    NumPy's and torch's, call it; Keras runs an epoch as one compiled execution)."""

    def __init__(self, backend: str, run: str, on_epoch, on_step=None):
        self.backend, self.run, self.on_epoch = backend, run, on_epoch
        if on_step is not None:
            self.step = lambda e, s, k: on_step(backend, run, e, s, k)

    def __call__(self, epoch, logs):
        if self.on_epoch is not None:
            self.on_epoch(self.backend, self.run, epoch, logs)


def run_experiment(dataset: Dataset, plan: Plan, backend_names, *, device: str = "cpu", masks: str = "shared",
                   lr_factor: float | None = None, on_epoch=None, on_run=None, on_step=None,
                   data_parallel: int = 1) -> ExperimentResult:
    """Run the three heads on every backend named, then compute every check.

    ``data_parallel`` > 1 trains each run on that many CPU workers with the
    backend's own engine (:mod:`equivtest.parallel`: torch, keras, keras-jax).

    ``on_run(backend, run)`` is called before each run, ``on_epoch(backend,
    run, epoch, logs)`` after each epoch and ``on_step(backend, run, epoch, step,
    steps)`` after each step where the backend's loop steps in Python.  A ``KeyboardInterrupt`` stops the runs;
    the result holds what finished, with ``interrupted=True``.
    """
    t0 = time.perf_counter()
    res = ExperimentResult(plan, {"source": dataset.source, "shape": list(dataset.shape),
                                  "n_train": int(len(dataset.y_train)), "n_val": int(len(dataset.y_val)),
                                  "description": dataset.description}, masks)
    res.lr_factor = rule_lr_factor() if lr_factor is None else float(lr_factor)
    res.data_parallel = int(data_parallel)
    specs = run_specs(plan, dataset.n_features, masks, res.lr_factor)
    try:
        for be in _registry.load(backend_names):
            dev = be.resolve_device(_registry.device_for(be.name, device))  # numpy stays on the CPU
            br = res.results[be.name] = BackendResult(be.name, dev, be.environment())
            d = dataset.n_features
            br.params = {"softmax": be.count_params("softmax", d), "sigmoid": be.count_params("sigmoid", d)}
            for name, head, init, p in specs:
                if on_run:
                    on_run(be.name, name)
                cb = _RunCallback(be.name, name, on_epoch, on_step) if on_epoch or on_step else None
                try:
                    if data_parallel > 1:
                        from . import parallel

                        br.runs[name] = parallel.train(head, init, p, dataset, data_parallel, backend=be.name)
                        for e in range(br.runs[name].epochs):
                            if cb:
                                cb(e, br.runs[name].logs(e))
                    else:
                        br.runs[name] = be.train(head, init, p, dataset, device=dev, callback=cb,
                                                 record_history=name != "sigmoid_random")
                except NonFiniteLoss as exc:  # the run stops; the others go on; a failed check says why
                    br.stopped[name] = exc
    except KeyboardInterrupt:
        res.interrupted = True
    try:
        res.checks = compute_checks(res, dataset)
    except KeyboardInterrupt:  # a second interrupt while checking: the runs are reported, unchecked
        res.interrupted = True
    res.wall_s = time.perf_counter() - t0
    return res


def compute_checks(res: ExperimentResult, dataset: Dataset) -> list[Check]:
    """Every verdict with its measured figure (only over runs that finished)."""
    checks: list[Check] = []
    dtype = res.plan.dtype
    tol = TOLERANCES[dtype]["atol"]
    ptol = PROBA_TOLERANCES[dtype]["atol"]
    d = dataset.n_features
    lrs = {"softmax": res.plan.lr, "sigmoid_converted": res.lr_factor * res.plan.lr,
           "sigmoid_random": res.lr_factor * res.plan.lr}
    largest = None  # the features' largest magnitude, computed once if a run stopped
    for name, br in res.results.items():
        for run, exc in br.stopped.items():
            if largest is None:
                largest = float(np.max(np.abs(dataset.X)))
            checks.append(Check(
                "non_finite", name, float(exc.step if exc.step is not None else -1), 0.0, "never",
                f"{exc} in run {run}; "
                f"likely causes: the features' largest magnitude is {largest:.3g} (pooled CNN features are "
                f"O(1): standardise or rescale them), the learning rate is {lrs[run]:g} (lower it)"))
        be = _registry.get(name)
        # parameter counts as the framework counts them
        if br.params:
            checks.append(Check("params_softmax", name, br.params["softmax"], n_params("softmax", d), "==",
                                "framework's own count = 2(d + 1)"))
            checks.append(Check("params_sigmoid", name, br.params["sigmoid"], n_params("sigmoid", d), "==",
                                "framework's own count = d + 1"))
            checks.append(Check("params_ratio", name, br.params["softmax"] / br.params["sigmoid"], 2.0, "==",
                                "softmax / sigmoid"))
        soft = br.runs.get("softmax")
        if soft is None:
            continue
        # conversion of the trained softmax head
        p_soft = be.predict_proba(soft.weights, dataset.X_val, device=br.device, dtype=dtype)
        p_sig = be.predict_proba(softmax_to_sigmoid(soft.weights), dataset.X_val, device=br.device, dtype=dtype)
        checks.append(Check("conversion_max_abs_dp", name, float(np.max(np.abs(p_soft - p_sig))), ptol, "<=",
                            "trained softmax vs sigmoid with beta = w1 - w0, c = b1 - b0, on the validation set"))
        conv, rand = br.runs.get("sigmoid_converted"), br.runs.get("sigmoid_random")
        if conv is not None:
            c = compare_trajectories(soft, conv)
            gap = c.fields["step_loss"].max_abs
            vgap = c.fields["val_loss"].max_abs
            if res.masks == "shared":
                split = c.divergence.describe() if c.divergence is not None else "no split"
                checks.append(Check("trajectory_gap_step_loss", name, gap, tol, "<=",
                                    f"softmax @ lr vs converted sigmoid @ {res.lr_factor:g} lr, every step; {split}",
                                    divergence=None if c.divergence is None else c.divergence.to_dict()))
                checks.append(Check("trajectory_gap_val_loss", name, vgap, tol, "<=", "per epoch"))
            if rand is not None:
                rc = compare_trajectories(soft, rand)
                rgap = rc.fields["val_loss"].max_abs
                if res.masks == "shared":  # the control, on the quantity the rule is checked on: the step loss
                    checks.append(Check("random_init_gap_step_loss", name, rc.fields["step_loss"].max_abs,
                                        CONTROL_MARGIN * tol, ">",
                                        "negative control: a sigmoid from its own init is a different path"))
                else:
                    checks.append(Check("converted_gap_below_random_gap", name, vgap, rgap, "<=",
                                        "independent masks: softmax vs converted sigmoid val_loss gap must be "
                                        "below the gap to the random-init sigmoid"))
    # cross-framework: each pair of backends, softmax runs, same plan and weights
    # every backend's softmax run uses the same plan masks in both mask modes
    return checks + _cross_framework_checks(res, "softmax runs, same plan, masks and initial weights")


def _cross_framework_checks(res: ExperimentResult, same: str) -> list[Check]:
    """Each pair of backends' softmax runs (same plan and weights, ``same`` says what is shared): within the
    float32 tolerance, or, where the frameworks place the optimizer's epsilon differently, shown for information."""
    checks = []
    names = [n for n, r in res.results.items() if "softmax" in r.runs]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ta, tb = res.results[a].runs["softmax"], res.results[b].runs["softmax"]
            same_eps = _registry.info(a).epsilon_convention == _registry.info(b).epsilon_convention
            gap = compare_trajectories(ta, tb, dtype="float32").fields["step_loss"].max_abs
            if res.plan.optimizer.name != "sgd" and not same_eps:
                detail = ("softmax step_loss; the frameworks place the optimizer's epsilon differently "
                          "(torch vs keras), shown for information")
                checks.append(Check("cross_framework_step_loss_info", f"{a} vs {b}", gap, float("inf"), "<=", detail))
            else:
                checks.append(Check("cross_framework_step_loss", f"{a} vs {b}", gap, TOLERANCES["float32"]["atol"],
                                    "<=", same))
    return checks


# ------------------------------------------------------------------------------------------ networks
def run_network_experiment(dataset: Dataset, plan: Plan, backend_names, network, *, lr_rule: str = "per-layer",
                           device: str = "cpu", on_epoch=None, on_run=None,
                           data_parallel: int = 1) -> ExperimentResult:
    """The seed's three runs on a whole network (body + head), per backend, then the checks.

    ``data_parallel`` > 1 trains each run on that many CPU workers with the
    backend's own engine (:func:`equivtest.parallel.train_network`).

    Every run starts from the same body (the plan's); the softmax network trains at
    ``plan.lr``; both sigmoid networks (converted head, own head) at the rates of
    ``lr_rule``: ``per-layer`` (head x2, body x1: the rule) or ``global`` (the
    seed's x2 everywhere: the negative control once the body trains).
    """
    from .networks import group_rates

    t0 = time.perf_counter()
    res = ExperimentResult(plan, {"source": dataset.source, "shape": list(dataset.X.shape),
                                  "n_train": int(len(dataset.y_train)), "n_val": int(len(dataset.y_val)),
                                  "description": dataset.description}, "shared")
    res.body, res.lr_rule = network.body, lr_rule
    res.data_parallel = int(data_parallel)
    wd = plan.optimizer.weight_decay
    body_init = plan.body_weights(network)
    w = plan.initial_weights("softmax", network.width)
    # the random-init control is a whole network from its own init (body and head), as the seed's was a head
    specs = [("softmax", "softmax", body_init, w, group_rates(plan.lr, wd, "softmax")),
             ("sigmoid_converted", "sigmoid", body_init, softmax_to_sigmoid(w),
              group_rates(plan.lr, wd, "sigmoid", lr_rule)),
             ("sigmoid_random", "sigmoid", plan.body_weights(network, stream=1),
              plan.initial_weights("sigmoid", network.width, stream=1), group_rates(plan.lr, wd, "sigmoid", lr_rule))]
    res.lr_factor = specs[1][4].head_lr / plan.lr
    try:
        for be in _registry.load(backend_names):
            dev = be.resolve_device(_registry.device_for(be.name, device))
            br = res.results[be.name] = BackendResult(be.name, dev, be.environment())
            br.params = {"softmax": be.count_network_params(network, "softmax"),
                         "sigmoid": be.count_network_params(network, "sigmoid")}
            for name, head, body, init, rates in specs:
                if on_run:
                    on_run(be.name, name)
                try:
                    if data_parallel > 1:
                        from . import parallel

                        traj = parallel.train_network(network, head, body, init, plan, dataset, rates,
                                                      data_parallel, backend=be.name)
                    else:
                        traj = be.train_network(network, head, body, init, plan, dataset, rates=rates, device=dev)
                except NonFiniteLoss as exc:
                    br.stopped[name] = exc
                    continue
                br.runs[name] = traj
                for e in range(traj.epochs):
                    if on_epoch:
                        on_epoch(be.name, name, e, traj.logs(e))
    except KeyboardInterrupt:
        res.interrupted = True
    try:
        res.checks = compute_network_checks(res, dataset, network)
    except KeyboardInterrupt:
        res.interrupted = True
    res.wall_s = time.perf_counter() - t0
    return res


def compute_network_checks(res: ExperimentResult, dataset: Dataset, network) -> list[Check]:
    """The network's verdicts: parameter counts (the head halves, the body is shared), conversion of the
    trained network, the trajectory under the rule, the random-init control, cross-framework."""
    from .backends.numpy.network import forward
    from .heads import predict_proba

    checks: list[Check] = []
    tol = TOLERANCES[res.plan.dtype]["atol"]
    w = network.width
    rule = f"{res.lr_rule} rule (sigmoid network: body x{res.lr_factor if res.lr_rule == 'global' else 1:g}, " \
           f"head x{res.lr_factor:g})"
    for name, br in res.results.items():
        for run, exc in br.stopped.items():
            checks.append(Check("non_finite", name, float(exc.step if exc.step is not None else -1), 0.0, "never",
                                f"{exc} in run {run}"))
        if br.params:
            body = network.n_body_params()
            checks.append(Check("params_softmax", name, br.params["softmax"], body + 2 * (w + 1), "==",
                                f"framework's own count = body {body} + 2(w + 1), w = {w}"))
            checks.append(Check("params_sigmoid", name, br.params["sigmoid"], body + w + 1, "==",
                                "framework's own count = body + (w + 1)"))
            checks.append(Check("params_difference", name, br.params["softmax"] - br.params["sigmoid"], w + 1, "==",
                                "the head halves, the body is shared: the networks differ by w + 1"))
        soft = br.runs.get("softmax")
        if soft is None:
            continue
        h, _ = forward(network, [list(p) for p in soft.body], dataset.X_val.astype(np.float64),
                       [None] * len(network.dropout_widths))
        w64 = soft.weights.astype(np.float64)
        dp = np.abs(predict_proba(w64, h) - predict_proba(softmax_to_sigmoid(w64), h))
        checks.append(Check("conversion_max_abs_dp", name, float(np.max(dp)), PROBA_TOLERANCES["float64"]["atol"],
                            "<=", "trained softmax network vs its body with the converted head (float64)"))
        conv, rand = br.runs.get("sigmoid_converted"), br.runs.get("sigmoid_random")
        if conv is not None:
            c = compare_trajectories(soft, conv)
            split = c.divergence.describe() if c.divergence is not None else "no split"
            checks.append(Check("trajectory_gap_step_loss", name, c.fields["step_loss"].max_abs, tol, "<=",
                                f"softmax network vs converted sigmoid network under the {rule}; {split}"))
            checks.append(Check("trajectory_gap_val_loss", name, c.fields["val_loss"].max_abs, tol, "<=", "per epoch"))
            if rand is not None:
                rgap = compare_trajectories(soft, rand).fields["step_loss"].max_abs
                checks.append(Check("random_init_gap_step_loss", name, rgap, CONTROL_MARGIN * tol, ">",
                                    "negative control: a sigmoid network from its own init (body and head) is a "
                                    "different path"))
    return checks + _cross_framework_checks(res, "softmax networks, same plan, masks, body and head init")
