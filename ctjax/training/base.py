"""The trainer interface (Optax-style pure init/step)."""

import abc

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from .._consistency import AbstractConsistencyModel
from .state import TrainState


class AbstractTrainer(eqx.Module):
    """An immutable bundle of hyperparameters with pure functions

    - `init(model, *, key) -> TrainState`,
    - `step(state, batch, *, key) -> (state, metrics)` where `batch` is data of shape `(B, dim)`,
    - `result(state) -> model` the model to sample from (e.g. the EMA).

    `step` is pure and jit-compatible; `ctjax.training.fit` runs many of them in `lax.scan`.
    """

    @abc.abstractmethod
    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        """The initial state for `model`; `key` seeds all of the run's randomness."""

    @abc.abstractmethod
    def step(self, state: TrainState, batch: Array, *, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        """One optimisation step on a batch of data `(B, dim)`; returns the new state and scalar metrics."""

    @abc.abstractmethod
    def result(self, state: TrainState) -> AbstractConsistencyModel:
        """The trained model to evaluate and sample from."""
