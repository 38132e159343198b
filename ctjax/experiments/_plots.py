"""Figures of a run (matplotlib, PNG)."""

import pathlib

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .._consistency import AbstractConsistencyModel, ExactConsistencyFunction
from .._flow import flow_map
from .._flow_maps import AbstractFlowMap, ConsistencySlice
from .._sampling import sample as sample_model
from ._setup import model_sampling_times, Problem


def _to_data_end(model):
    """The model's one-step map f(t, x) to the data end (a flow map's slice X(t, t_min, x))."""
    return ConsistencySlice(model) if isinstance(model, AbstractFlowMap) else model


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curve(history: dict, path: pathlib.Path) -> pathlib.Path | None:
    if "loss" not in history or len(history["loss"]) == 0:
        return None
    loss = np.asarray(history["loss"], dtype=np.float64)
    window = max(1, len(loss) // 100)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(np.arange(len(loss)), loss, color="0.8", lw=0.5, label="per step")
    ax.plot(np.arange(window - 1, len(loss)), smooth, color="C0", label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    return _save(fig, path)


def map_error_plot(
    evaluation: dict | None, model: AbstractConsistencyModel | AbstractFlowMap, path: pathlib.Path
) -> pathlib.Path | None:
    if not evaluation or "map_error" not in evaluation:
        return None
    ts = np.array([float(t) for t in evaluation["map_error"]])
    errs = np.array(list(evaluation["map_error"].values()))
    noise = np.asarray(jax.vmap(model.schedule.noise)(jnp.asarray(ts)))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(noise, errs, "o-")
    ax.set_xscale("log")
    ax.set_xlabel(r"noise level $\sigma/\alpha$ at $t$")
    ax.set_ylabel(r"RMS $\|f(t, x) - \Phi_{t\to t_{min}}(x)\|$")
    ax.set_title("learned map against the exact flow")
    return _save(fig, path)


def _density_grid(problem: Problem, model, lim: float, res: int = 160):
    xs = np.linspace(-lim, lim, res)
    grid = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    schedule = model.schedule
    a, s = schedule.alpha(schedule.t_min), schedule.sigma(schedule.t_min)
    logp = jax.vmap(lambda x: problem.target.marginal_log_prob(x, a, jnp.maximum(s, 1e-2)))(jnp.asarray(grid))
    return xs, np.asarray(logp).reshape(res, res)


def samples_2d(problem, model, sigma_data, path, num) -> pathlib.Path:
    one = np.asarray(sample_model(model, num, key=jr.key(1)))
    two = np.asarray(sample_model(model, num, times=model_sampling_times(model, 2, sigma_data), key=jr.key(2)))
    data = np.asarray(problem.target.sample(jr.key(3), num))
    lim = float(np.percentile(np.abs(data), 99.5)) * 1.3
    xs, logp = _density_grid(problem, model, lim)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    for ax, pts, title in zip(axes, [data, one, two], ["target samples", "1-step samples", "2-step samples"]):
        ax.contour(xs, xs, np.exp(logp), levels=8, cmap="Greys", linewidths=0.7)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(title)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    return _save(fig, path)


def trajectories_2d(problem, model, path, num_paths: int = 24) -> pathlib.Path:
    """Exact probability-flow trajectories from noise and where the learned one-step map sends the
    same noise, drawn in the normalised coordinates x / sqrt(alpha^2 + sigma^2)."""
    schedule = model.schedule
    t_max, t_min = schedule.t_max, schedule.t_min
    start = schedule.sigma(t_max) * jr.normal(jr.key(4), (num_paths, 2))
    lam = np.linspace(
        float(np.clip(schedule.log_noise(t_max), -27, 8)), float(np.clip(schedule.log_noise(t_min), -8, 27)), 40
    )
    ts = jnp.asarray([float(schedule.time_at_log_noise(v)) for v in lam])
    ts = ts.at[0].set(t_max).at[-1].set(t_min)
    scale = jax.vmap(lambda t: jnp.hypot(schedule.alpha(t), schedule.sigma(t)))(ts)
    path_fn = jax.jit(
        jax.vmap(
            lambda x: jax.vmap(lambda t: flow_map(problem.target, schedule, x, t_max, t, rtol=1e-6, atol=1e-6))(ts)
        )
    )
    paths = np.asarray(path_fn(start)) / np.asarray(scale)[None, :, None]
    jump = _to_data_end(model)
    learned = np.asarray(jax.vmap(lambda x: jump(t_max, x))(start)) / float(scale[-1])
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for p in paths:
        ax.plot(p[:, 0], p[:, 1], color="0.6", lw=0.8)
    ax.scatter(paths[:, -1, 0], paths[:, -1, 1], s=25, color="k", label="exact ODE endpoint", zorder=3)
    ax.scatter(learned[:, 0], learned[:, 1], s=25, marker="x", color="C3", label="learned one-step map", zorder=4)
    for p, q in zip(paths[:, -1], learned):
        ax.plot([p[0], q[0]], [p[1], q[1]], color="C3", lw=0.6)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(r"trajectories of $x/\sqrt{\alpha^2+\sigma^2}$ from the same noise")
    return _save(fig, path)


def digits_grid(problem, model, sigma_data, path, num: int = 10) -> pathlib.Path:
    schedule = model.schedule
    noise = schedule.sigma(schedule.t_max) * jr.normal(jr.key(5), (num, problem.dim))
    jump = _to_data_end(model)
    one = np.asarray(jax.vmap(lambda x: jump(schedule.t_max, x))(noise))
    two = np.asarray(sample_model(model, num, times=model_sampling_times(model, 2, sigma_data), key=jr.key(6)))
    exact = ExactConsistencyFunction(problem.target, schedule, rtol=1e-5, atol=1e-5)
    exact_imgs = np.asarray(jax.jit(jax.vmap(lambda x: exact(schedule.t_max, x)))(noise))
    train = np.asarray(problem.target.points)
    nearest = train[np.argmin(((one[:, None, :] - train[None]) ** 2).sum(-1), axis=1)]
    rows = [
        ("1-step", one),
        ("nearest training image", nearest),
        ("exact flow, same noise", exact_imgs),
        ("2-step", two),
    ]
    fig, axes = plt.subplots(len(rows), num, figsize=(num * 0.9, len(rows) * 1.05))
    for r, (label, imgs) in enumerate(rows):
        for c in range(num):
            ax = axes[r, c]
            ax.imshow(imgs[c].reshape(8, 8), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    return _save(fig, path)


def projection(problem, model, sigma_data, path, num) -> pathlib.Path:
    one = np.asarray(sample_model(model, num, key=jr.key(1)))
    data = np.asarray(problem.target.sample(jr.key(3), num))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.4, label="target")
    ax.scatter(one[:, 0], one[:, 1], s=2, alpha=0.4, label="1-step samples")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.legend()
    return _save(fig, path)


def flow_map_error_plot(evaluation: dict | None, path: pathlib.Path) -> pathlib.Path | None:
    """Heat maps of a flow map's RMS error against the exact jump and of its semigroup defect over (s, t)."""
    if not evaluation or "flow_map_error" not in evaluation:
        return None
    grid = evaluation["flow_map_error"]
    times = np.asarray(grid["times"])
    panels = [("error", r"RMS $\|X(s, t, x) - \Phi_{s \to t}(x)\|$"), ("semigroup_defect", "semigroup defect")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, (name, title) in zip(axes, panels):
        values = np.asarray(grid[name], dtype=np.float64)
        image = ax.imshow(values, cmap="viridis", origin="upper")
        labels = [f"{t:.2g}" for t in times]
        ax.set_xticks(range(len(times)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(times)), labels, fontsize=7)
        ax.set_xlabel("to time t")
        ax.set_ylabel("from time s")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, path)


def make_figures(model, problem: Problem, history, evaluation, out_dir: pathlib.Path, num: int, sigma_data: float):
    paths = [
        loss_curve(history, out_dir / "loss.png"),
        map_error_plot(evaluation, model, out_dir / "map_error.png"),
        flow_map_error_plot(evaluation, out_dir / "flow_map_error.png"),
    ]
    if problem.image_shape is not None:
        paths.append(digits_grid(problem, model, sigma_data, out_dir / "digits.png"))
    elif problem.dim == 2:
        paths.append(samples_2d(problem, model, sigma_data, out_dir / "samples.png", num))
        paths.append(trajectories_2d(problem, model, out_dir / "trajectories.png"))
    else:
        paths.append(projection(problem, model, sigma_data, out_dir / "projection.png", num))
    return [p for p in paths if p is not None]
