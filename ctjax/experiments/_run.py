"""What the command line does: train (with checkpoints and resume), evaluate, sample, plot."""

import io
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .. import metrics
from .._consistency import ExactConsistencyFunction
from .._flow_maps import AbstractFlowMap
from .._sampling import sample as sample_model
from .._schedules import DiscreteVP
from ..training import fit
from . import _heldout as heldout_eval
from ._checkpoint import (
    _atomic_write,
    CHECKPOINT,
    checkpoint_path,
    LEGACY_HISTORY,
    LEGACY_META,
    LEGACY_STATE,
    load_checkpoint,
    remove_superseded,
    save_checkpoint,
    temporaries,
)
from ._config import EvalConfig, PlotConfig, SampleConfig, to_json, train_config_from_json, TrainConfig
from ._setup import (
    build_mesh,
    build_method,
    build_problem,
    ConfigError,
    model_sampling_times,
    options_named,
    resolve_defaults,
    resolve_method,
)


CONFIG = "config.json"
EVAL = "eval.json"
SPLIT = "split.npz"
# Every file the run directory's writers create through a temporary file.
_WRITTEN = (CONFIG, CHECKPOINT, EVAL, SPLIT, LEGACY_STATE, LEGACY_META, LEGACY_HISTORY)


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the last good checkpoint is kept."""


def _default_out(cfg: TrainConfig) -> pathlib.Path:
    name = cfg.data.stem if cfg.data is not None else cfg.target.stem if cfg.target is not None else cfg.preset
    return pathlib.Path("runs") / f"{name}-{cfg.method}"


def _merge_history(segments: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """One array per metric over consecutive segments of (number of steps, metrics). A metric a
    segment lacks (a history lost by an older version's checkpoint) is NaN there, so every entry
    stays at its step."""
    names = list(dict.fromkeys(name for _, segment in segments for name in segment))
    merged = {}
    for name in names:
        parts = []
        for length, segment in segments:
            values = np.asarray(segment.get(name, np.zeros(0)))[:length]
            if len(values) < length:
                dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64
                values = np.concatenate([values.astype(dtype), np.full(length - len(values), np.nan, dtype)])
            parts.append(values)
        merged[name] = np.concatenate(parts)
    return merged


def _remove_temporaries(run_dir: pathlib.Path) -> None:
    """Temporary files of a write that was killed: the file they were to replace is intact."""
    for stale in temporaries(run_dir, _WRITTEN):
        stale.unlink(missing_ok=True)


def _check_run_dir(run_dir: pathlib.Path, given: bool) -> None:
    """The run directory must be a directory, or creatable as one (checked before anything is built)."""
    where = f"--out {run_dir}" if given else f"the default run directory {run_dir}"
    existing = run_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == run_dir else f"cannot be created: {existing} is a file"
        raise ConfigError(
            f"{where} {what}; --out names the run directory: pass a path that is a directory or does not exist yet."
        )


def _scale_advice(cfg: TrainConfig, sigma_data: float) -> str:
    """A hint for the divergence message when the data's scale is far from the unit scale that the
    noise schedules (VE: sigma from 0.002 to 80) and the default learning rate assume."""
    if 1e-2 <= sigma_data <= 1e2:
        return ""
    if cfg.model.sigma_data is not None:
        source = f"--model.sigma-data {cfg.model.sigma_data:g}"
    elif cfg.data is not None:
        source = f"--data {cfg.data}"
    elif cfg.target is not None:
        source = f"--target {cfg.target}"
    else:
        source = f"--preset {cfg.preset}"
    return (
        f" The data scale sigma_data = {sigma_data:.3g} ({source}) is far from 1, which the noise schedules assume: "
        f"rescale the data to unit scale (divide it by {sigma_data:.2g})."
    )


def _read_config(run_dir: pathlib.Path) -> TrainConfig:
    try:
        return train_config_from_json(json.loads((run_dir / CONFIG).read_text()))
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{run_dir / CONFIG} is corrupt or not a ctjax run configuration ({err}).") from err


def _saved_split(run_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The (train, held-out) indices a run saved, or None (no split, or a run older than splits)."""
    path = run_dir / SPLIT
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(f["train"], np.int64), np.asarray(f["heldout"], np.int64)
    except Exception as err:
        raise ConfigError(f"{path} is corrupt ({err}); it holds the run's held-out split.") from err


def _save_split(run_dir: pathlib.Path, split: tuple[np.ndarray, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, train=split[0], heldout=split[1])
    _atomic_write(run_dir / SPLIT, buffer.getvalue())


def load_run(run_dir: pathlib.Path | str):
    """(config, problem, trainer, state) of a saved run, from its config and last checkpoint."""
    return _load_run(run_dir)[:4]


def _load_run(run_dir: pathlib.Path | str):
    """(config, problem, trainer, state, history) of a saved run."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise ConfigError(f"{run_dir} is not a ctjax run directory (no {CONFIG}).")
    cfg = _read_config(run_dir)
    if cfg.x64:
        jax.config.update("jax_enable_x64", True)
    with options_named(cfg):
        problem = build_problem(cfg, _saved_split(run_dir))
        trainer, model, _ = build_method(cfg, problem)
        state = trainer.init(model, key=jr.key(cfg.seed))
    state, _, history = load_checkpoint(run_dir, state)
    return cfg, problem, trainer, state, history


def train(cfg: TrainConfig) -> pathlib.Path:
    """Train as configured; checkpoints every `checkpoint_every` steps and at the end, atomically
    (state, metadata and history in one file). With `resume`, the run continues from its checkpoint
    and ends bit-identical (on CPU) to an uninterrupted run; a run directory with a config but no
    checkpoint yet (killed before its first one) is trained from step 0."""
    if cfg.resume is not None:
        run_dir = cfg.resume
        if not (run_dir / CONFIG).exists():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no {CONFIG}).")
        saved = _read_config(run_dir)
        cfg = type(saved)(
            **{
                **saved.__dict__,
                "resume": run_dir,
                "progress": cfg.progress,
                "evaluate": cfg.evaluate,
                "devices": cfg.devices,
            }
        )
    else:
        cfg = resolve_method(cfg)
        run_dir = cfg.out or _default_out(cfg)
        _check_run_dir(run_dir, given=cfg.out is not None)
        if checkpoint_path(run_dir) is not None:
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out."
            )
    if cfg.checkpoint_every < 1 or cfg.chunk_size < 1:
        raise ConfigError("--checkpoint-every and --chunk-size must be at least 1.")
    if cfg.x64:
        jax.config.update("jax_enable_x64", True)
    with options_named(cfg):
        problem = build_problem(cfg, _saved_split(run_dir) if cfg.resume is not None else None)
        cfg = resolve_defaults(cfg)
        trainer, model, total = build_method(cfg, problem)
        mesh = build_mesh(cfg.devices, cfg.batch_size)
        state = trainer.init(model, key=jr.key(cfg.seed))
    history: dict[str, np.ndarray] = {}
    if run_dir.exists():
        _remove_temporaries(run_dir)
    if cfg.resume is not None:
        if checkpoint_path(run_dir) is None:
            print(f"no checkpoint in {run_dir} yet (stopped before its first one): training it from step 0")
        else:
            state, _, history = load_checkpoint(run_dir, state)
            remove_superseded(run_dir)  # older files a killed removal left beside checkpoint.npz
            print(f"resuming {run_dir} at step {int(state.step)} of {total}")
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / CONFIG, json.dumps(to_json(cfg), indent=2).encode())
    if problem.split is not None:
        _save_split(run_dir, problem.split)

    saved_step = int(state.step)
    last = {"state": state}
    segments: list[tuple[int, dict[str, np.ndarray]]] = [(saved_step, history)] if saved_step else []
    sigma_data = cfg.model.sigma_data or problem.sigma_data

    def checkpoint(state):
        meta = {"step": int(state.step), "total_steps": total, "time": time.time()}
        save_checkpoint(run_dir, state, meta, _merge_history(segments))

    def callback(state, chunk_metrics):
        nonlocal saved_step
        # The loss and the gradient norm first: they are what diverges; then any other metric.
        names = sorted(chunk_metrics, key=lambda k: (k not in ("loss", "grad_norm"), k))
        for name in names:
            values = np.asarray(chunk_metrics[name])
            bad = ~np.isfinite(values)
            if np.any(bad):
                first = int(np.argmax(bad))
                step = int(state.step) - len(values) + first + 1
                quantity = {"loss": "the loss", "grad_norm": "the gradient norm (grad_norm)"}.get(name, name)
                kept_path = checkpoint_path(run_dir)
                if kept_path is not None:
                    kept = f"The last good checkpoint, {kept_path} at step {saved_step}, is kept"
                else:
                    kept = f"No checkpoint had been written yet to {run_dir}"
                raise TrainingDiverged(
                    f"training diverged at step {step}: {quantity} is {values[first]}. {kept}; "
                    f"lower --optim.lr or set --optim.grad-clip.{_scale_advice(cfg, sigma_data)}"
                )
        segments.append((int(state.step) - int(last["state"].step), chunk_metrics))
        last["state"] = state
        if int(state.step) // cfg.checkpoint_every > saved_step // cfg.checkpoint_every or int(state.step) >= total:
            checkpoint(state)
            saved_step = int(state.step)

    remaining = total - int(state.step)
    try:
        if remaining > 0:
            print(f"training {problem.name} with {cfg.method} for {remaining} steps -> {run_dir}")
            fit(
                trainer,
                state,
                problem.data,
                num_steps=remaining,
                batch_size=cfg.batch_size,
                chunk_size=cfg.chunk_size,
                progress=cfg.progress,
                mesh=mesh,
                callback=callback,
            )
    except KeyboardInterrupt:
        if int(last["state"].step) > saved_step:
            checkpoint(last["state"])
        print(
            f"\ninterrupted: checkpoint at step {int(last['state'].step)} in {run_dir}; continue with --resume {run_dir}"
        )
        raise
    # Also when there is nothing left to train: a run without a checkpoint, or with one in the older
    # three-file layout, gets its checkpoint.npz.
    if int(last["state"].step) > saved_step or not (run_dir / CHECKPOINT).exists():
        checkpoint(last["state"])
    if cfg.evaluate:
        evaluate(EvalConfig(run=run_dir))
        plot(PlotConfig(run=run_dir))
    return run_dir


def _w1(samples_fn, refs) -> float:
    return float(np.mean([metrics.wasserstein1(samples_fn(r), ref) for r, ref in enumerate(refs)]))


def evaluate(cfg: EvalConfig) -> dict:
    """W1 of 1-step and multistep samples to fresh target samples, the finite-sample floor
    W1(data, data'), the W1 of exact-ODE samples from the same prior, and map_error per t."""
    train_cfg, problem, trainer, state = load_run(cfg.run)
    model = trainer.result(state)
    schedule = model.schedule
    target = problem.target
    n, reps = cfg.num, cfg.repeats
    refs = [np.asarray(target.sample(jr.key(10_000 + r), n)) for r in range(reps)]
    result: dict = {"run": str(cfg.run), "num_points": n, "repeats": reps, "step": int(state.step)}
    result["w1_floor"] = _w1(lambda r: np.asarray(target.sample(jr.key(20_000 + r), n)), refs)
    exact = ExactConsistencyFunction(target, schedule, rtol=1e-6, atol=1e-6)
    exact_draws = [np.asarray(sample_model(exact, n, key=jr.key(30_000 + r))) for r in range(2)]
    result["w1_exact_ode"] = _w1(lambda r: exact_draws[r], refs[:2])
    sd = train_cfg.model.sigma_data or problem.sigma_data
    for steps in cfg.steps:
        times = model_sampling_times(model, steps, sd)
        result[f"w1_{steps}step"] = _w1(
            lambda r, times=times: np.asarray(sample_model(model, n, times=times, key=jr.key(40_000 + r))), refs
        )
        result[f"times_{steps}step"] = np.asarray(times).tolist()
    if isinstance(schedule, DiscreteVP):
        ts = schedule.stage_times()[
            jnp.asarray(
                [1, schedule.num_steps // 8, schedule.num_steps // 4, schedule.num_steps // 2, schedule.num_steps - 1]
            )
        ]
    else:
        ts = jnp.asarray(
            [float(schedule.time_at_noise(v * sd)) for v in (0.05, 0.2, 0.5, 1.0, 2.0, 8.0)] + [float(schedule.t_max)]
        )
    errs = metrics.map_error(model, target, ts, num_points=cfg.map_error_points, key=jr.key(50_000))
    result["map_error"] = {f"{float(t):.4g}": float(e) for t, e in zip(ts, errs)}
    if isinstance(model, AbstractFlowMap):
        result["flow_map_error"] = flow_map_grid(model, target, cfg.map_error_points)
    if problem.heldout is not None:
        result["heldout"] = _evaluate_heldout(model, exact_draws[0], problem, cfg, sd)
    path = pathlib.Path(cfg.run) / EVAL
    _atomic_write(path, json.dumps(result, indent=2).encode())
    floor = result["w1_floor"]
    print(f"evaluation of {cfg.run} at step {result['step']} ({n} points, mean of {reps}):")
    print(f"  W1 floor W1(data, data')  {floor:.4f}")
    print(f"  W1 exact ODE samples      {result['w1_exact_ode']:.4f}")
    for steps in cfg.steps:
        w = result[f"w1_{steps}step"]
        print(f"  W1 {steps}-step samples       {w:.4f}   ({w / floor:.2f}x floor)")
    print("  map_error per t: " + ", ".join(f"t={k}: {v:.3g}" for k, v in result["map_error"].items()))
    if "flow_map_error" in result:
        grid = result["flow_map_error"]
        errors = [v for row in grid["error"] for v in row if v is not None]
        defects = [v for row in grid["semigroup_defect"] for v in row if v is not None]
        print(
            f"  flow map over {len(errors)} pairs (s > t): RMS error against Phi_(s->t) median {np.median(errors):.3g}, "
            f"max {max(errors):.3g}; semigroup defect median {np.median(defects):.3g}"
        )
    if "heldout" in result:
        print("\n".join(heldout_eval.format_table(result["heldout"])))
    return result


# The (s, t) grid of a flow map's evaluation on the linear interpolant: denser towards the data end.
FLOW_MAP_GRID = (1.0, 0.8, 0.6, 0.4, 0.25, 0.1, 0.0)


def flow_map_grid(model, target, num_points: int, seeds: tuple[int, int] = (51_000, 52_000)) -> dict:
    """A flow map's RMS error against the exact jump Phi_{s->t} and its semigroup defect (drawn with
    the keys of `seeds`), over every pair s > t of `FLOW_MAP_GRID` (rows s, columns t; null where s <= t)."""
    lo, hi = float(model.schedule.t_min), float(model.schedule.t_max)
    times = jnp.asarray([lo + f * (hi - lo) for f in FLOW_MAP_GRID])
    error = metrics.flow_map_error(model, target, times, num_points=num_points, key=jr.key(seeds[0]))
    defect = metrics.semigroup_defect(model, target, times, num_points=num_points, key=jr.key(seeds[1]))

    def listed(a):
        return [[None if np.isnan(v) else float(v) for v in row] for row in a]

    return {"times": np.asarray(times).tolist(), "error": listed(error), "semigroup_defect": listed(defect)}


def _evaluate_heldout(model, exact_samples: np.ndarray, problem, cfg: EvalConfig, sigma_data: float) -> dict:
    """The held-out metrics of `heldout_eval` for samples of the exact flow of the train split (the
    memorising ground truth; the first `num` of `exact_samples`) and each sampling step count, beside
    their floors."""
    train, heldout = np.asarray(problem.target.points), np.asarray(problem.heldout)
    num = min(cfg.num, train.shape[0])
    out: dict = {
        "num_points": num,
        "num_heldout": int(heldout.shape[0]),
        "num_train": int(train.shape[0]),
        "features": problem.features,
        "repeats": heldout_eval.HELDOUT_REPEATS,
        "floor": heldout_eval.floor_metrics(train, heldout, num, problem.features),
    }
    out["exact_ode"] = heldout_eval.sample_metrics(exact_samples[:num], train, heldout, problem.features)
    for steps in cfg.steps:
        times = model_sampling_times(model, steps, sigma_data)
        out[f"{steps}step"], _ = heldout_eval.drawn_metrics(model, times, num, train, heldout, problem.features)
    return out


def sample(cfg: SampleConfig) -> pathlib.Path:
    """Write `num` samples drawn with `steps`-step sampling to a .npy file."""
    train_cfg, problem, trainer, state = load_run(cfg.run)
    if cfg.num < 1:
        raise ConfigError(f"--num must be at least 1, got {cfg.num}.")
    model = trainer.result(state)
    times = model_sampling_times(model, cfg.steps, train_cfg.model.sigma_data or problem.sigma_data)
    xs = np.asarray(sample_model(model, cfg.num, times=times, key=jr.key(cfg.seed)))
    out = pathlib.Path(cfg.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True)
    np.save(out, xs)
    print(f"wrote {cfg.num} samples ({cfg.steps}-step) of dimension {xs.shape[1]} to {out}")
    return out


def plot(cfg: PlotConfig) -> list[pathlib.Path]:
    """Figures as PNG in RUN/figures."""
    from . import _plots as plots

    train_cfg, problem, trainer, state, history = _load_run(cfg.run)
    out_dir = pathlib.Path(cfg.run) / "figures"
    out_dir.mkdir(exist_ok=True)
    eval_path = pathlib.Path(cfg.run) / EVAL
    evaluation = json.loads(eval_path.read_text()) if eval_path.exists() else None
    sd = train_cfg.model.sigma_data or problem.sigma_data
    paths = plots.make_figures(trainer.result(state), problem, history, evaluation, out_dir, num=cfg.num, sigma_data=sd)
    print("figures: " + ", ".join(os.fspath(p) for p in paths))
    return paths
