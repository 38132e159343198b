"""Every public entry point, given a bad input, raises a clear error that names the argument.

One test per case; none compiles a training step (the checks run before anything is traced).
"""

import json
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import ctjax
from ctjax.experiments import _checkpoint as checkpoint
from ctjax.training import fit, ict

from .helpers import cli_error as _cli_error


@pytest.fixture(scope="module")
def problem():
    target = ctjax.Gaussian(jnp.array([1.0, -1.0]), jnp.array([[1.0, 0.3], [0.3, 0.5]]))
    schedule = ctjax.VarianceExploding(0.002, 80.0)
    model = ctjax.ConsistencyFunction(ctjax.MLP(2, width=8, depth=1, key=jr.key(0)), schedule)
    trainer = ict(optax.adam(1e-3), 10)
    return target, schedule, model, trainer, trainer.init(model, key=jr.key(1))


# x of the wrong shape or dtype


def test_flow_map_x_wrong_shape(problem):
    target, schedule, *_ = problem
    with pytest.raises(ValueError, match=r"`x` must be one point of shape \(2,\).*got shape \(3,\)"):
        ctjax.flow_map(target, schedule, jnp.zeros(3), 1.0, 0.1)


def test_flow_map_x_wrong_dtype(problem):
    target, schedule, *_ = problem
    with pytest.raises(TypeError, match="`x` must be real, got dtype complex64"):
        ctjax.flow_map(target, schedule, jnp.zeros(2, jnp.complex64), 1.0, 0.1)


def test_denoiser_x_batch_instead_of_point(problem):
    target, schedule, *_ = problem
    with pytest.raises(ValueError, match=r"`x` must be one point.*For a batch of points use jax.vmap"):
        ctjax.denoiser(target, schedule, 1.0, jnp.zeros((4, 2)))


def test_denoiser_x_not_numbers(problem):
    target, schedule, *_ = problem
    with pytest.raises(TypeError, match="`x` must be an array of real numbers, got str"):
        ctjax.denoiser(target, schedule, 1.0, "x")  # pyright: ignore[reportArgumentType]


def test_consistency_function_x_wrong_shape(problem):
    model = problem[2]
    with pytest.raises(ValueError, match=r"`x` must be one point of shape \(2,\) for MLP, got shape \(3,\)"):
        model(1.0, jnp.zeros(3))


def test_consistency_function_x_wrong_dtype(problem):
    model = problem[2]
    with pytest.raises(TypeError, match="`x` must be real"):
        model(1.0, jnp.zeros(2, jnp.complex64))


def test_consistency_function_t_not_scalar(problem):
    model = problem[2]
    with pytest.raises(ValueError, match="`t` must be a scalar time"):
        model(jnp.ones(3), jnp.zeros(2))


def test_sample_times_wrong_shape(problem):
    model = problem[2]
    with pytest.raises(ValueError, match=r"`times` must be a non-empty 1-D sequence"):
        ctjax.sample(model, 4, times=jnp.ones((2, 2)), key=jr.key(0))


def test_sample_dtype_not_floating(problem):
    model = problem[2]
    with pytest.raises(TypeError, match="`dtype` must be a floating dtype"):
        ctjax.sample(model, 4, dtype=jnp.int32, key=jr.key(0))


def test_sample_num_not_positive(problem):
    model = problem[2]
    with pytest.raises(ValueError, match="`num` must be at least 1, got 0"):
        ctjax.sample(model, 0, key=jr.key(0))


# mismatched dimensions between target and model


def test_fit_target_dimension_differs_from_model(problem):
    trainer, state = problem[3], problem[4]
    target3 = ctjax.Gaussian(jnp.zeros(3), jnp.eye(3))
    with pytest.raises(ValueError, match="`data` has dimension 3 but the model in `state` has dimension 2"):
        fit(trainer, state, target3, num_steps=1, batch_size=4, progress=False)


