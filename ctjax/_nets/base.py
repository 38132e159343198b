r"""The abstract network interface: a per-example map $(x, c_{noise}) \mapsto F(x, c_{noise})$."""

import abc
import math
from collections.abc import Callable, Sequence
from typing import ClassVar, TYPE_CHECKING, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._misc import as_float_array, is_concrete


class AbstractNetwork(eqx.Module):
    r"""A network $F_\theta(x, c_{noise})$ acting on one point $x \in \mathbb{R}^d$.

    `c_noise` is a scalar conditioning (for example $\tfrac14 \log n$ for noise level $n$, or the
    TrigFlow time). The output has the shape and dtype of `x`. Randomness (dropout) is used only
    when a `key` is passed; `key=None` is deterministic inference. Use `jax.vmap` for a batch.
    """

    if TYPE_CHECKING:  # an AbstractVar would be a constructor argument to type checkers
        dim: ClassVar[int]
    else:
        dim: eqx.AbstractVar[int]
        """Dimension $d$ of the input and output."""

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, " dim"], c_noise: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        r"""**Arguments:**

        - `x`: one point, shape `(dim,)`.
        - `c_noise`: the scalar conditioning.
        - `key`: a PRNG key for dropout; `None` (the default) means deterministic inference.

        **Returns:**

        $F_\theta(x, c_{noise})$, with the shape and dtype of `x`.
        """


def check_inputs(network: AbstractNetwork, x: ArrayLike, c_noise: ArrayLike) -> tuple[Array, Array]:
    """Check shapes at trace time: `x` one point of shape `(dim,)`, `c_noise` a scalar."""
    x = as_float_array(x, "x")
    c_noise = as_float_array(c_noise, "c_noise")
    dim = network.dim
    if x.ndim != 1 or x.shape[0] != dim:
        hint = " For a batch of points use jax.vmap." if x.ndim == 2 and x.shape[-1] == dim else ""
        raise ValueError(
            f"`x` must be one point of shape ({dim},) for {type(network).__name__}, got shape {tuple(x.shape)}.{hint}"
        )
    if c_noise.ndim != 0:
        raise ValueError(
            f"`c_noise` must be a scalar, got shape {tuple(c_noise.shape)}; "
            "networks act on one example: use jax.vmap for a batch."
        )
    return x, c_noise


def promote_dtypes(*dtypes):
    """`jnp.promote_types` over `dtypes` under standard promotion (also valid when JAX's promotion is strict)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*dtypes)


def param_dtype(tree: PyTree):
    """The floating dtype of the first floating array leaf of `tree` (the parameters' dtype)."""
    for leaf in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array)):
        return leaf.dtype
    return jnp.result_type(float)


def cast_floating(tree: PyTree, dtype) -> PyTree:
    """Cast every floating array leaf of `tree` to `dtype` (a no-op where it already matches)."""

    def cast(leaf):
        if eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != dtype:
            return leaf.astype(dtype)
        return leaf

    return jax.tree_util.tree_map(cast, tree)


def dropout_masks(key: PRNGKeyArray | None, rate: float, shapes: Sequence[tuple[int, ...]]) -> tuple[Array | None, ...]:
    """Keep-masks (True with probability $1 - rate$) for arrays of `shapes`, all from one Bernoulli draw
    (one random-number kernel to compile, however many layers drop out); Nones when `key` is None or
    `rate` is 0."""
    if key is None or rate == 0.0:
        return (None,) * len(shapes)
    sizes = [math.prod(shape) for shape in shapes]
    keep = jr.bernoulli(key, 1.0 - rate, (sum(sizes),))
    offsets = np.cumsum([0, *sizes])
    return tuple(keep[lo:hi].reshape(shape) for lo, hi, shape in zip(offsets[:-1], offsets[1:], shapes))


def apply_dropout(h: Array, rate: float, keep: Array | None) -> Array:
    """Inverted dropout: zero `h` where `keep` is False and scale the rest by $1/(1 - rate)$.

    The identity when `keep` is None.
    """
    if keep is None:
        return h
    return jnp.where(keep, h / (1.0 - rate), jnp.zeros_like(h))


