"""sCM's learned adaptive weighting of the loss over time."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import DTypeLike
from .._misc import validate_int
from .._nets.base import init_layers, zero_layer
from .._nets.embeddings import FourierEmbedding


class AdaptiveWeighting(eqx.Module):
    r"""sCM's learned log-weight $w_\phi(t)$: random Fourier features of $t$, one hidden SiLU layer,
    and a scalar output layer that starts at zero (so $w \equiv 0$ at initialisation).

    Trained jointly with the model on $e^{w}\, m - w$ for the residual $m$, whose minimiser over
    $w$ is $-\log E[m \mid t]$: $e^{-w}$ tracks the residual's scale per time (FastGen's `logvar` $= -w$).
    """

    embedding: FourierEmbedding
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(
        self,
        width: int = 32,
        num_features: int = 32,
        embedding_scale: float = 1.0,
        *,
        key: PRNGKeyArray,
        dtype: DTypeLike | None = None,
    ):
        r"""**Arguments:**

        - `width`: hidden width.
        - `num_features`: number of Fourier features of $t$ (even).
        - `embedding_scale`: standard deviation of the Fourier frequencies (in cycles per unit of
          $t \in [0, \pi/2]$; 1 gives smooth functions of $t$).
        - `key`: PRNG key of the initial parameters.
        - `dtype`: parameter dtype.
        """
        width = validate_int(width, "width")
        self.embedding = FourierEmbedding(num_features, scale=embedding_scale)
        hidden, out = init_layers(
            lambda k: (
                eqx.nn.Linear(num_features, int(width), dtype=dtype, key=jr.fold_in(k, 0)),
                eqx.nn.Linear(int(width), "scalar", dtype=dtype, key=jr.fold_in(k, 1)),
            ),
            key,
        )
        self.hidden = hidden
        self.out = zero_layer(out)

    def __call__(self, t: ArrayLike) -> Float[Array, ""]:
        r"""$w_\phi(t)$ for a scalar `t`, in the parameters' dtype."""
        dtype = self.hidden.weight.dtype
        emb = self.embedding(jnp.asarray(t)).astype(dtype)
        return self.out(jax.nn.silu(self.hidden(emb)))
