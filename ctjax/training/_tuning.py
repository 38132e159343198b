"""Two trainers in one run: pre-train with one, then tune its result with the other."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._consistency import AbstractConsistencyModel
from .._custom_types import Batch
from .._misc import check_instance, int_field, is_concrete
from ._base import AbstractTrainer, partition_trainable, TrainState, tree_select


def _with_step(state: TrainState, step) -> TrainState:
    return eqx.tree_at(lambda s: s.step, state, jnp.asarray(step, state.step.dtype))


def _cond(pred, true_fn, false_fn, tree):
    """`lax.cond` on the arrays of `tree` only: its other leaves (a schedule's Python floats, say)
    stay as they are, and both branches must return the same ones."""
    dynamic, static = eqx.partition(tree, eqx.is_array)
    out_static = []

    def branch(fn):
        def run(dynamic):
            out_dynamic, static_part = eqx.partition(fn(eqx.combine(dynamic, static)), eqx.is_array)
            out_static.append(static_part)
            return out_dynamic

        return run

    out = jax.lax.cond(pred, branch(true_fn), branch(false_fn), dynamic)
    if not eqx.tree_equal(*out_static):
        raise ValueError(f"the two branches return different static parts: {out_static[0]} and {out_static[1]}.")
    return eqx.combine(out, out_static[0])


def _trainable_from(new_model, old_model):
    """`new_model`'s trainable arrays with everything else of `old_model` (None: `new_model`)."""
    if old_model is None:
        return new_model
    return eqx.combine(partition_trainable(new_model)[0], partition_trainable(old_model)[1])


def _signature(tree):
    return jax.tree_util.tree_structure(tree), [
        (leaf.shape, leaf.dtype) for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "shape")
    ]


def _differing_fields(a: TrainState, b: TrainState) -> list[str]:
    return [
        name for name in TrainState.__dataclass_fields__ if _signature(getattr(a, name)) != _signature(getattr(b, name))
    ]


class PretrainThenTune(AbstractTrainer):
    r"""`pretrain` for the first `pretrain_steps` steps, then `tune` starting from `pretrain`'s result:
    ECT's recipe (Geng et al. 2024) of tuning a pre-trained diffusion model, as one run that `fit`
    drives, one compiled program, and one state that a checkpoint saves and resumes anywhere (the
    switch included).

    After step `pretrain_steps` the state becomes `tune.init(pretrain.result(state))` at that step:
    the model carries over (the pre-training EMA where there is one), while the optimiser state (so
    a learning-rate schedule of `tune`'s optimiser) and the evaluation EMA start afresh, as when a
    tuning run loads a pre-trained checkpoint. `tune` then sees its own step count,
    `step - pretrain_steps` (ECT's stages start at 0); the random key of every step remains the
    run's, $\mathrm{fold\_in}(key, step)$.

    The two trainers must keep states of one structure (for instance `DenoisingTrainer` and
    `ECTTrainer` with optimisers built alike, both with an EMA or both without); `init` checks.
    The metrics are the union of both trainers' metrics, zero where a phase has none, and `phase`
    (0 while pre-training, 1 while tuning).

    **Arguments:**

    - `pretrain`, `tune`: the two trainers.
    - `pretrain_steps`: steps of `pretrain` (0: `tune` alone).
    """

    pretrain: AbstractTrainer
    tune: AbstractTrainer
    pretrain_steps: int = eqx.field(static=True, converter=int_field("pretrain_steps", 0))

    def __check_init__(self):
        check_instance(self.pretrain, AbstractTrainer, "pretrain", "a ctjax trainer")
        check_instance(self.tune, AbstractTrainer, "tune", "a ctjax trainer")

    def _handover(self, state: TrainState) -> TrainState:
        tuned = self.tune.init(self.pretrain.result(state), key=state.key)
        # The models' constants (a schedule's floats) stay the incoming state's own objects, which
        # `lax.cond` and `fit`'s scan then pass through unchanged: with the pre-training EMA's
        # copies instead they would come out of `fit` as arrays, and the next call would recompile.
        tuned = dataclasses.replace(
            tuned,
            model=_trainable_from(tuned.model, state.model),
            ema=_trainable_from(tuned.ema, state.ema) if tuned.ema is not None else None,
        )
        return _with_step(tuned, state.step)

    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        if self.pretrain_steps == 0:
            return self.tune.init(model, key=key)
        state = self.pretrain.init(model, key=key)
        tuned = eqx.filter_eval_shape(self._handover, state)
        if _signature(tuned) != _signature(state):
            fields = ", ".join(f"`{name}`" for name in _differing_fields(tuned, state))
            raise ValueError(
                f"`pretrain` ({type(self.pretrain).__name__}) and `tune` ({type(self.tune).__name__}) keep training "
                f"states that differ in {fields}, so one run cannot switch between them: build both optimisers "
                "alike (the same chain of transformations) and give both an EMA (`ema_rate`) or neither. A trainer "
                "with state of its own (sCT/sCD's adaptive weighting) cannot be switched to: pre-train in a run of "
                "its own and pass the result to its `init`."
            )
        return state

    def step(self, state: TrainState, batch: Batch, *, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        n = self.pretrain_steps
        shapes = {
            **eqx.filter_eval_shape(self.pretrain.step, state, batch, key=key)[1],
            **eqx.filter_eval_shape(self.tune.step, state, batch, key=key)[1],
        }

        def union(metrics, phase):
            out = {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()}
            out.update({name: jnp.asarray(v).astype(shapes[name].dtype) for name, v in metrics.items()})
            return {**out, "phase": jnp.asarray(phase, jnp.int32)}

        def pretraining(state):
            state, metrics = self.pretrain.step(state, batch, key=key)
            state = _cond(state.step == n, self._handover, lambda s: s, state)
            return state, union(metrics, 0)

        def tuning(state):
            state, metrics = self.tune.step(_with_step(state, state.step - n), batch, key=key)
            return _with_step(state, state.step + n), union(metrics, 1)

        if n == 0:
            return tuning(state)
        return _cond(state.step < n, pretraining, tuning, state)

    def result(self, state: TrainState) -> AbstractConsistencyModel:
        if is_concrete(state.step):
            return (self.pretrain if int(state.step) < self.pretrain_steps else self.tune).result(state)
        return tree_select(state.step < self.pretrain_steps, self.pretrain.result(state), self.tune.result(state))