def validate_dropout(dropout: float) -> float:
    """`dropout` as a float, or a ValueError unless it lies in [0, 1)."""
    dropout = float(dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must lie in [0, 1), got {dropout}.")
    return dropout


_T = TypeVar("_T")


def _is_layer(node) -> bool:
    return isinstance(node, (eqx.nn.Linear, eqx.nn.Conv, eqx.nn.GroupNorm))


def init_layers(build: Callable[[PRNGKeyArray], _T], key: PRNGKeyArray) -> _T:
    r"""`build(key)` with freshly drawn parameters, compiled once rather than once per layer shape.

    `build` is only traced abstractly (`eqx.filter_eval_shape`) for the layers' shapes. Linear and
    convolution weights and biases are then drawn from Equinox's default law, uniform on
    $\pm 1/\sqrt{\text{fan-in}}$, by a single `jax.random.uniform` call; GroupNorm starts at weight 1,
    bias 0. (Equinox's layer constructors would compile a random-number kernel for every distinct
    parameter shape, which dominates the construction time of a small network.) The only array
    leaves `build` may create are those of `eqx.nn.Linear`, `eqx.nn.Conv` and `eqx.nn.GroupNorm`.
    """
    shapes = eqx.filter_eval_shape(build, key)
    layers = [node for node in jax.tree_util.tree_leaves(shapes, is_leaf=_is_layer) if _is_layer(node)]
    random_layers = [layer for layer in layers if not isinstance(layer, eqx.nn.GroupNorm)]
    sizes = [
        sum(math.prod(p.shape) for p in (layer.weight, layer.bias) if p is not None)  # pyright: ignore
        for layer in random_layers
    ]
    dtypes = {layer.weight.dtype for layer in random_layers}  # pyright: ignore
    if len(dtypes) > 1:
        raise ValueError(f"All layers must share one parameter dtype, got {sorted(map(str, dtypes))}.")
    dtype = dtypes.pop() if dtypes else jnp.result_type(float)
    # Drawing a power-of-two count (at least 4096) lets networks of similar size share the compiled kernel.
    num = max(1 << max(sum(sizes) - 1, 0).bit_length(), 4096)
    draws = jr.uniform(key, (num,), dtype, minval=-1.0, maxval=1.0)
    if is_concrete(draws):
        # Slice on the host: no kernel to compile per parameter shape. (Under jit/vmap, e.g. for an
        # ensemble built with `eqx.filter_vmap`, the key is traced and slicing stays in JAX.)
        draws = np.asarray(draws)

    initialised = {}
    offset = 0
    for layer in layers:
        if isinstance(layer, eqx.nn.GroupNorm):
            params = [
                None if p is None else jnp.asarray(np.full(p.shape, value, p.dtype))
                for p, value in ((layer.weight, 1.0), (layer.bias, 0.0))
            ]
        else:
            lim = 1.0 / math.sqrt(math.prod(layer.weight.shape[1:]))  # pyright: ignore
            params = []
            for p in (layer.weight, layer.bias):  # pyright: ignore
                if p is None:
                    params.append(None)
                    continue
                size = math.prod(p.shape)
                params.append(jnp.asarray(lim * draws[offset : offset + size].reshape(p.shape)))
                offset += size
        initialised[id(layer)] = eqx.tree_at(
            lambda m: [p for p in (m.weight, m.bias) if p is not None],
            layer,
            [p for p in params if p is not None],
        )

    def fill(node):
        if _is_layer(node):
            return initialised[id(node)]
        if isinstance(node, jax.ShapeDtypeStruct):
            raise ValueError(f"`build` created an array outside a Linear/Conv/GroupNorm layer: {node}.")
        return node

    return jax.tree_util.tree_map(fill, shapes, is_leaf=_is_layer)


def zero_layer(layer: _T) -> _T:
    """`layer` (a Linear or convolution) with its weight and bias set to zero."""
    return eqx.tree_at(
        lambda m: (m.weight, m.bias),  # pyright: ignore
        layer,
        replace_fn=lambda p: jnp.asarray(np.zeros(p.shape, p.dtype)),
    )