def test_fit_data_array_dimension_differs_from_model(problem):
    trainer, state = problem[3], problem[4]
    with pytest.raises(ValueError, match="`data` has dimension 5 but the model in `state` has dimension 2"):
        fit(trainer, state, np.zeros((10, 5)), num_steps=1, batch_size=4, progress=False)


def test_fit_data_array_not_finite(problem):
    trainer, state = problem[3], problem[4]
    data = np.zeros((10, 2))
    data[3, 1] = np.nan
    with pytest.raises(ValueError, match="`data` contains NaN or infinite values"):
        fit(trainer, state, data, num_steps=1, batch_size=4, progress=False)


def test_fit_data_array_empty(problem):
    trainer, state = problem[3], problem[4]
    with pytest.raises(ValueError, match=r"`data` must be a ctjax target or a non-empty \(N, dim\) array"):
        fit(trainer, state, np.zeros((0, 2)), num_steps=1, batch_size=4, progress=False)


def test_fit_mesh_not_a_mesh(problem):
    target, *_, trainer, state = problem
    with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh"):
        fit(trainer, state, target, num_steps=1, batch_size=4, progress=False, mesh="gpu")  # pyright: ignore


# times outside the schedule


def test_flow_map_t_from_outside_schedule(problem):
    target, schedule, *_ = problem
    with pytest.raises(
        ValueError,
        match=r"`t_from` must be a finite time in \[t_min, t_max\] of VarianceExploding = \[0.002, 80\]; clip it to the schedule's range, got 100.0\.",
    ):
        ctjax.flow_map(target, schedule, jnp.zeros(2), 100.0, 0.1)


def test_flow_map_t_to_outside_schedule(problem):
    target, schedule, *_ = problem
    with pytest.raises(ValueError, match=r"`t_to` must be a finite time in \[t_min, t_max\].*, got 0.0\."):
        ctjax.flow_map(target, schedule, jnp.zeros(2), 1.0, 0.0)


def test_consistency_function_t_outside_schedule(problem):
    model = problem[2]
    with pytest.raises(
        ValueError, match=r"`t` must be a finite time in \[t_min, t_max\] of VarianceExploding.*, got 100.0\."
    ):
        model(100.0, jnp.zeros(2))
    with pytest.raises(ValueError, match=r"`t` must be a finite time in \[t_min, t_max\].*, got nan\."):
        model(jnp.nan, jnp.zeros(2))
    # The end points themselves are valid, in float32 too (TrigFlow's t_max = pi/2 rounds up).
    trig = ctjax.ConsistencyFunction(model.net, ctjax.TrigFlow(0.5), ctjax.TrigFlowScalings(0.5))
    assert np.isfinite(np.asarray(trig(jnp.float32(np.pi / 2), jnp.zeros(2, jnp.float32)))).all()
    assert np.array_equal(np.asarray(model(0.002, jnp.ones(2))), np.ones(2))


def test_sample_times_outside_schedule(problem):
    model = problem[2]
    with pytest.raises(ValueError, match=r"`times` must lie in \(t_min, t_max\] = \(0.002, 80\]"):
        ctjax.sample(model, 4, times=jnp.array([100.0, 1.0]), key=jr.key(0))


def test_sample_times_not_decreasing(problem):
    model = problem[2]
    with pytest.raises(ValueError, match="`times` must be strictly decreasing"):
        ctjax.sample(model, 4, times=jnp.array([1.0, 10.0]), key=jr.key(0))


# covariances and data


def test_gaussian_covariance_not_positive_definite():
    with pytest.raises(ValueError, match="`cov` must be positive definite; its smallest eigenvalue is -1"):
        ctjax.Gaussian(jnp.zeros(2), jnp.array([[1.0, 2.0], [2.0, 1.0]]))


def test_gaussian_covariance_not_symmetric():
    with pytest.raises(ValueError, match="`cov` must be symmetric"):
        ctjax.Gaussian(jnp.zeros(2), jnp.array([[1.0, 0.5], [0.0, 1.0]]))


