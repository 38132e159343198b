"""Experiments: presets, the `ctjax` command line, checkpoints and figures."""

from ._checkpoint import (
    CheckpointError as CheckpointError,
    load_checkpoint as load_checkpoint,
    save_checkpoint as save_checkpoint,
)
from ._cli import main as main
from ._config import (
    EvalConfig as EvalConfig,
    PlotConfig as PlotConfig,
    SampleConfig as SampleConfig,
    TrainConfig as TrainConfig,
)
from ._run import (
    evaluate as evaluate,
    load_run as load_run,
    plot as plot,
    sample as sample,
    train as train,
    TrainingDiverged as TrainingDiverged,
)
from ._setup import ConfigError as ConfigError
