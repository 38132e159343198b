"""From a TrainConfig to the problem (target, data) and the method (model, trainer, schedule)."""

import contextlib
import dataclasses
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .. import presets
from .._consistency import (
    ConsistencyFunction,
    EDMScalings,
    StagedConsistencyModel,
    TrigFlowScalings,
)
from .._custom_types import Data
from .._flow_maps import AbstractFlowMap, FlowMap
from .._nets import ConvNet, MLP
from .._nets.two_time import TwoTimeMLP
from .._schedules import AbstractSchedule, DiscreteVP, LinearInterpolant, TrigFlow, VarianceExploding
from .._split import holdout_split
from .._targets import AbstractTarget, Empirical, GaussianMixture
from ..training import (
    AbstractTrainer,
    cd,
    ConsistencyTrainer,
    ConstantCurriculum,
    ContinuousConsistencyTrainer,
    ct,
    diffusion_pretraining,
    ect,
    EMATeacher,
    ExactVelocity,
    FlowMapDistillationTrainer,
    ict,
    Independent,
    MeanFlowTrainer,
    MinibatchOT,
    OneSample,
    PretrainThenTune,
    ReferenceBatch,
    staged_shared,
    StagedConsistencyTraining,
)
from ._config import DEFAULT_STEPS, FLOW_MAP_METHODS, FlowMapConfig, NO_TEACHER_METHODS, TrainConfig


class ConfigError(ValueError):
    """An option (or a file it names) is not usable; the message names the option and the fix."""


@dataclasses.dataclass
class Problem:
    name: str
    target: AbstractTarget
    data: Data  # what fit() samples from: the target itself or an (N, d) array
    sigma_data: float
    image_shape: tuple[int, int, int] | None = None
    # A data set's held-out split: the points training never sees, and the indices of both parts.
    heldout: np.ndarray | None = None
    split: tuple[np.ndarray, np.ndarray] | None = None
    features: str | None = None  # "digits": the feature network of ctjax.metrics applies

    @property
    def dim(self) -> int:
        return self.target.dim


def _load_points(path: pathlib.Path) -> np.ndarray:
    if not path.exists():
        raise ConfigError(f"--data {path}: no such file.")
    try:
        points = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ConfigError(f"--data {path}: not a readable .npy array ({err}).") from err
    if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] < 1:
        raise ConfigError(f"--data {path}: expected an (n, d) array with n >= 2, got shape {points.shape}.")
    if np.iscomplexobj(points):
        raise ConfigError(
            f"--data {path}: the array is complex ({points.dtype}); the points must be real: save the real and "
            "imaginary parts as separate coordinates, np.concatenate([x.real, x.imag], axis=1)."
        )
    if not np.issubdtype(points.dtype, np.number) or not np.all(np.isfinite(points)):
        raise ConfigError(f"--data {path}: the array must be finite real numbers.")
    return points.astype(np.float64)


def _load_mixture(path: pathlib.Path) -> GaussianMixture:
    if not path.exists():
        raise ConfigError(f"--target {path}: no such file.")
    names = ("weights", "means", "covs")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in names if k not in f.files]
            if missing:
                raise ConfigError(
                    f"--target {path}: missing array(s) {missing}; need weights (K,), means (K, d), covs (K, d, d)."
                )
            arrays = {k: np.asarray(f[k]) for k in names}
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"--target {path}: not a readable .npz file ({err}).") from err
    for k, a in arrays.items():
        if np.iscomplexobj(a):
            raise ConfigError(
                f"--target {path}: `{k}` is complex ({a.dtype}); weights, means and covs must be real arrays."
            )
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ConfigError(f"--target {path}: `{k}` must be an array of real numbers, got dtype {a.dtype}.")
    weights, means, covs = (arrays[k].astype(np.float64) for k in names)
    try:
        return GaussianMixture(jnp.asarray(weights), jnp.asarray(means), jnp.asarray(covs))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--target {path}: {err}") from err


def training_dtype(cfg: TrainConfig) -> np.dtype:
    """The floating dtype training runs in: float64 with --x64 (or x64 already enabled), else float32."""
    return np.dtype(np.float64 if cfg.x64 or jax.config.read("jax_enable_x64") else np.float32)


