"""Typed configurations of the command line (parsed by tyro; saved with every run as JSON)."""

import dataclasses
import pathlib
from typing import Literal

import tyro


Preset = Literal["gmm2d", "gaussian", "digits"]
Method = Literal[
    "cd",
    "ct",
    "ict",
    "staged",
    "staged-simultaneous",
    "staged-shared",
    "sct",
    "scd",
    "ect",
    "meanflow",
    "flow-map-lsd",
    "flow-map-esd",
    "flow-map-distill",
]
DEFAULT_STEPS = {"meanflow": 40_000, "flow-map-lsd": 20_000, "flow-map-esd": 20_000, "flow-map-distill": 20_000}
"""Training steps by method where --steps is not given (8000 for the methods not named)."""
FLOW_MAP_METHODS = ("meanflow", "flow-map-lsd", "flow-map-esd", "flow-map-distill")
"""The methods that learn a two-time flow map X(s, t, x) rather than a consistency function."""
NO_TEACHER_METHODS = (
    "ct",
    "ict",
    "ect",
    "sct",
    "staged",
    "staged-simultaneous",
    "staged-shared",
    "meanflow",
    "flow-map-lsd",
    "flow-map-esd",
)
"""The methods that train without a teacher (they take --velocity-estimate and --coupling)."""


@dataclasses.dataclass
class ModelConfig:
    """The network F of the consistency function."""

    width: int | None = None
    """Hidden width (MLP) or base channels (ConvNet). None: 128 for the MLP (benchmarks/cli_defaults.py:
    on digits, width 128 gave a lower W1 than 512 in a third of the time), 32 channels for the ConvNet."""
    depth: int = 3
    """Residual blocks of the MLP."""
    dropout: float = 0.0
    embedding: Literal["auto", "fourier", "sinusoidal"] = "auto"
    """Time embedding; auto: sinusoidal (smooth in t, as sCM needs) for sct/scd, fourier otherwise."""
    sigma_data: float | None = None
    """Data standard deviation for the scalings; None: estimated from the target."""
    architecture: Literal["mlp", "conv"] = "mlp"
    """The residual MLP, or a small U-Net (ConvNet) for image data (the digits preset). On 2 CPU cores
    the MLP is the better default on digits too: lower W1 in less time (docs/benchmarks.md)."""


@dataclasses.dataclass
class OptimConfig:
    """Adam with linear warm-up and cosine decay."""

    lr: float = 1e-3
    warmup: int = 200
    final_lr_fraction: float = 0.01
    grad_clip: float | None = None
    """Clip the global gradient norm (None: no clipping)."""


@dataclasses.dataclass
class CTConfig:
    """Song et al.'s consistency training."""

    curriculum: Literal["sqrt", "constant"] = "constant"
    """constant (the measured best): distillation's recipe with the teacher taken away, a fixed grid of
    --ct.num-scales points and an EMA teacher of rate --ct.mu; with the default reference-batch velocity
    it matched CD with the exact teacher on gmm2d (1-step W1 0.96x the floor, 12 000 steps;
    docs/ct-quality.md). sqrt: the paper's N(k) from s0 to s1 + 1 with the adaptive EMA teacher (mu0),
    18x the floor at 3000 steps where constant reached 2.7x."""
    s0: int = 10
    s1: int = 150
    mu0: float = 0.95
    num_scales: int = 40
    mu: float = 0.95


@dataclasses.dataclass
class ICTConfig:
    """Song and Dhariwal's improved consistency training."""

    s0: int = 10
    s1: int = 640
    p_mean: float = 1.0
    """iCT's -1.1 is tuned for images in [-1, 1]; 1.0 trains the one-step end (measured on gmm2d)."""
    p_std: float = 2.0
    huber_c: float | None = None
    """Pseudo-Huber c; None: 0.00054 sqrt(d)."""


@dataclasses.dataclass
class CDConfig:
    """Consistency distillation from the exact probability flow of the target."""

    num_scales: int = 40
    mu: float = 0.95
    solver: Literal["euler", "heun"] = "heun"


