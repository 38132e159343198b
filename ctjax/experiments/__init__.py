"""Experiments: presets, the `ctjax` command line, checkpoints and figures."""

from .checkpoint import (
    CheckpointError as CheckpointError,
    load_checkpoint as load_checkpoint,
    save_checkpoint as save_checkpoint,
)
from .config import (
    EvalConfig as EvalConfig,
    PlotConfig as PlotConfig,
    SampleConfig as SampleConfig,
    TrainConfig as TrainConfig,
)
from .setup import ConfigError as ConfigError