def scale_limits(dtype) -> tuple[float, float]:
    r"""(smallest, largest) data scale that training in `dtype` can represent.

    The losses are squares of differences at the data's scale, and their gradients are squared
    again (Adam's second moment, the gradient norm): fourth powers of the data's largest magnitude
    must stay finite, so it must stay below $\text{max}^{1/4}$ (4.3e9 in float32, 1.2e77 in
    float64). The scalings divide by $\sigma_d^2$ (EDM's $c_\text{skip}$, TrigFlow's
    $\sigma_d$-scaled noise), so $\sigma_d^2$ must be a normal number: $\sigma_d > \text{tiny}^{1/2}$
    (1.1e-19 in float32, 1.5e-154 in float64). Measured on 2-D data in float32 (40 steps of
    cd, ct, ict, ect, sct and scd): training diverged at magnitudes 1e10 (ct) and 1e11 (cd) of data
    offset from 0, at 1e17 of data spread about 0 (scd), and at $\sigma_d$ = 1e-19 (scd); nothing
    diverged at magnitudes up to 6e9 or at $\sigma_d$ = 1e-18."""
    info = np.finfo(dtype)
    return float(np.sqrt(info.smallest_normal)), float(info.max) ** 0.25


def _check_scale(cfg: TrainConfig, option: str, magnitude: float, sigma: float) -> None:
    """Reject data whose scale training in float32 (float64 with --x64) cannot represent."""
    dtype = training_dtype(cfg)
    low, high = scale_limits(dtype)
    low64, high64 = scale_limits(np.float64)
    if sigma == 0:
        raise ConfigError(
            f"{option}: the points have zero variance (every point is the same), so there is nothing to learn "
            "and no data scale sigma_data for the scalings; pass points that vary."
        )
    x64 = " or pass --x64 to train in float64" if dtype != np.float64 and low64 < magnitude < high64 else ""
    if magnitude > high:
        raise ConfigError(
            f"{option}: the data's largest magnitude is {magnitude:.3g} (sigma_data {sigma:.3g}): too large for "
            f"{dtype} training, whose squared losses and squared gradients overflow above {high:.2g} "
            f"(max {dtype} {float(np.finfo(dtype).max):.3g}); rescale the data (e.g. divide it by {magnitude:.1g}){x64}."
        )
    if sigma < low:
        x64 = " or pass --x64 to train in float64" if dtype != np.float64 and sigma > low64 else ""
        raise ConfigError(
            f"{option}: the data's scale sigma_data is {sigma:.3g}: too small for {dtype} training, whose scalings "
            f"divide by sigma_data^2 and underflow below {low:.2g}; rescale the data (e.g. multiply it by "
            f"{1 / sigma:.1g}){x64}."
        )


