"""Small internal helpers: input validation and dtype handling."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when `x` holds a value now (not a tracer inside jit/vmap/grad)."""
    leaves = jax.tree_util.tree_leaves(x)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)  # pyright: ignore[reportAttributeAccessIssue]


def as_float_array(x: Any, name: str, dtype=None) -> jax.Array:
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


def check_finite(x: jax.Array, name: str) -> None:
    """Raise a ValueError if a concrete array holds NaN or infinity (no-op under tracing)."""
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"`{name}` contains NaN or infinite values; pass finite numbers.")


def check_shape(x: jax.Array, shape: tuple, name: str, hint: str = "") -> None:
    """Raise a ValueError naming `name` unless `x.shape` matches `shape` (None = any size)."""
    ok = x.ndim == len(shape) and all(s is None or s == xs for s, xs in zip(shape, x.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"`{name}` must have shape {want}, got {tuple(x.shape)}.{(' ' + hint) if hint else ''}")


def check_time(schedule, t: Any, name: str, *, traced: bool = True) -> jax.Array:
    """Check that `t` is a scalar inside [t_min, t_max] of `schedule`.

    Concrete values raise a ValueError at once; traced values are checked at run time with
    `eqx.error_if`, whose result must be used (it is returned), unless `traced` is False (for hot
    paths whose traced times are in range by construction).
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
        f"`{name}` must lie in [t_min, t_max] of {type(schedule).__name__}"
        f"{_range_text(schedule)}; clip it to the schedule's range."
    )
    if is_concrete((t, lo, hi)):
        if not bool(np.isfinite(np.asarray(t))):
            raise ValueError(f"`{name}` must be finite, got {float(t)}.")
        if bool(t < lo) or bool(t > hi):
            raise ValueError(msg.replace("must lie", f"= {float(t)} must lie"))
        return t
    if not traced:
        return t
    return eqx.error_if(t, (t < lo) | (t > hi) | ~jnp.isfinite(t), msg)


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