def test_mixture_covariance_not_positive_definite():
    covs = jnp.stack([jnp.eye(2), jnp.array([[1.0, 0.0], [0.0, -0.5]])])
    with pytest.raises(ValueError, match=r"`covs\[1\]` must be positive definite"):
        ctjax.GaussianMixture(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)), covs)


def test_empirical_empty():
    with pytest.raises(ValueError, match=r"`points` must be a non-empty \(N, d\) array"):
        ctjax.Empirical(jnp.zeros((0, 2)))


def test_empirical_not_finite():
    with pytest.raises(ValueError, match="`points` contains NaN or infinite values"):
        ctjax.Empirical(jnp.array([[0.0, 1.0], [jnp.inf, 0.0]]))


# trainer options


ADAM = optax.adam(1e-3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ict(ADAM, 10, ema_rate=1.0), r"`ema_rate` must be in \[0, 1\) or None, got 1.0"),
        (lambda: ctjax.training.ect(ADAM, 10, ema_rate=-0.1), "`ema_rate` must be in"),
        (lambda: ctjax.training.ect(ADAM, 10, p_std=0.0), "`p_std` must be positive and finite, got 0.0"),
        (lambda: ctjax.training.sct(ADAM, ema_rate=1.5), "`ema_rate` must be in"),
        (lambda: ctjax.training.sct(ADAM, p_std=-1.0), "`p_std` must be positive"),
        (lambda: ctjax.training.DenoisingTrainer(ADAM, p_std=0.0), "`p_std` must be positive"),
        (lambda: ctjax.training.FlowMatchingTrainer(ADAM, ema_rate=2.0), "`ema_rate` must be in"),
    ],
)
def test_trainer_rate_and_spread(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# the command line


def test_cli_unknown_preset(capsys):
    line = _cli_error(["train", "--preset", "imagenet"], capsys)
    assert "--preset" in line and "imagenet" in line


def test_cli_unknown_method(capsys):
    line = _cli_error(["train", "--method", "diffusion-gan"], capsys)
    assert "--method" in line and "diffusion-gan" in line


def test_cli_devices_more_than_available(capsys, tmp_path):
    line = _cli_error(
        ["train", "--devices", "64", "--steps", "1", "--out", str(tmp_path / "r"), "--no-progress"], capsys
    )
    assert "--devices 64: only 1 cpu device(s) available" in line


# checkpoints


def _saved(tmp_path, state):
    return checkpoint.save_checkpoint(tmp_path, state, {"step": 3}, {"loss": np.arange(3.0)})


def _saved_legacy(tmp_path, state):
    """A checkpoint in the three-file layout of older versions."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    with open(tmp_path / checkpoint.LEGACY_STATE, "wb") as f:
        eqx.tree_serialise_leaves(f, state, filter_spec=checkpoint._write_leaf)
    (tmp_path / checkpoint.LEGACY_META).write_text(json.dumps({"step": 3}))
    return tmp_path / checkpoint.LEGACY_STATE


def _rewritten(path, name, data: bytes):
    """The archive at `path` with its member `name` replaced by `data` (a valid zip, CRCs included)."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for n, d in {**members, name: data}.items():
            z.writestr(n, d)


def test_checkpoint_missing(tmp_path, problem):
    with pytest.raises(checkpoint.CheckpointError, match="No checkpoint in"):
        checkpoint.load_checkpoint(tmp_path, problem[4])
    # Half of the older layout is no checkpoint either.
    _saved_legacy(tmp_path, problem[4])
    (tmp_path / checkpoint.LEGACY_META).unlink()
    with pytest.raises(checkpoint.CheckpointError, match="No checkpoint in"):
        checkpoint.load_checkpoint(tmp_path, problem[4])


def test_checkpoint_round_trip(tmp_path, problem):
    """What is saved is what loads: every leaf, the metadata and the history."""
    state = problem[4]
    _saved(tmp_path, state)
    loaded, meta, history = checkpoint.load_checkpoint(tmp_path, state)
    assert eqx.tree_equal(
        jax.tree.map(np.asarray, eqx.filter(loaded, eqx.is_inexact_array)),
        jax.tree.map(np.asarray, eqx.filter(state, eqx.is_inexact_array)),
    )
    assert bool(jnp.all(jr.key_data(loaded.key) == jr.key_data(state.key)))
    assert meta == {"step": 3} and list(history) == ["loss"] and history["loss"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("layout", ["archive", "legacy"])
def test_checkpoint_corrupt(layout, tmp_path, problem):
    path = (_saved if layout == "archive" else _saved_legacy)(tmp_path, problem[4])
    data = bytearray(path.read_bytes())
    data[: len(data) // 2] = b"\x00" * (len(data) // 2)
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=f"Checkpoint {path} is corrupt"):
        checkpoint.load_checkpoint(tmp_path, problem[4])


def test_checkpoint_one_byte_flipped(tmp_path, problem):
    """The archive's CRC-32s catch damage that would still deserialise (a flipped bit in a weight)."""
    path = _saved(tmp_path, problem[4])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("state.eqx")
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size - 3
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=f"Checkpoint {path} is corrupt or truncated.*CRC"):
        checkpoint.load_checkpoint(tmp_path, problem[4])


@pytest.mark.parametrize("layout", ["archive", "legacy"])
def test_checkpoint_truncated(layout, tmp_path, problem):
    path = (_saved if layout == "archive" else _saved_legacy)(tmp_path, problem[4])
    path.write_bytes(path.read_bytes()[:100])
    match = "is corrupt or truncated" if layout == "archive" else "is corrupt or does not match"
    with pytest.raises(checkpoint.CheckpointError, match=f"Checkpoint {path} {match}"):
        checkpoint.load_checkpoint(tmp_path, problem[4])


@pytest.mark.parametrize("layout", ["archive", "legacy"])
def test_checkpoint_metadata_corrupt(layout, tmp_path, problem):
    path = (_saved if layout == "archive" else _saved_legacy)(tmp_path, problem[4])
    if layout == "archive":
        _rewritten(path, "meta.json", b'{"step": 3')
    else:
        (tmp_path / checkpoint.LEGACY_META).write_text('{"step": 3')
    with pytest.raises(checkpoint.CheckpointError, match="Corrupt checkpoint metadata"):
        checkpoint.load_checkpoint(tmp_path, problem[4])


def test_checkpoint_of_a_wider_model(tmp_path, problem):
    *_, trainer, state = problem
    wider = ctjax.ConsistencyFunction(ctjax.MLP(2, width=16, depth=1, key=jr.key(0)), problem[1])
    _saved(tmp_path, trainer.init(wider, key=jr.key(1)))
    with pytest.raises(checkpoint.CheckpointError, match="does not match this run's model/optimizer"):
        checkpoint.load_checkpoint(tmp_path, state)


def test_checkpoint_of_a_smaller_model(tmp_path, problem):
    *_, trainer, state = problem
    path = _saved(tmp_path, eqx.tree_at(lambda s: s.ema, state, None))
    with pytest.raises(checkpoint.CheckpointError, match=f"{path} is corrupt or does not match this run's model"):
        checkpoint.load_checkpoint(tmp_path, state)


def test_cli_checkpoint_of_another_model(tmp_path, problem, capsys):
    """A run directory whose config no longer matches its checkpoint: eval names the file."""
    *_, trainer, state = problem
    run = tmp_path / "run"
    _saved(run, state)
    config = {"preset": "gmm2d", "method": "ict", "steps": 10, "model": {"width": 32, "depth": 1}}
    (run / "config.json").write_text(json.dumps(config))
    line = _cli_error(["sample", str(run), "--num", "2"], capsys)
    assert "checkpoint.npz" in line and "does not match this run's model/optimizer" in line
