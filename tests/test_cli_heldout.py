"""The held-out split of a data set under the CLI: saved in the run, unseen by training (the teacher's
exact flow and the reference pool included), and `ctjax eval`'s held-out metrics beside their floors."""

import json

import numpy as np
import pytest

from ctjax import holdout_split, presets
from ctjax.experiments import _setup as setup
from ctjax.experiments._config import train_config_from_json, TrainConfig
from ctjax.experiments._run import load_run
from ctjax.metrics import memorised_fraction, wasserstein1

from .test_cli import _run, TINY


def _clusters(n=80, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    return centres[rng.integers(0, 3, n)] + 0.4 * rng.standard_normal((n, 2))


def test_data_split_saved_and_evaluated_against_heldout(tmp_path, capsys):
    pts = _clusters()
    np.save(tmp_path / "pts.npy", pts)
    run = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "pts.npy"), "--holdout", "0.25", "--split-seed", "3"]
    code, out, err = _run([*argv, "--steps", "4", "--out", str(run), *TINY], capsys)
    assert code == 0, err
    train, held = holdout_split(80, 0.25, seed=3)
    with np.load(run / "split.npz") as f:
        assert np.array_equal(f["train"], train) and np.array_equal(f["heldout"], held)
    config = json.loads((run / "config.json").read_text())
    assert config["holdout"] == 0.25 and config["split_seed"] == 3
    _, problem, _, _ = load_run(run)
    # The target (so the exact teacher and the evaluation's exact flow) is the train split alone.
    np.testing.assert_array_equal(np.asarray(problem.target.points), pts[train])
    np.testing.assert_array_equal(problem.heldout, pts[held])

    code, out, err = _run(["eval", str(run), "--num", "300", "--repeats", "1", "--map-error-points", "32"], capsys)
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())["heldout"]
    assert result["num_points"] == 60 and result["num_heldout"] == 20
    floor = result["floor"]
    # With as many samples as training points the floor's subsample is the whole train split.
    np.testing.assert_allclose(floor["w1"], wasserstein1(pts[train], pts[held]), rtol=1e-12)
    assert floor["memorised"] == memorised_fraction(pts[held], pts[train])
    # The exact flow of the train split sends noise to training points: it memorises nearly all.
    assert result["exact_ode"]["memorised"] > 0.9 > floor["memorised"]
    assert result["1step"]["memorised"] < 0.5  # 4 steps of training copy nothing
    for name in ("exact_ode", "1step", "2step"):
        assert set(result[name]) >= {"w1", "fd", "precision", "recall", "memorised"}
    assert "against the held-out split" in out


def test_reference_pool_sees_the_train_split_only(tmp_path):
    np.save(tmp_path / "pts.npy", _clusters())
    cfg = setup.resolve_defaults(
        TrainConfig(data=tmp_path / "pts.npy", method="ct", velocity_estimate="reference-batch", reference_pool=4096)
    )
    problem = setup.build_problem(cfg)
    trainer, _, _ = setup.build_method(cfg, problem)
    assert trainer.velocity_estimate.data.shape == (64, 2)  # 80 points, 16 held out


def test_digits_preset_holds_out_the_default_split():
    problem = setup.build_problem(TrainConfig(preset="digits"))
    np.testing.assert_array_equal(np.asarray(problem.target.points), np.asarray(presets.digits(split="train").points))
    assert problem.heldout.shape == (359, 64) and problem.features == "digits"
    train_rows = {row.tobytes() for row in np.asarray(problem.target.points)}
    assert not any(row.tobytes() in train_rows for row in problem.heldout)
    everything = setup.build_problem(TrainConfig(preset="digits", holdout=0.0))
    assert everything.heldout is None and everything.target.num_points == 1797


def test_runs_saved_before_the_split_trained_on_every_point():
    legacy = {"preset": "digits", "method": "scd", "steps": 10}
    cfg = train_config_from_json(legacy)
    assert cfg.holdout == 0.0
    assert setup.build_problem(cfg).heldout is None


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_bad_holdout_is_named(value, tmp_path, capsys):
    np.save(tmp_path / "pts.npy", _clusters())
    argv = ["train", "--data", str(tmp_path / "pts.npy"), "--holdout", value, "--out", str(tmp_path / "r"), *TINY]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "--holdout" in err and "fraction" in err
    assert not (tmp_path / "r").exists()


def test_changed_data_file_is_named(tmp_path, capsys):
    np.save(tmp_path / "pts.npy", _clusters())
    run = tmp_path / "run"
    code, _, err = _run(
        ["train", "--data", str(tmp_path / "pts.npy"), "--steps", "2", "--out", str(run), *TINY], capsys
    )
    assert code == 0, err
    np.save(tmp_path / "pts.npy", _clusters(40))
    code, _, err = _run(["eval", str(run)], capsys)
    assert code == 2 and "the data changed" in err


def test_default_method_is_chosen_by_the_kind_of_target(tmp_path):
    """Data sets default to sCT with the one-sample velocity (the lowest held-out FD on digits,
    docs/digits.md); analytic targets to sCD; the estimator defaults follow the digits study there."""
    np.save(tmp_path / "pts.npy", _clusters())
    np.savez(tmp_path / "mix.npz", weights=np.array([1.0]), means=np.zeros((1, 2)), covs=np.eye(2)[None])
    for options, method in [
        ({"preset": "digits"}, "sct"),
        ({"data": tmp_path / "pts.npy"}, "sct"),
        ({"preset": "gmm2d"}, "scd"),
        ({"preset": "gaussian"}, "scd"),
        ({"target": tmp_path / "mix.npz"}, "scd"),
    ]:
        cfg = setup.resolve_defaults(TrainConfig(**options))
        assert cfg.method == method, options
    digits = setup.resolve_defaults(TrainConfig(preset="digits"))
    assert (digits.velocity_estimate, digits.reference_pool) == ("one-sample", None)
    ect = setup.resolve_defaults(TrainConfig(preset="digits", method="ect"))
    assert (ect.velocity_estimate, ect.reference_pool) == setup.MEASURED_BEST_DATA["ect"][:2]
    gmm = setup.resolve_defaults(TrainConfig(preset="gmm2d", method="sct"))
    assert (gmm.velocity_estimate, gmm.reference_pool) == setup.MEASURED_BEST["sct"][:2]