def _split_data(
    cfg: TrainConfig, points: np.ndarray, option: str, split: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """(train points, held-out points or None, (train, held-out) indices or None): the saved `split`
    of a run, else `--holdout` of the points by `--split-seed`."""
    if split is None:
        if cfg.holdout == 0:
            return points, None, None
        try:
            split = holdout_split(points.shape[0], cfg.holdout, seed=cfg.split_seed)
        except ValueError as err:
            raise ConfigError(f"--holdout {cfg.holdout} / --split-seed {cfg.split_seed} of {option}: {err}") from err
    train, heldout = split
    if max(train.max(initial=-1), heldout.max(initial=-1)) >= points.shape[0]:
        raise ConfigError(
            f"the run's saved split (split.npz) indexes {max(train.max(), heldout.max()) + 1} or more points, but "
            f"{option} has {points.shape[0]}: the data changed since the run was trained; restore the data file."
        )
    return points[train], points[heldout] if heldout.size else None, (train, heldout)


def build_problem(cfg: TrainConfig, split: tuple[np.ndarray, np.ndarray] | None = None) -> Problem:
    """The problem `cfg` names; for a data set (--data, the digits preset) the train split is the
    target and the data, with `split` (a run's saved indices) or --holdout's split."""
    if cfg.data is not None and cfg.target is not None:
        raise ConfigError("Pass --data or --target, not both.")
    if cfg.data is not None:
        points = _load_points(cfg.data)
        sigma = float(np.sqrt(np.mean(np.var(points, axis=0))))
        _check_scale(cfg, f"--data {cfg.data}", float(np.max(np.abs(points))), sigma)
        points, heldout, split = _split_data(cfg, points, f"--data {cfg.data}", split)
        sigma = float(np.sqrt(np.mean(np.var(points, axis=0))))
        target = Empirical(jnp.asarray(points))
        return Problem(cfg.data.stem, target, jnp.asarray(points), sigma, heldout=heldout, split=split)
    if cfg.target is not None:
        target = _load_mixture(cfg.target)
        # The scale in float64 (float32 squares of a far mixture overflow): the largest magnitude of
        # the mixture's bulk (its farthest mean plus its widest spread), and sigma_data.
        w, means, eigvals = (np.asarray(a, np.float64) for a in (target.weights, target.means, target.eigvals))
        centred = means - w @ means
        sigma64 = float(np.sqrt(w @ (np.sum(eigvals, axis=1) + np.sum(centred**2, axis=1)) / target.dim))
        magnitude = float(np.max(np.abs(means)) + np.sqrt(np.max(eigvals)))
        _check_scale(cfg, f"--target {cfg.target}", magnitude, sigma64)
        sigma = float(jnp.sqrt(jnp.trace(target.covariance()) / target.dim))
        return Problem(cfg.target.stem, target, target, sigma)
    if cfg.preset == "gmm2d":
        target = presets.gmm2d()
    elif cfg.preset == "gaussian":
        if cfg.dim < 1:
            raise ConfigError(f"--dim must be at least 1, got {cfg.dim}.")
        target = presets.gaussian(cfg.dim)
    elif cfg.preset == "digits":
        points, heldout, split = _split_data(cfg, presets.digits_points(), "--preset digits", split)
        target = Empirical(jnp.asarray(points))
        sigma = float(jnp.sqrt(jnp.trace(target.covariance()) / target.dim))
        return Problem(
            "digits",
            target,
            target.points,
            sigma,
            image_shape=(1, 8, 8),
            heldout=heldout,
            split=split,
            features="digits",
        )
    else:  # tyro validates the Literal; direct API callers get a clear message too
        raise ConfigError(f"Unknown --preset {cfg.preset!r}; choose gmm2d, gaussian or digits.")
    sigma = float(jnp.sqrt(jnp.trace(target.covariance()) / target.dim))
    return Problem(cfg.preset, target, target, sigma)


def _optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    o = cfg.optim
    if not o.lr > 0:
        raise ConfigError(f"--optim.lr must be positive, got {o.lr}.")
    warmup = min(o.warmup, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, warmup, max(total_steps, warmup + 1), o.lr * o.final_lr_fraction
    )
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip is not None else []
    return optax.chain(*parts, optax.adam(schedule))


def default_width(cfg: TrainConfig) -> int:
    """`--model.width`, or its default: MLP width 128 on every preset (benchmarks/cli_defaults.py:
    on digits it beat 512 in both W1 columns), 32 ConvNet channels (at 128 channels a digits step
    took 1.8 s on 2 cores; 32 is the width measured there)."""
    if cfg.model.width is not None:
        return cfg.model.width
    return 32 if cfg.model.architecture == "conv" else 128


def is_data_set(cfg: TrainConfig) -> bool:
    """Whether `cfg` trains on a data set (--data, the digits preset) rather than an analytic target."""
    return cfg.target is None and (cfg.data is not None or cfg.preset == "digits")


def resolve_method(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with `--method`'s default filled in (sct for a data set, scd for an analytic target), and
    then `--steps`'s (the method's `DEFAULT_STEPS`)."""
    if cfg.method is None:
        cfg = dataclasses.replace(cfg, method="sct" if is_data_set(cfg) else "scd")
    if cfg.steps is None:
        cfg = dataclasses.replace(cfg, steps=DEFAULT_STEPS.get(cfg.method or "", 8000))
    return cfg


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the architecture-dependent defaults filled in (what the run's saved config records).
    The staged methods with one network per stage use `--staged.width`: their `--model.width` stays unset.
    A no-teacher method's velocity estimate, reference pool and coupling are filled in with the measured
    best, so that a resumed run keeps them when the defaults change."""
    cfg = resolve_method(cfg)
    if cfg.method in NO_TEACHER_METHODS:
        estimate, pool, coupling = _no_teacher_choices(cfg)
        pool = pool if estimate == "reference-batch" else cfg.reference_pool
        cfg = dataclasses.replace(cfg, velocity_estimate=estimate, reference_pool=pool, coupling=coupling)
    if cfg.method in ("staged", "staged-simultaneous"):
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=default_width(cfg)))


