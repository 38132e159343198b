"""Small internal helpers: input validation and dtype handling.

Checks of values follow one rule: where the outcome is known now (concrete values), a failure
raises a `ValueError` (or `TypeError`) at once; where it is traced (under `jit`, `vmap`, `grad`),
the check runs when the program runs, by `eqx.error_if` with the same message, and the checked
value replaces the unchecked one so that the check is part of the computation. Shapes, types and
static fields are always concrete.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax


_T = TypeVar("_T")

# The messages of ctjax's run-time checks (a bounded set: one per check site and schedule class).
_RUNTIME_MESSAGES: set[str] = set()


class _QuietFailedChecks(logging.Filter):
    """JAX logs every exception raised inside a callback, with a long traceback, before raising it
    again as a `JaxRuntimeError` (jax-ml/jax#26102). For a failed ctjax check that log only repeats
    the error the caller receives; drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or record.getMessage() != "jax.pure_callback failed":
            return True
        text = str(error)
        return not any(message in text for message in _RUNTIME_MESSAGES)


logging.getLogger("jax._src.callback").addFilter(_QuietFailedChecks())


def runtime_check(value: _T, failed: Any, message: str) -> _T:
    """`eqx.error_if(value, failed, message)`: `value`, which raises `message` when the program runs
    and `failed` holds (for traced values; `eqx.filter_jit` shows the message alone)."""
    _RUNTIME_MESSAGES.add(message)
    return eqx.error_if(value, failed, message)


def is_concrete(x: Any) -> bool:
    """True when `x` holds a value now (not a tracer inside jit/vmap/grad)."""
    leaves = jax.tree_util.tree_leaves(x)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)  # pyright: ignore[reportAttributeAccessIssue]


def _show(value: Any) -> str:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)
    array = np.asarray(value)
    if array.ndim == 0:
        return repr(array.item())
    return str(array.tolist()) if array.size <= 8 else f"an array of shape {array.shape}"


def finite(x: Any) -> Any:
    """Elementwise "is finite" that stays in NumPy for NumPy input and in JAX for JAX input (NaN and
    infinities are not below infinity), so that checks of concrete values dispatch no JAX kernels."""
    return abs(x) < np.inf


def diff(x: Any) -> Any:
    """`x[1:] - x[:-1]` for NumPy and JAX arrays alike."""
    return x[1:] - x[:-1]


def _passed(result: Any) -> bool:
    return bool(np.all(np.asarray(result)))


def check_value(value: _T, ok: Callable[[Any], Any], message: str, *, show: bool = True) -> _T:
    """`value`, checked: `ok(value)` (elementwise booleans; NaN must give False) must hold everywhere.

    Where the outcome is known now, a failure raises `ValueError(message + ", got <value>.")`
    (without the value when `show` is False). Where it is traced (a traced `value`, or a concrete
    one checked against traced bounds), `value` comes back wrapped in `eqx.error_if(..., message + ".")`.
    """
    concrete = is_concrete(value)
    # Evaluated now where possible (in NumPy for concrete values), also inside a traced function.
    with jax.ensure_compile_time_eval():
        result = ok(np.asarray(value) if concrete else jnp.asarray(value))
    if is_concrete(result):
        if not _passed(result):
            raise ValueError(f"{message}, got {_show(value)}." if show else f"{message}.")
        return value
    return runtime_check(value, ~jnp.all(result), f"{message}.")


def check_values(names: Sequence[str], values: tuple, ok: Callable[..., Any], message: str) -> tuple[Any, ...]:
    """`values`, checked together: `ok(*values)` must hold everywhere.

    Where the outcome is known now, a failure raises `ValueError(message + ", got name=value, ...")`;
    where it is traced, the values come back wrapped in `eqx.error_if(..., message + ".")`.
    """
    values = tuple(values)
    concrete = is_concrete(values)
    with jax.ensure_compile_time_eval():
        result = ok(*(np.asarray(v) if concrete else jnp.asarray(v) for v in values))
    if is_concrete(result):
        if not _passed(result):
            got = ", ".join(f"{name}={_show(v)}" for name, v in zip(names, values))
            raise ValueError(f"{message}, got {got}.")
        return values
    return runtime_check(values, ~jnp.all(result), f"{message}.")


