"""The `ctjax` command: every subcommand with tiny budgets, one-line errors, and a run killed
mid-training that resumes to exactly the state of an uninterrupted run."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from ctjax.experiments import _cli as cli
from ctjax.experiments._config import ModelConfig, to_json, train_config_from_json, TrainConfig
from ctjax.experiments._setup import resolve_defaults


TINY = ["--model.width", "16", "--model.depth", "1", "--batch-size", "32", "--no-progress", "--no-evaluate"]


def _meta(run) -> dict:
    """The metadata of a run's checkpoint (the archive's meta.json, read without ctjax)."""
    with zipfile.ZipFile(run / "checkpoint.npz") as z:
        return json.loads(z.read("meta.json"))


def _history(run) -> dict:
    """The per-step history of a run's checkpoint, as NumPy reads it."""
    with np.load(run / "checkpoint.npz") as f:
        return {k.removeprefix("history/"): f[k] for k in f.files if k.startswith("history/")}


def _run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_eval_sample_plot(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, _ = _run(
        ["train", "--steps", "40", "--out", str(run), "--checkpoint-every", "20", "--chunk-size", "20", *TINY], capsys
    )
    assert code == 0, out
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 40 and config["method"] == "scd" and config["model"]["width"] == 16
    assert _meta(run)["step"] == 40
    h = _history(run)
    assert h["loss"].shape == (40,) and np.all(np.isfinite(h["loss"]))

    code, out, _ = _run(["eval", str(run), "--num", "300", "--repeats", "2", "--map-error-points", "64"], capsys)
    assert code == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["step"] == 40
    # The exact flow sampled through the same pipeline is as good as fresh data (it can fail:
    # a wrong prior, schedule or evaluation would put it far above the floor).
    assert result["w1_exact_ode"] < 1.6 * result["w1_floor"]
    assert result["w1_1step"] > result["w1_exact_ode"]  # 40 steps of training are not enough
    assert len(result["map_error"]) == 7 and all(v >= 0 for v in result["map_error"].values())
    assert "1-step samples" in out and "floor" in out

    samples = tmp_path / "s.npy"
    code, out, _ = _run(["sample", str(run), "--num", "17", "--steps", "3", "--out", str(samples)], capsys)
    assert code == 0
    xs = np.load(samples)
    assert xs.shape == (17, 2) and np.all(np.isfinite(xs))

    code, out, _ = _run(["plot", str(run), "--num", "200"], capsys)
    assert code == 0
    for name in ["loss.png", "map_error.png", "samples.png", "trajectories.png"]:
        assert (run / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("method", ["sct", "scd", "ect"])
def test_continuous_time_and_ect_methods(method, tmp_path, capsys):
    """Each method trains under the CLI with its options passed through (sCM's tangent warm-up over 2
    steps; ECT's 2 stages of 3 steps) and its run evaluates (TrigFlow sampling for sct/scd)."""
    run = tmp_path / method
    options = ["--scm.warmup-steps", "2"] if method != "ect" else ["--ect.num-stages", "2"]
    code, out, _ = _run(
        ["train", "--method", method, "--steps", "6", "--chunk-size", "3", "--out", str(run), *options, *TINY], capsys
    )
    assert code == 0, out
    assert json.loads((run / "config.json").read_text())["method"] == method
    h = _history(run)
    assert h["loss"].shape == (6,) and np.all(np.isfinite(h["loss"]))
    if method == "ect":
        assert h["stage"].tolist() == [0, 0, 0, 1, 1, 1]
    else:
        assert h["warmup_ratio"].tolist() == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    code, out, _ = _run(["eval", str(run), "--num", "300", "--repeats", "2", "--map-error-points", "64"], capsys)
    assert code == 0, out
    result = json.loads((run / "eval.json").read_text())
    assert result["w1_exact_ode"] < 1.6 * result["w1_floor"] < result["w1_1step"]  # 6 steps are not enough


def test_ect_after_denoising_pretraining(tmp_path, capsys):
    """--ect.pretrain-steps: EDM denoising pre-training, then ECT from its EMA with ECT's stages
    counted from the switch; the run is pretrain-steps + --steps long and evaluates."""
    run = tmp_path / "ect"
    options = ["--method", "ect", "--ect.pretrain-steps", "3", "--ect.num-stages", "2", "--steps", "4"]
    code, out, _ = _run(["train", *options, "--chunk-size", "2", "--out", str(run), *TINY], capsys)
    assert code == 0, out
    assert _meta(run)["step"] == 7
    h = _history(run)
    assert h["phase"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert h["stage"].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert np.all(np.isfinite(h["loss"]))
    code, out, _ = _run(["eval", str(run), "--num", "300", "--repeats", "2", "--map-error-points", "64"], capsys)
    assert code == 0, out
    assert json.loads((run / "eval.json").read_text())["step"] == 7


def test_user_data_and_user_mixture(tmp_path, capsys):
    pts = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "cloud.npy", pts)
    code, _, _ = _run(
        ["train", "--data", str(tmp_path / "cloud.npy"), "--steps", "4", "--out", str(tmp_path / "a"), *TINY], capsys
    )
    assert code == 0 and json.loads((tmp_path / "a" / "config.json").read_text())["data"].endswith("cloud.npy")
    np.savez(
        tmp_path / "mix.npz",
        weights=np.array([0.3, 0.7]),
        means=np.array([[0.0, 1.0], [2.0, -1.0]]),
        covs=np.stack([np.eye(2) * 0.1] * 2),
    )
    code, _, _ = _run(
        ["train", "--target", str(tmp_path / "mix.npz"), "--steps", "4", "--out", str(tmp_path / "b"), *TINY], capsys
    )
    assert code == 0
    code, out, _ = _run(["sample", str(tmp_path / "b"), "--num", "5", "--out", str(tmp_path / "b.npy")], capsys)
    assert code == 0 and np.load(tmp_path / "b.npy").shape == (5, 2)


def test_digits_figure(tmp_path, capsys):
    run = tmp_path / "digits"
    code, _, _ = _run(
        [
            "train",
            "--preset",
            "digits",
            "--steps",
            "2",
            "--out",
            str(run),
            "--model.architecture",
            "conv",
            "--model.width",
            "8",
            "--batch-size",
            "8",
            "--no-progress",
            "--no-evaluate",
        ],
        capsys,
    )
    assert code == 0
    code, _, _ = _run(["plot", str(run), "--num", "50"], capsys)
    assert code == 0
    assert (run / "figures" / "digits.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "config.json").read_text())["model"]["width"] == 8


@pytest.mark.parametrize(
    "options, width",
    [({}, 128), ({"architecture": "conv"}, 32), ({"width": 48}, 48), ({"architecture": "conv", "width": 8}, 8)],
)
def test_default_width(options, width):
    """What a run records for an unset --model.width: 128 for the MLP, 32 ConvNet channels; a width
    that is set is kept, and nothing else changes."""
    model = ModelConfig(**options)
    resolved = resolve_defaults(TrainConfig(preset="digits", model=model))
    assert resolved.model.width == width
    assert dataclasses.replace(resolved.model, width=model.width) == model
    # The staged methods with one network per stage use --staged.width; --model.width stays unset
    # (what is filled in for them is the measured velocity estimate and coupling).
    staged = TrainConfig(method="staged", model=model)
    filled = resolve_defaults(staged)
    assert filled.velocity_estimate is not None and filled.coupling is not None and filled.steps == 8000
    unfilled = dataclasses.replace(filled, velocity_estimate=None, reference_pool=None, coupling=None, steps=None)
    assert unfilled == staged


@pytest.mark.parametrize("preset, architecture", [("digits", "conv"), ("gmm2d", "mlp")])
def test_config_saved_with_architecture_auto_still_loads(preset, architecture):
    """Runs saved while "auto" existed (the ConvNet for digits, the MLP otherwise) rebuild the same network."""
    saved = to_json(TrainConfig(preset=preset, model=ModelConfig(width=8)))
    saved["model"]["architecture"] = "auto"
    cfg = train_config_from_json(saved)
    assert cfg.model.architecture == architecture
    assert dataclasses.replace(cfg.model, architecture="mlp") == ModelConfig(width=8)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--steps", "abc"], "--steps"),
        (["train", "--preset", "mnist"], "mnist"),
        (["train", "--method", "magic"], "magic"),
        (["train", "--no-such-flag"], "no-such-flag"),
        (["train", "--data", "/nonexistent/x.npy", *TINY], "no such file"),
        (["train", "--resume", "/nonexistent/run", *TINY], "not a run directory"),
        (["train", "--optim.lr", "-1", "--steps", "3", *TINY], "lr must be positive"),
        (["train", "--staged.num-stages", "4", "--method", "staged", *TINY], "c1 log"),
        (
            ["train", "--method", "ect", "--ect.pretrain-steps", "-1", *TINY],
            "--ect.pretrain-steps: `pretrain_steps` must be an integer >= 0",
        ),
        (["eval", "/nonexistent/run"], "not a ctjax run directory"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_options_give_one_line_errors(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ctjax: error:"), err
    assert match in lines[0]


def test_bad_checkpoint_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--steps", "2", "--out", str(run), *TINY]) == 0
    (run / "checkpoint.npz").write_bytes(b"garbage")
    capsys.readouterr()
    assert cli.main(["eval", str(run)]) == 2
    assert "corrupt" in capsys.readouterr().err


def _train_cmd(out, steps, extra=()):
    return [
        sys.executable,
        "-m",
        "ctjax",
        "train",
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--chunk-size",
        "5",
        "--checkpoint-every",
        "5",
        *TINY,
        *extra,
    ]


def test_killed_run_resumes_bit_identically(tmp_path):
    """SIGKILL a training process mid-run; `--resume` must end exactly where an uninterrupted run ends."""
    # The same fast-compile settings and shared cache as the test process (tests/conftest.py).
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(__file__), "..", ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    steps = 600
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(full, steps), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_train_cmd(killed, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if 0 < _meta(killed)["step"] < steps // 2:
                break
        except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = _meta(killed)["step"]
    assert 0 < stopped_at < steps, stopped_at
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ctjax",
            "train",
            "--resume",
            str(killed),
            "--no-progress",
            "--no-evaluate",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed} at step {stopped_at}" in resumed.stdout
    with zipfile.ZipFile(full / "checkpoint.npz") as a, zipfile.ZipFile(killed / "checkpoint.npz") as b:
        assert a.read("state.eqx") == b.read("state.eqx")
    a, b = _history(full), _history(killed)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["loss"].shape == (steps,)