def _network(cfg: TrainConfig, problem: Problem, key, width: int | None = None, depth: int | None = None):
    m = cfg.model
    embedding = m.embedding
    if embedding == "auto":  # sCM's tangents need dF/dt: no high-frequency Fourier features of t
        embedding = "sinusoidal" if cfg.method in ("sct", "scd") else "fourier"
    width = width or default_width(cfg)
    if m.architecture == "conv":
        if problem.image_shape is None:
            raise ConfigError("--model.architecture conv needs image data (the digits preset).")
        return ConvNet(problem.image_shape, channels=width, dropout=m.dropout, embedding=embedding, key=key)
    return MLP(
        problem.dim,
        width=width,
        depth=m.depth if depth is None else depth,
        embedding=embedding,
        dropout=m.dropout,
        key=key,
    )


def li_schedule(cfg: TrainConfig) -> DiscreteVP:
    s = cfg.staged
    try:
        return DiscreteVP.li_huang_wei(s.num_stages, s.c0, s.c1)
    except ValueError as err:
        raise ConfigError(f"--staged.num-stages/c0/c1: {err}") from err


# The measured best velocity estimate and coupling per no-teacher method on gmm2d (benchmarks/ct_quality.py,
# docs/ct-quality.md): (velocity estimate, reference pool, coupling). OT was worse than independent noise
# wherever it was measured. The staged stages are small networks whose step a pool would dominate, so
# they use the minibatch alone (measured for sequential staging: 2.11x against 2.50x one-sample at 12k
# steps); simultaneous and shared staging were not measured and follow the nearest measured relative.
MEASURED_BEST = {
    "ct": ("reference-batch", 4096, "independent"),
    "ict": ("reference-batch", 4096, "independent"),
    "ect": ("reference-batch", 4096, "independent"),
    "sct": ("reference-batch", 4096, "independent"),
    "staged": ("reference-batch", 0, "independent"),
    "staged-simultaneous": ("reference-batch", 0, "independent"),
    "staged-shared": ("reference-batch", 4096, "independent"),
    # MeanFlow's conditional velocity: 3.9x the floor at 1 step against 2.35x for the reference batch (3000
    # steps); the flow-map self-distillation follows it (its diagonal is flow matching on the same velocity).
    "meanflow": ("reference-batch", 4096, "independent"),
    "flow-map-lsd": ("reference-batch", 4096, "independent"),
    "flow-map-esd": ("reference-batch", 4096, "independent"),
}


# On a data set (--data, digits) the measured best by FD to the held-out digits (benchmarks/digits_quality.py,
# docs/digits.md: the lower sum of the 1-step and 2-step FD over their floor). There the reference batch
# approaches the exact posterior of the training set, the memorising flow; the papers' one-sample velocity
# did better for ct, ict and sct, the reference batch for ect and staged-shared.
MEASURED_BEST_DATA = {
    "ct": ("one-sample", None, "independent"),
    "ict": ("one-sample", None, "independent"),
    "ect": ("reference-batch", 4096, "independent"),
    "sct": ("one-sample", None, "independent"),
    "staged": ("reference-batch", 0, "independent"),
    "staged-simultaneous": ("reference-batch", 0, "independent"),
    "staged-shared": ("reference-batch", 4096, "independent"),
    # Not measured on digits: the one-sample velocity, the generalising choice measured for sct there.
    "meanflow": ("one-sample", None, "independent"),
    "flow-map-lsd": ("one-sample", None, "independent"),
    "flow-map-esd": ("one-sample", None, "independent"),
}


def _no_teacher_choices(cfg: TrainConfig) -> tuple[str, int | None, str]:
    """(velocity estimate, reference pool, coupling): the flags given, the measured best for the rest."""
    method = resolve_method(cfg).method
    assert method is not None
    table = MEASURED_BEST_DATA if is_data_set(cfg) else MEASURED_BEST
    best_estimate, best_pool, best_coupling = table[method]
    pool = cfg.reference_pool if cfg.reference_pool is not None else best_pool
    return cfg.velocity_estimate or best_estimate, pool, cfg.coupling or best_coupling


