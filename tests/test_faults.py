"""A diverging run (non-finite loss or gradient norm) stops with a message naming the step, the
quantity and the last good checkpoint, and never overwrites that checkpoint.
(A process killed mid-write: tests/test_checkpoint_kill.py.)"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array

from ctjax.experiments import _cli as cli, _run as run, load_checkpoint
from ctjax.training import AbstractTrainer


TINY = ["--model.width", "16", "--model.depth", "1", "--batch-size", "32", "--no-progress", "--no-evaluate"]
CHUNKS = ["--steps", "20", "--chunk-size", "5", "--checkpoint-every", "5"]


class NonFinite(AbstractTrainer):
    """`inner`, except that from step `loss_from` (`grad_from`) on, the loss (gradient norm) is NaN (inf)."""

    inner: AbstractTrainer
    loss_from: Array
    grad_from: Array

    def init(self, model, *, key):
        return self.inner.init(model, key=key)

    def step(self, state, batch, *, key):
        new_state, metrics = self.inner.step(state, batch, key=key)
        metrics = dict(metrics)
        step = new_state.step
        metrics["loss"] = jnp.where(step >= self.loss_from, jnp.nan, metrics["loss"])
        metrics["grad_norm"] = jnp.where(step >= self.grad_from, jnp.inf, metrics["grad_norm"])
        return new_state, metrics

    def result(self, state):
        return self.inner.result(state)


@pytest.fixture
def diverging(monkeypatch):
    """Make every trainer the command line builds diverge as asked; record the checkpoints saved."""
    saved_steps = []
    settings = {}
    build_method, save_checkpoint = run.build_method, run.save_checkpoint

    def build(cfg, problem):
        trainer, model, total = build_method(cfg, problem)
        loss_from, grad_from = (jnp.asarray(settings.get(k, 10**9)) for k in ("loss", "grad"))
        return NonFinite(trainer, loss_from, grad_from), model, total

    def save(run_dir, state, *args, **kwargs):
        saved_steps.append(int(state.step))
        return save_checkpoint(run_dir, state, *args, **kwargs)

    monkeypatch.setattr(run, "build_method", build)
    monkeypatch.setattr(run, "save_checkpoint", save)
    return settings, saved_steps


def _train_error(argv, capsys) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ctjax: error: training diverged"), err
    return lines[0]


@pytest.mark.parametrize("quantity, bad_step", [("loss", 13), ("grad", 11)])
def test_non_finite_stops_training_and_keeps_the_checkpoint(quantity, bad_step, diverging, tmp_path, capsys):
    settings, saved_steps = diverging
    settings[quantity] = bad_step
    run_dir = tmp_path / "run"
    line = _train_error(["train", *CHUNKS, "--out", str(run_dir), *TINY], capsys)
    name = "the loss is nan" if quantity == "loss" else "the gradient norm (grad_norm) is inf"
    assert f"at step {bad_step}: {name}" in line
    assert f"last good checkpoint, {run_dir / 'checkpoint.npz'} at step 10, is kept" in line
    assert "data scale" not in line  # gmm2d's scale is about 1
    # Saved at 5 and 10, never after; the checkpoint on disk is the one of step 10 and loads, with
    # the history of its 10 steps.
    assert saved_steps == [5, 10]
    _, _, _, state = run.load_run(run_dir)
    _, meta, history = load_checkpoint(run_dir, state)
    assert int(state.step) == meta["step"] == 10 and history["loss"].shape == (10,)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(eqx.filter(state.model, eqx.is_inexact_array)))


def test_non_finite_before_any_checkpoint(diverging, tmp_path, capsys):
    settings, saved_steps = diverging
    settings["loss"] = 2
    run_dir = tmp_path / "run"
    line = _train_error(["train", *CHUNKS, "--out", str(run_dir), *TINY], capsys)
    assert "at step 2: the loss is nan" in line and f"No checkpoint had been written yet to {run_dir}" in line
    assert saved_steps == [] and not (run_dir / "checkpoint.npz").exists()


def test_non_finite_with_data_far_from_unit_scale(diverging, tmp_path, capsys):
    """When the data's scale is far from 1, the divergence message says so and how to fix it."""
    settings, _ = diverging
    settings["loss"] = 2
    points = np.random.default_rng(0).normal(size=(64, 2)) * np.array([3e3, 1e3])
    np.save(tmp_path / "wide.npy", points)
    sigma = np.sqrt(np.mean(np.var(points, axis=0)))
    # --holdout 0: sigma_data is then that of every point (a held-out split would take it from the train part).
    argv = ["train", "--data", str(tmp_path / "wide.npy"), "--holdout", "0", *CHUNKS, "--out", str(tmp_path / "run")]
    argv += TINY
    line = _train_error(argv, capsys)
    assert "at step 2: the loss is nan" in line and "lower --optim.lr" in line
    assert f"The data scale sigma_data = {sigma:.3g} (--data {tmp_path / 'wide.npy'}) is far from 1" in line
    assert f"rescale the data to unit scale (divide it by {sigma:.2g})" in line