@dataclasses.dataclass
class StagedConfig:
    """Li, Huang and Wei's staged training on their discrete VP schedule."""

    num_stages: int = 128
    c0: float = 2.0
    c1: float = 4.0
    width: int = 64
    """Hidden width of each stage's MLP (sequential and simultaneous modes)."""
    depth: int = 2


@dataclasses.dataclass
class SCMConfig:
    """Lu and Song's continuous-time consistency models on TrigFlow (sct: training; scd: distillation
    from the exact probability-flow velocity of the target)."""

    warmup_steps: int = 1000
    """Tangent warm-up: steps over which r rises from 0 to 1 (sCM: 10 000)."""
    tangent_normalisation: Literal["normalise", "clip", "none"] = "normalise"
    normalisation_const: float = 0.1
    adaptive_weighting: bool = True
    """Learn the log-weight w(t) jointly with the model."""
    p_mean: float = -1.0
    """Time proposal t = arctan(e^tau / sigma_d), tau ~ N(p_mean, p_std^2) (sCM's CIFAR-10 values)."""
    p_std: float = 1.4
    time_scale: float = 1.0
    """The network sees c_noise = time_scale * t."""


@dataclasses.dataclass
class ECTConfig:
    """Geng et al.'s Easy Consistency Tuning on the VE schedule: early stages are (mostly) the
    diffusion loss, then the gap t - r shrinks stage by stage; optionally after EDM denoising
    pre-training, as in the paper."""

    pretrain_steps: int = 0
    """EDM denoising pre-training steps before ECT (with their own warm-up and cosine decay); ECT then
    tunes the pre-training EMA (rate 0.999) for --steps steps.
    0: ECT from scratch."""

    num_stages: int = 8
    """Stages over the run; the gap t - r halves from one to the next."""
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    huber_c: float = 0.1
    """Pseudo-Huber c (0: ECT's l2 norm). 0.1, the measured best on gmm2d: with the reference-batch
    velocity, 1-step W1 1.44x the floor against 2.39x for ECT's c = 0 one-sample (12 000 steps,
    docs/ct-quality.md)."""
    p_mean: float = 0.0
    """Log-normal t: log t ~ N(p_mean, p_std^2). ECT's -1.1 is for images in [-1, 1]; 0.0 trains the
    one-step end better on gmm2d (1-step W1 2.4x the floor against 12.6x, 6000 steps)."""
    p_std: float = 2.0
    stage_offset: int = 1
    """Exponent -(stage + offset): 1 as in ECT's code, 0 as in the paper (stage 0 then pure denoising)."""


@dataclasses.dataclass
class FlowMapConfig:
    """Two-time flow maps X(s, t, x) = x + (t - s) u(s, t, x) on the linear interpolant: meanflow (Geng et
    al.'s MeanFlow, no teacher), flow-map-lsd / flow-map-esd (Boffi et al.'s Lagrangian / Eulerian
    self-distillation, no teacher), flow-map-distill (distillation from the exact velocity, --flowmap.mode)."""

    p_mean: float = 1.0
    """Both times have log-normal noise level t/(1 - t), a logit-normal t. MeanFlow's ImageNet (-0.4, 1.0)
    almost never draws s near 1, where the 1-step jump starts; (1.0, 2.0) did on gmm2d (meanflow, 3000
    steps, 4-step W1 1.46x the floor against 1.89x; benchmarks/flow_maps.py, docs/flow-maps.md)."""
    p_std: float = 2.0
    ratio: float = 0.25
    """meanflow: the fraction of pairs with s != t (MeanFlow: 0.25; 0.5 was worse on gmm2d)."""
    weighting_power: float = 0.0
    """Adaptive weight 1/(|residual|^2 + eps)^p. MeanFlow's p = 1 treats every residual alike, which with
    the noisy one-sample or reference-batch velocity is no longer the mean: on gmm2d it gave 3.9x the
    floor at 1 step against 2.4x for p = 0, the plain squared loss (3000 steps)."""
    weighting_eps: float = 1e-3
    distillation_weight: float = 1.0
    """flow-map-lsd/esd/distill: weight of the map term beside the diagonal's flow matching."""
    mode: Literal["lagrangian", "eulerian"] = "lagrangian"
    """flow-map-distill: the Lagrangian or Eulerian residual."""
    time_scale: float = 10.0
    """The network sees time_scale * t for t in [0, 1] (sinusoidal features). On gmm2d (meanflow, 3000 steps,
    1-step W1 over the floor): 2.3x at 3 and 10, 3.7x at 100 (with the exact teacher), 4.2x at 30."""