def no_teacher_options(cfg: TrainConfig, problem: Problem) -> dict:
    """The `velocity_estimate` and `coupling` keyword arguments for a no-teacher method (a ConfigError
    for a method with a teacher given either flag)."""
    given = [
        flag
        for flag, value in (
            ("--velocity-estimate", cfg.velocity_estimate),
            ("--reference-pool", cfg.reference_pool),
            ("--coupling", cfg.coupling),
        )
        if value is not None
    ]
    if cfg.method not in NO_TEACHER_METHODS:
        if given:
            raise ConfigError(
                f"{given[0]} applies to training without a teacher ({', '.join(NO_TEACHER_METHODS)}); "
                f"--method {cfg.method} distils from the exact flow."
            )
        return {}
    estimate, pool, coupling = _no_teacher_choices(cfg)
    if estimate == "one-sample" and cfg.reference_pool is not None:
        raise ConfigError("--reference-pool applies to --velocity-estimate reference-batch, not one-sample.")
    if estimate == "one-sample":
        velocity_estimate = OneSample()
    else:
        pool = pool or 0
        if pool < 0:
            raise ConfigError(f"--reference-pool must be >= 0 (0: the minibatch alone), got {pool}.")
        velocity_estimate = ReferenceBatch(pool, data=problem.data if pool else None)
    return {"velocity_estimate": velocity_estimate, "coupling": MinibatchOT() if coupling == "ot" else Independent()}


