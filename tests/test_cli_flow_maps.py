"""The flow-map methods under the command line (issue 18): training, the (s, t) evaluation, the
deterministic chain of `ctjax sample --steps`, and the heat map."""

import json

import numpy as np
import pytest

from ctjax.experiments._config import train_config_from_json, TrainConfig
from ctjax.experiments._run import load_run
from ctjax.experiments._setup import resolve_defaults
from ctjax.training import FlowMapDistillationTrainer

from .test_cli import _history, _run, TINY


def test_meanflow_trains_evaluates_samples_and_plots(tmp_path, capsys):
    run = tmp_path / "mf"
    code, out, _ = _run(
        ["train", "--method", "meanflow", "--steps", "6", "--chunk-size", "3", "--out", str(run), *TINY], capsys
    )
    assert code == 0, out
    config = json.loads((run / "config.json").read_text())
    # The measured defaults on gmm2d: the reference batch, and the plain squared loss.
    assert config["method"] == "meanflow" and config["velocity_estimate"] == "reference-batch"
    assert config["reference_pool"] == 4096 and config["steps"] == 6
    assert train_config_from_json(config).flowmap.weighting_power == 0.0
    h = _history(run)
    assert h["loss"].shape == (6,) and np.all(np.isfinite(h["loss"])) and "off_diagonal" in h

    code, out, _ = _run(["eval", str(run), "--num", "300", "--repeats", "2", "--map-error-points", "64"], capsys)
    assert code == 0, out
    result = json.loads((run / "eval.json").read_text())
    assert result["w1_exact_ode"] < 1.6 * result["w1_floor"] < result["w1_1step"]  # 6 steps are not enough
    grid = result["flow_map_error"]
    n = len(grid["times"])
    assert grid["times"][0] == 1.0 and grid["times"][-1] == 0.0
    error = np.array([[np.nan if v is None else v for v in row] for row in grid["error"]])
    assert np.isnan(error[np.tril_indices(n)]).all() and np.all(error[np.triu_indices(n, 1)] > 0)
    # The column t = 0 from t_max is the 1-step map's error, the one of map_error at t_max.
    assert error[0, -1] == pytest.approx(result["map_error"]["1"], rel=0.5)
    assert "semigroup defect" in out

    samples = tmp_path / "s.npy"
    code, out, _ = _run(["sample", str(run), "--num", "17", "--steps", "4", "--out", str(samples)], capsys)
    assert code == 0, out
    assert np.load(samples).shape == (17, 2)

    code, out, _ = _run(["plot", str(run), "--num", "200"], capsys)
    assert code == 0, out
    for name in ["flow_map_error.png", "samples.png", "trajectories.png"]:
        assert (run / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "method, options, weight, mode, pool",
    [
        ("flow-map-lsd", ["--flowmap.distillation-weight", "0.5"], 0.5, "lagrangian", 4096),
        ("flow-map-esd", ["--velocity-estimate", "reference-batch", "--reference-pool", "64"], 1.0, "eulerian", 64),
        ("flow-map-distill", ["--flowmap.mode", "eulerian"], 1.0, "eulerian", None),
    ],
)
def test_other_flow_map_methods_train(method, options, weight, mode, pool, tmp_path, capsys):
    run = tmp_path / method
    code, out, _ = _run(
        ["train", "--method", method, "--steps", "4", "--chunk-size", "2", "--out", str(run), *options, *TINY], capsys
    )
    assert code == 0, out
    # The options reach the trainer the run rebuilds.
    _, _, trainer, _ = load_run(run)
    assert isinstance(trainer, FlowMapDistillationTrainer)
    assert (trainer.mode, trainer.distillation_weight) == (mode, weight)
    assert (trainer.velocity is not None) == (method == "flow-map-distill")
    assert getattr(trainer.velocity_estimate, "pool_size", None) == pool
    # Unweighted (the default p = 0), the loss is the diagonal term plus the weighted map term, step by step.
    h = _history(run)
    assert h["loss"].shape == (4,) and np.all(np.isfinite(h["loss"]))
    np.testing.assert_allclose(h["loss"], h["diagonal"] + weight * h["residual"], rtol=1e-5)


@pytest.mark.parametrize("method, steps", [("meanflow", 40_000), ("flow-map-lsd", 20_000), ("sct", 8000), (None, 8000)])
def test_default_steps_by_method(method, steps):
    cfg = resolve_defaults(TrainConfig(method=method))
    assert cfg.steps == steps
    assert resolve_defaults(TrainConfig(method=method, steps=12)).steps == 12


def test_flow_map_options_are_checked(tmp_path, capsys):
    code, _, err = _run(
        ["train", "--method", "meanflow", "--flowmap.ratio", "2", "--out", str(tmp_path / "r"), *TINY], capsys
    )
    assert code != 0 and "--flowmap.ratio" in err
    code, _, err = _run(
        [
            "train",
            "--method",
            "flow-map-distill",
            "--velocity-estimate",
            "one-sample",
            "--out",
            str(tmp_path / "d"),
            *TINY,
        ],
        capsys,
    )
    assert code != 0 and "--velocity-estimate" in err
    code, _, err = _run(
        ["train", "--method", "flow-map-lsd", "--flowmap.mode", "eulerian", "--out", str(tmp_path / "m"), *TINY], capsys
    )
    assert code != 0 and "--flowmap.mode does not apply to --method flow-map-lsd" in err