@dataclasses.dataclass
class TrainConfig:
    """Train a consistency model, then evaluate it against the exact flow and plot it."""

    preset: Preset = "gmm2d"
    """Built-in problem: gmm2d (2-D 8-component mixture), gaussian (--dim), digits (sklearn 8x8)."""
    data: pathlib.Path | None = None
    """Your own data: an (n, d) .npy point cloud, used as an Empirical target."""
    target: pathlib.Path | None = None
    """Your own Gaussian mixture: .npz with weights (K,), means (K, d), covs (K, d, d)."""
    dim: int = 8
    """Dimension of the gaussian preset."""
    method: Method | None = None
    """The trainer. None: scd (Lu and Song's continuous-time distillation from the exact flow) for the
    analytic targets (gmm2d, gaussian, --target), the best 1-step and 2-step W1 there
    (benchmarks/cli_defaults.py); sct (continuous-time training without a teacher) for data sets (--data,
    digits), where the exact flow of the training set memorises it and sct gave the lowest FD to the
    held-out digits of every method, copying none (benchmarks/digits_quality.py, docs/digits.md)."""
    steps: int | None = None
    """Training steps. None: `DEFAULT_STEPS` of the method (8000; 40 000 for meanflow, whose 1-step W1 on
    gmm2d went from 2.1x the floor at 12 000 steps to 1.3x at 40 000; 20 000 for the other flow maps,
    whose step costs two network passes more)."""
    batch_size: int = 256
    velocity_estimate: Literal["one-sample", "reference-batch"] | None = None
    """Training without a teacher (ct, ict, ect, sct, staged*): the one-sample velocity (x_t - x0)/t of
    the papers, or the posterior mean over a reference set (the minibatch plus --reference-pool fresh
    points; Xu et al.'s stable target field). None: each method's measured best on gmm2d
    (docs/ct-quality.md): reference-batch with a pool of 4096 for ct, ict, ect, sct, with the minibatch
    alone (pool 0) for the staged methods."""
    reference_pool: int | None = None
    """Fresh reference points per step for --velocity-estimate reference-batch (0: the minibatch alone).
    None: the measured default."""
    coupling: Literal["independent", "ot"] | None = None
    """Training without a teacher: noise independent of the data, or reordered by the exact minibatch
    optimal-transport assignment. None: each method's measured best, independent for every method (OT
    was worse wherever it was measured, docs/ct-quality.md)."""
    holdout: float = 0.2
    """Share of --data or the digits preset held out from training (from the teacher, the exact flow and
    any reference pool too), for `ctjax eval`'s held-out metrics; 0: train on every point. The analytic
    targets (gmm2d, gaussian, --target) hold nothing out: their evaluation draws fresh samples."""
    split_seed: int = 0
    """Seed of the held-out split (saved in the run as split.npz)."""
    seed: int = 0
    out: pathlib.Path | None = None
    """Run directory (default: runs/<preset or file>-<method>)."""
    resume: pathlib.Path | None = None
    """Continue the run in this directory from its last checkpoint (its saved config is used)."""
    checkpoint_every: int = 1000
    chunk_size: int = 200
    """Steps per compiled chunk (the progress bar and checkpoints update between chunks)."""
    progress: bool = True
    evaluate: bool = True
    """After training, run `ctjax eval` and `ctjax plot` on the run."""
    x64: bool = False
    """Train in float64."""
    devices: int = 0
    """Train data-parallel on the first N of jax.devices() (the batch is split over them; --batch-size
    must be divisible by N). 0: the default device. On resume, the value given on the command line is used."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    cd: CDConfig = dataclasses.field(default_factory=CDConfig)
    ct: CTConfig = dataclasses.field(default_factory=CTConfig)
    ict: ICTConfig = dataclasses.field(default_factory=ICTConfig)
    staged: StagedConfig = dataclasses.field(default_factory=StagedConfig)
    scm: SCMConfig = dataclasses.field(default_factory=SCMConfig)
    ect: ECTConfig = dataclasses.field(default_factory=ECTConfig)
    flowmap: FlowMapConfig = dataclasses.field(default_factory=FlowMapConfig)


@dataclasses.dataclass
class EvalConfig:
    """Evaluate a run: 1-step and multistep W1, the finite-sample floor, map_error per t."""

    run: tyro.conf.Positional[pathlib.Path]
    num: int = 2000
    """Points per W1 evaluation."""
    repeats: int = 5
    steps: tuple[int, ...] = (1, 2)
    """Sampling step counts to evaluate."""
    map_error_points: int = 500


@dataclasses.dataclass
class SampleConfig:
    """Draw samples from a trained run."""

    run: tyro.conf.Positional[pathlib.Path]
    num: int = 1000
    steps: int = 1
    out: pathlib.Path = pathlib.Path("samples.npy")
    seed: int = 0


@dataclasses.dataclass
class PlotConfig:
    """Write the run's figures to RUN/figures/*.png."""

    run: tyro.conf.Positional[pathlib.Path]
    num: int = 2000