def build_method(cfg: TrainConfig, problem: Problem) -> tuple[AbstractTrainer, Any, int]:
    """(trainer, initial model: a consistency model, or a flow map for `FLOW_MAP_METHODS`, number of steps)."""
    cfg = resolve_method(cfg)
    options = no_teacher_options(cfg, problem)
    assert cfg.steps is not None
    if cfg.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {cfg.steps}.")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {cfg.batch_size}.")
    sigma_data = cfg.model.sigma_data or problem.sigma_data
    low, high = scale_limits(training_dtype(cfg))
    if cfg.model.sigma_data is not None and not low <= abs(cfg.model.sigma_data) <= high:
        raise ConfigError(
            f"--model.sigma-data {cfg.model.sigma_data:g}: {training_dtype(cfg)} training needs a data scale between "
            f"{low:.2g} and {high:.2g} (squares and fourth powers of it must be finite normal numbers); "
            "rescale the data and --model.sigma-data with it."
        )
    scalings = EDMScalings(sigma_data)
    key = jr.key(cfg.seed)
    steps = cfg.steps
    optimizer = _optimizer(cfg, steps)
    ve = VarianceExploding(0.002, 80.0)
    method = cfg.method
    if method in ("cd", "ct", "ict"):
        model = ConsistencyFunction(_network(cfg, problem, key), ve, scalings)
        if method == "cd":
            c = cfg.cd
            trainer = cd(
                optimizer, ExactVelocity(problem.target, ve), num_scales=c.num_scales, mu=c.mu, method=c.solver
            )
        elif method == "ct":
            c = cfg.ct
            if c.curriculum == "sqrt":
                trainer = ct(optimizer, steps, s0=c.s0, s1=c.s1, mu0=c.mu0, **options)
            else:
                trainer = ConsistencyTrainer(
                    optimizer, ConstantCurriculum(c.num_scales), teacher=EMATeacher(c.mu), **options
                )
        else:
            c = cfg.ict
            trainer = ict(
                optimizer, steps, s0=c.s0, s1=c.s1, p_mean=c.p_mean, p_std=c.p_std, huber_c=c.huber_c, **options
            )
        return trainer, model, steps
    if method in ("sct", "scd"):
        c = cfg.scm
        trig = TrigFlow(sigma_data)
        model = ConsistencyFunction(_network(cfg, problem, key), trig, TrigFlowScalings(sigma_data, c.time_scale))
        velocity = ExactVelocity(problem.target, trig) if method == "scd" else None  # as for cd
        # Invalid options raise the library's ValueError; `options_named` turns it into a ConfigError.
        trainer = ContinuousConsistencyTrainer(
            optimizer,
            velocity,
            warmup_steps=c.warmup_steps,
            tangent_normalisation=c.tangent_normalisation,
            normalisation_const=c.normalisation_const,
            adaptive_weighting=c.adaptive_weighting,
            p_mean=c.p_mean,
            p_std=c.p_std,
            **options,
        )
        return trainer, model, steps
    if method == "ect":
        c = cfg.ect
        model = ConsistencyFunction(_network(cfg, problem, key), ve, scalings)
        trainer = ect(
            optimizer,
            steps,
            num_stages=c.num_stages,
            q=c.q,
            k=c.k,
            b=c.b,
            huber_c=c.huber_c,
            p_mean=c.p_mean,
            p_std=c.p_std,
            stage_offset=c.stage_offset,
            **options,
        )
        if c.pretrain_steps:
            # EDM's EMA rate 0.999 even for short pre-training: on gmm2d, an EMA over the last tenth
            # of pre-training (rate 1 - 10 / pretrain_steps) handed ECT a worse start (W1 of the
            # tuned model 2.37x/1.54x the floor against 2.00x/1.40x, 2000 + 6000 steps).
            pretrain = diffusion_pretraining(_optimizer(cfg, c.pretrain_steps), ve)
            return PretrainThenTune(pretrain, trainer, c.pretrain_steps), model, c.pretrain_steps + steps
        return trainer, model, steps
    if method in FLOW_MAP_METHODS:
        return _flow_map_method(cfg, problem, optimizer, options), _flow_map(cfg, problem, sigma_data, key), steps
    li = li_schedule(cfg)
    if method == "staged-shared":
        model = ConsistencyFunction(_network(cfg, problem, key), li, scalings)
        return staged_shared(optimizer, li.stage_times(), ema_rate=0.999, **options), model, steps
    mode = "sequential" if method == "staged" else "simultaneous"
    model = StagedConsistencyModel.init(
        lambda k: _network(cfg, problem, k, width=cfg.staged.width, depth=cfg.staged.depth),
        li,
        scalings=scalings,
        key=key,
    )
    if mode == "sequential":
        per_stage = max(1, steps // (li.num_steps - 1))
        lr = optax.exponential_decay(cfg.optim.lr, per_stage, 0.05)
        parts = [optax.clip_by_global_norm(cfg.optim.grad_clip)] if cfg.optim.grad_clip is not None else []
        trainer = StagedConsistencyTraining(
            optax.chain(*parts, optax.adam(lr)), mode, steps_per_stage=per_stage, **options
        )
        return trainer, model, per_stage * (li.num_steps - 1)
    return StagedConsistencyTraining(optimizer, mode, steps_per_stage=steps, **options), model, steps


def _flow_map(cfg: TrainConfig, problem: Problem, sigma_data: float, key) -> FlowMap:
    if cfg.model.architecture == "conv":
        raise ConfigError(
            f"--method {cfg.method} learns a two-time flow map with an MLP; use --model.architecture mlp."
        )
    embedding = "sinusoidal" if cfg.model.embedding == "auto" else cfg.model.embedding  # trained through d/dt
    net = TwoTimeMLP(
        problem.dim, default_width(cfg), cfg.model.depth, embedding=embedding, dropout=cfg.model.dropout, key=key
    )
    return FlowMap(net, LinearInterpolant(), sigma_data, cfg.flowmap.time_scale)


# The --flowmap options that each flow-map method does not use (given one of them, the run stops).
_UNUSED_FLOW_MAP_OPTIONS = {
    "meanflow": ("mode", "distillation_weight"),
    "flow-map-lsd": ("mode", "ratio"),
    "flow-map-esd": ("mode", "ratio"),
    "flow-map-distill": ("ratio",),
}


def _flow_map_method(cfg: TrainConfig, problem: Problem, optimizer, options: dict):
    """The trainer of a flow-map method, on MeanFlow's linear interpolant."""
    c = cfg.flowmap
    defaults = FlowMapConfig()
    for name in _UNUSED_FLOW_MAP_OPTIONS[cfg.method or ""]:
        if getattr(c, name) != getattr(defaults, name):
            raise ConfigError(f"--flowmap.{name.replace('_', '-')} does not apply to --method {cfg.method}.")
    common: dict[str, Any] = dict(
        p_mean=c.p_mean, p_std=c.p_std, weighting_power=c.weighting_power, weighting_eps=c.weighting_eps
    )
    if cfg.method == "meanflow":
        return MeanFlowTrainer(optimizer, None, ratio=c.ratio, **common, **options)
    if cfg.method == "flow-map-distill":
        teacher = ExactVelocity(problem.target, LinearInterpolant())
        return FlowMapDistillationTrainer(
            optimizer, c.mode, teacher, distillation_weight=c.distillation_weight, **common
        )
    mode = "lagrangian" if cfg.method == "flow-map-lsd" else "eulerian"
    return FlowMapDistillationTrainer(
        optimizer, mode, None, distillation_weight=c.distillation_weight, **common, **options
    )


def build_mesh(devices: int, batch_size: int):
    """A one-axis ("data") mesh over the first `devices` of `jax.devices()`, or None for 0."""
    if devices < 0:
        raise ConfigError(f"--devices must be 0 (the default device) or a positive count, got {devices}.")
    if devices == 0:
        return None
    available = jax.devices()
    if devices > len(available):
        raise ConfigError(
            f"--devices {devices}: only {len(available)} {available[0].platform} device(s) available; "
            f"pass --devices {len(available)} or fewer (for CPU testing, set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices})."
        )
    if batch_size % devices:
        raise ConfigError(
            f"--batch-size {batch_size} must be divisible by --devices {devices}; "
            f"try --batch-size {devices * max(1, round(batch_size / devices))}."
        )
    auto = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((devices,), ("data",), axis_types=auto, devices=available[:devices])


def _options_in(cfg: TrainConfig, message: str) -> list[str]:
    """The command-line options whose field names a library error message mentions, searching the
    section of the configured method first, then --model and --optim (backticked names also at the top)."""
    words = set(re.findall(r"[A-Za-z_]\w*", message))
    quoted = set(re.findall(r"`(\w+)`", message))
    method = resolve_method(cfg).method or "scd"
    section = (
        "flowmap" if method in FLOW_MAP_METHODS else {"sct": "scm", "scd": "scm"}.get(method, method.split("-")[0])
    )
    found = []
    for name in (section, "model", "optim"):
        sub = getattr(cfg, name, None)
        if dataclasses.is_dataclass(sub):
            found += [f"--{name}.{f.name.replace('_', '-')}" for f in dataclasses.fields(sub) if f.name in words]
    if not found:
        found = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cfg) if f.name in quoted]
    return found