def check_fields(module: eqx.Module, names: Sequence[str], ok: Callable[..., Any], message: str) -> None:
    """For `__check_init__`: `check_values` on the fields `names` of `module`.

    Where any of them is traced, the fields are replaced by their checked versions (as a converter
    would replace them), so that a module built under `jit` or `vmap` with bad values fails when used.
    """
    values = tuple(getattr(module, name) for name in names)
    checked = check_values(names, values, ok, message)
    if not is_concrete(values):
        for name, value in zip(names, checked):
            # Still inside construction: `__check_init__` runs before the module is returned.
            object.__setattr__(module, name, value)


def validate_int(value: Any, name: str, minimum: int | None = 1) -> int:
    """`value` as an int, or a ValueError naming `name` unless it is an integer >= `minimum`
    (any integer for `minimum=None`)."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and (minimum is None or int(value) >= minimum)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"`{name}` must be an integer{bound}, got {value!r}.")
    return int(value)


def int_field(name: str, minimum: int | None = 1) -> Callable[[Any], int]:
    """A converter for an integer field: `validate_int(value, name, minimum)`."""
    return lambda value: validate_int(value, name, minimum)


def validate_bool(value: Any, name: str) -> bool:
    """`value` as a bool, or a TypeError naming `name` unless it is one (NumPy's bools included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def bool_field(name: str) -> Callable[[Any], bool]:
    """A converter for a boolean field."""
    return lambda value: validate_bool(value, name)


def choice_field(name: str, choices: Sequence[str]) -> Callable[[Any], str]:
    """A converter for a string field that must be one of `choices`."""

    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")
        return value

    return convert


def positive_field(name: str, message: str | None = None) -> Callable[[_T], _T]:
    """A converter for a hyperparameter that must be positive (and finite), traced or not."""
    message = f"`{name}` must be positive and finite" if message is None else message
    return lambda value: check_value(value, lambda v: (v > 0) & finite(v), message)


def non_negative_field(name: str, message: str | None = None) -> Callable[[_T], _T]:
    """A converter for a hyperparameter that must be non-negative (and finite), traced or not."""
    message = f"`{name}` must be non-negative and finite" if message is None else message
    return lambda value: check_value(value, lambda v: (v >= 0) & finite(v), message)


def optional(converter: Callable[[Any], _T]) -> Callable[[Any], _T | None]:
    """`converter`, except that None stays None (an optional field)."""
    return lambda value: None if value is None else converter(value)


def static_float_in(name: str, low: float, high: float, what: str) -> Callable[[Any], float]:
    """A converter for a static field that must be a Python float in [low, high] (`what` describes it)."""

    def convert(value: Any) -> float:
        try:
            value = float(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be a number, got {type(value).__name__}.") from err
        if not (low <= value <= high):
            raise ValueError(f"`{name}` must be {what}, got {value}.")
        return value

    return convert


def static_positive_float(name: str) -> Callable[[Any], float]:
    """A converter for a static field that must be a positive finite Python float."""

    def convert(value: Any) -> float:
        try:
            value = float(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be a number, got {type(value).__name__}.") from err
        if not (value > 0 and np.isfinite(value)):
            raise ValueError(f"`{name}` must be positive and finite, got {value}.")
        return value

    return convert


def finite_field(name: str) -> Callable[[_T], _T]:
    """A converter for a hyperparameter that must be a finite number, traced or not."""
    return lambda value: check_value(value, finite, f"`{name}` must be a finite number")


def check_ema_rate(ema_rate: _T) -> _T:
    """`ema_rate`, which must be None or in [0, 1) (traced or not); a converter."""
    if ema_rate is None:
        return ema_rate
    return check_value(ema_rate, lambda r: (r >= 0) & (r < 1), "`ema_rate` must be in [0, 1) or None")


def check_p_std(p_std: _T) -> _T:
    """`p_std`, the spread of a log-normal time proposal, which must be positive (traced or not); a converter."""
    return positive_field("p_std")(p_std)


def check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    """`optimizer`, or a TypeError unless it is an `optax.GradientTransformation`; a converter."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation (e.g. optax.adam(1e-3)), got "
            f"{type(optimizer).__name__}."
        )
    return optimizer


def check_instance(value: Any, kind: type | tuple[type, ...], name: str, what: str) -> None:
    """A TypeError naming `name` unless `value` is an instance of `kind` (described as `what`)."""
    if not isinstance(value, kind):
        raise TypeError(f"`{name}` must be {what}, got {type(value).__name__}.")


def as_float_array(x: Any, name: str, dtype: Any = None) -> jax.Array:
    """Convert to a floating JAX array; integers become the default float dtype."""
    try:
        arr = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"`{name}` must be an array of real numbers, got {type(x).__name__}.") from err
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be real, got dtype {arr.dtype}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        if not (jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == jnp.bool_):
            raise TypeError(f"`{name}` must be an array of real numbers, got dtype {arr.dtype}.")
        arr = arr.astype(jnp.result_type(float))
    if dtype is not None:
        arr = arr.astype(dtype)
    return arr


def check_finite(x: jax.Array, name: str) -> jax.Array:
    """`x`, which must hold no NaN or infinity: checked at once when concrete, at run time when traced."""
    return check_value(x, finite, f"`{name}` contains NaN or infinite values; pass finite numbers", show=False)


def check_shape(x: jax.Array, shape: tuple, name: str, hint: str = "") -> None:
    """Raise a ValueError naming `name` unless `x.shape` matches `shape` (None = any size)."""
    ok = x.ndim == len(shape) and all(s is None or s == xs for s, xs in zip(shape, x.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"`{name}` must have shape {want}, got {tuple(x.shape)}.{(' ' + hint) if hint else ''}")


def check_time(schedule, t: Any, name: str, *, traced: bool = True) -> jax.Array:
    """Check that `t` is a scalar inside [t_min, t_max] of `schedule`.

    Concrete values raise a ValueError at once; traced values are checked at run time with
    `eqx.error_if` (the same message), whose result must be used (it is returned), unless `traced`
    is False (the staged models' own stage times, which are in range by construction).
    """
    t = as_float_array(t, name)
    if t.ndim != 0:
        raise ValueError(
            f"`{name}` must be a scalar time, got shape {tuple(t.shape)}; "
            "functions in ctjax act on one example: use jax.vmap for a batch of times."
        )
    lo = jnp.asarray(schedule.t_min, dtype=t.dtype)
    hi = jnp.asarray(schedule.t_max, dtype=t.dtype)
    msg = (
        f"`{name}` must be a finite time in [t_min, t_max] of {type(schedule).__name__}"
        f"{_range_text(schedule)}; clip it to the schedule's range"
    )
    if is_concrete((t, lo, hi)):
        if not (bool(jnp.isfinite(t)) and bool(lo <= t) and bool(t <= hi)):
            raise ValueError(f"{msg}, got {float(t)}.")
        return t
    if not traced:
        return t
    return runtime_check(t, ~((lo <= t) & (t <= hi)), f"{msg}.")


def _range_text(schedule) -> str:
    if is_concrete((schedule.t_min, schedule.t_max)):
        return f" = [{float(schedule.t_min):g}, {float(schedule.t_max):g}]"
    return ""


def check_point(x: Any, dim: int, name: str = "x") -> jax.Array:
    """Check that `x` is one point of dimension `dim` (shape `(dim,)`)."""
    x = as_float_array(x, name)
    if x.ndim != 1 or x.shape[0] != dim:
        hint = " For a batch of points use jax.vmap." if x.ndim == 2 and x.shape[-1] == dim else ""
        raise ValueError(
            f"`{name}` must be one point of shape ({dim},) matching the target's dimension, "
            f"got shape {tuple(x.shape)}.{hint}"
        )
    return x