def to_json(config) -> dict:
    """A JSON-able dict of a config (paths as strings)."""

    def convert(value):
        if isinstance(value, pathlib.Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        return value

    return {
        k: convert(v) if not isinstance(v, dict) else {kk: convert(vv) for kk, vv in v.items()}
        for k, v in dataclasses.asdict(config).items()
    }


def _upgrade_model(model: dict, data: dict) -> dict:
    """The model section of a run saved before `architecture="auto"` was removed ("auto" meant the
    ConvNet for the digits preset, the MLP otherwise)."""
    if model.get("architecture") != "auto":
        return model
    digits = data.get("preset") == "digits" and data.get("data") is None and data.get("target") is None
    return {**model, "architecture": "conv" if digits else "mlp"}


def train_config_from_json(data: dict) -> TrainConfig:
    """Rebuild a TrainConfig saved by `to_json`."""
    nested = {
        "model": ModelConfig,
        "optim": OptimConfig,
        "cd": CDConfig,
        "ct": CTConfig,
        "ict": ICTConfig,
        "staged": StagedConfig,
        "scm": SCMConfig,
        "ect": ECTConfig,
        "flowmap": FlowMapConfig,
    }
    kwargs = {}
    if "velocity_estimate" not in data and data.get("method") in NO_TEACHER_METHODS:
        # A run saved before these options existed trained with the papers' one-sample velocity.
        data = {**data, "velocity_estimate": "one-sample", "coupling": "independent"}
    if "holdout" not in data:
        data = {**data, "holdout": 0.0}  # a run saved before the held-out split trained on every point
    if "ct" in data and "curriculum" not in data["ct"]:
        data = {**data, "ct": {**data["ct"], "curriculum": "sqrt"}}  # before the constant grid existed
    for field in dataclasses.fields(TrainConfig):
        if field.name not in data:
            continue
        value = data[field.name]
        if field.name in nested:
            value = nested[field.name](**(_upgrade_model(value, data) if field.name == "model" else value))
        elif field.name in ("data", "target", "out", "resume") and value is not None:
            value = pathlib.Path(value)
        kwargs[field.name] = value
    return TrainConfig(**kwargs)