@contextlib.contextmanager
def options_named(cfg: TrainConfig):
    """Re-raise a ValueError or TypeError of the library, raised while building from `cfg`, as a
    ConfigError that names the option (the library's message names the argument)."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        options = _options_in(cfg, str(err))
        where = "/".join(options) if options else "invalid configuration"
        raise ConfigError(f"{where}: {err}") from err


def sampling_times(schedule: AbstractSchedule, steps: int, sigma_data: float, *, flow_map: bool = False) -> jnp.ndarray:
    """Times for `steps`-step sampling: t_max, then noise levels 0.6 sigma_d, 0.3 sigma_d, ...
    (for a staged model the nearest stage times). The first intermediate level was chosen by
    measurement on gmm2d (docs/benchmarks.md): 0.6 sigma_d beat 2 sigma_d and 0.2 sigma_d.
    A flow map (`flow_map=True`) jumps along the uniform grid t_max, ..., t_min instead: its chain
    has no re-noising, and MeanFlow samples on that grid."""
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}.")
    if flow_map:
        return jnp.linspace(float(schedule.t_max), float(schedule.t_min), steps + 1)[:-1]
    levels = [0.6 * sigma_data * 0.5**j for j in range(steps - 1)]
    times = [float(schedule.t_max)] + [float(schedule.time_at_noise(n)) for n in levels]
    if isinstance(schedule, DiscreteVP):
        times = [float(np.clip(np.round(t), 2, schedule.num_steps)) for t in times]
        times = sorted(set(times), reverse=True)
    return jnp.asarray(times)


def model_sampling_times(model, steps: int, sigma_data: float) -> jnp.ndarray:
    """`sampling_times` for `model`: the uniform grid for a flow map, the re-noising levels otherwise."""
    return sampling_times(model.schedule, steps, sigma_data, flow_map=isinstance(model, AbstractFlowMap))
