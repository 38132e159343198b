"""The command line's options for training without a teacher: --velocity-estimate, --reference-pool
and --coupling reach the trainer, are saved with the run, and are refused where they do not apply."""

import json

import pytest

from ctjax.experiments import _setup as setup
from ctjax.experiments._config import train_config_from_json, TrainConfig
from ctjax.training import Independent, MinibatchOT, OneSample, ReferenceBatch

from .helpers import cli_error


TINY = ["--model.width", "16", "--model.depth", "1", "--batch-size", "32", "--no-progress", "--no-evaluate"]


def _built(**options):
    cfg = setup.resolve_defaults(TrainConfig(**options))
    problem = setup.build_problem(cfg)
    trainer, _, _ = setup.build_method(cfg, problem)
    return cfg, trainer


@pytest.mark.parametrize("method", ["ct", "ict", "ect", "sct", "staged", "staged-shared"])
def test_the_options_reach_every_no_teacher_trainer(method):
    cfg, trainer = _built(method=method, velocity_estimate="reference-batch", reference_pool=64, coupling="ot")
    assert isinstance(trainer.velocity_estimate, ReferenceBatch) and trainer.velocity_estimate.pool_size == 64
    assert isinstance(trainer.coupling, MinibatchOT)
    _, plain = _built(method=method, velocity_estimate="one-sample", coupling="independent")
    assert isinstance(plain.velocity_estimate, OneSample) and isinstance(plain.coupling, Independent)


def test_the_defaults_are_the_measured_best_and_are_saved():
    cfg, trainer = _built(method="ct")
    estimate, pool, coupling = setup.MEASURED_BEST["ct"]
    assert cfg.velocity_estimate == estimate and cfg.coupling == coupling
    want = OneSample if estimate == "one-sample" else ReferenceBatch
    assert isinstance(trainer.velocity_estimate, want)
    if estimate == "reference-batch":
        assert cfg.reference_pool == pool == trainer.velocity_estimate.pool_size
    # A run saved before the options existed resumes with the papers' one-sample velocity.
    legacy = {
        k: v
        for k, v in json.loads(json.dumps(cfg.__dict__, default=str)).items()
        if k
        not in (
            "velocity_estimate",
            "reference_pool",
            "coupling",
            "model",
            "optim",
            "cd",
            "ct",
            "ict",
            "staged",
            "scm",
            "ect",
            "flowmap",
            "data",
            "target",
            "out",
            "resume",
        )
    }
    old = train_config_from_json(legacy)
    assert old.velocity_estimate == "one-sample" and old.coupling == "independent"


def test_a_run_with_the_options_trains_and_records_them(tmp_path, capsys):
    from ctjax.experiments import main

    out = tmp_path / "run"
    argv = ["train", "--method", "ct", "--velocity-estimate", "reference-batch", "--reference-pool", "64"]
    assert main([*argv, "--coupling", "ot", "--steps", "4", "--out", str(out), *TINY]) in (0, None)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["velocity_estimate"], saved["reference_pool"], saved["coupling"]) == ("reference-batch", 64, "ot")
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--method", "cd", "--coupling", "ot"], "--coupling applies to training without a teacher"),
        (["--method", "scd", "--velocity-estimate", "reference-batch"], "--velocity-estimate applies"),
        (["--method", "ct", "--velocity-estimate", "one-sample", "--reference-pool", "8"], "--reference-pool applies"),
        (["--method", "ct", "--velocity-estimate", "reference-batch", "--reference-pool", "-1"], "must be >= 0"),
    ],
)
def test_options_that_do_not_apply_get_one_line(argv, words, tmp_path, capsys):
    line = cli_error(["train", *argv, "--steps", "4", "--out", str(tmp_path / "r"), *TINY], capsys)
    assert words in line


def test_ct_s_constant_curriculum_is_distillation_s_recipe_without_the_teacher():
    from ctjax.experiments._config import CTConfig
    from ctjax.training import ConstantCurriculum, EMATeacher, SqrtCurriculum

    _, constant = _built(method="ct", ct=CTConfig(curriculum="constant", num_scales=30, mu=0.9))
    assert isinstance(constant.curriculum, ConstantCurriculum) and int(constant.curriculum.num_scales(0)) == 30
    assert isinstance(constant.teacher, EMATeacher) and constant.teacher.mu == 0.9
    _, paper = _built(method="ct", ct=CTConfig(curriculum="sqrt"))
    assert isinstance(paper.curriculum, SqrtCurriculum)
    # A run saved before the option existed keeps the paper's curriculum.
    saved = {"method": "ct", "ct": {"s0": 10, "s1": 150, "mu0": 0.95}}
    assert train_config_from_json(saved).ct.curriculum == "sqrt"
