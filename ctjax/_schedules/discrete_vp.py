"""Li, Huang and Wei's discrete variance-preserving process, on a continuous time axis."""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._misc import as_float_array, check_value, choice_field, diff, finite
from .base import AbstractSchedule, vp_coefficients


def _check_log_alpha_bar(log_alpha_bar: ArrayLike) -> Array:
    log_alpha_bar = as_float_array(log_alpha_bar, "log_alpha_bar")
    if log_alpha_bar.ndim != 1 or log_alpha_bar.shape[0] < 2:
        raise ValueError(
            f"`log_alpha_bar` must be a vector of at least 2 stages, got shape {tuple(log_alpha_bar.shape)}."
        )
    return check_value(
        log_alpha_bar,
        lambda lab: finite(lab).all() & (lab < 0).all() & (diff(lab) < 0).all(),
        "`log_alpha_bar` must be finite, negative and strictly decreasing (every beta_k in (0, 1))",
        show=False,
    )


class DiscreteVP(AbstractSchedule):
    r"""A discrete VP process $X_k = \sqrt{1-\beta_k} X_{k-1} + \sqrt{\beta_k} W_k$, $k = 1..T$,
    with $\bar\alpha_k = \prod_{j \le k}(1 - \beta_j)$, $\alpha_k = \sqrt{\bar\alpha_k}$,
    $\sigma_k = \sqrt{1 - \bar\alpha_k}$; time runs over $[1, T]$ and stage $k$ sits at $t = k$.

    Between grid points the schedule is interpolated (`"log_alpha_bar"`: piecewise-constant
    $\beta(t)$; or `"log_snr"`: piecewise-linear log noise level). The probability-flow map between
    two grid points depends only on their noise levels, so both give the same flow there.
    """

    log_alpha_bar: Float[Array, " T"] = eqx.field(converter=_check_log_alpha_bar)
    interpolation: str = eqx.field(
        static=True, default="log_alpha_bar", converter=choice_field("interpolation", ("log_alpha_bar", "log_snr"))
    )

    @classmethod
    def from_betas(
        cls, betas: ArrayLike, interpolation: Literal["log_alpha_bar", "log_snr"] = "log_alpha_bar"
    ) -> "DiscreteVP":
        r"""The process with per-step variances `betas` ($\beta_1, \dots, \beta_T$, each in (0, 1))."""
        b = np.asarray(betas, dtype=np.float64)
        if b.ndim != 1 or not np.all((b > 0) & (b < 1)):
            raise ValueError("`betas` must be a vector with every entry in (0, 1).")
        return cls(jnp.asarray(np.cumsum(np.log1p(-b))), interpolation)

    @classmethod
    def li_huang_wei(
        cls,
        num_steps: int,
        c0: float = 2.0,
        c1: float = 4.0,
        interpolation: Literal["log_alpha_bar", "log_snr"] = "log_alpha_bar",
    ) -> "DiscreteVP":
        r"""Li, Huang and Wei's schedule (their eq. (23)):
        $\beta_1 = T^{-c_0}$, $\beta_{k+1} = \frac{c_1 \log T}{T} \min\{\beta_1 (1 + \frac{c_1 \log T}{T})^k, 1\}$.
        """
        T = int(num_steps)
        if T < 2:
            raise ValueError(f"`num_steps` must be at least 2, got {num_steps}.")
        if not (c0 > 0 and c1 > 0):
            raise ValueError(f"Need c0 > 0 and c1 > 0, got c0={c0}, c1={c1}.")
        rate = c1 * np.log(T) / T
        if rate >= 1:
            raise ValueError(
                f"li_huang_wei needs c1 log(T) / T < 1 so that every beta is below 1; got {rate:.3g} "
                f"for num_steps={T}, c1={c1}. Use more steps or a smaller c1."
            )
        k = np.arange(1, T, dtype=np.float64)
        beta1 = float(T) ** (-c0)
        betas = np.concatenate([[beta1], rate * np.minimum(beta1 * np.exp(k * np.log1p(rate)), 1.0)])
        return cls.from_betas(betas, interpolation)

    @property
    def num_steps(self) -> int:
        return self.log_alpha_bar.shape[0]

    @property
    def t_min(self) -> float:
        return 1.0

    @property
    def t_max(self) -> float:
        return float(self.num_steps)

    def stage_times(self) -> Float[Array, " T"]:
        r"""The stage grid $t = 1, \dots, T$."""
        return jnp.arange(1, self.num_steps + 1, dtype=self.log_alpha_bar.dtype)

    def alpha_bar(self) -> Float[Array, " T"]:
        r"""$\bar\alpha_k$ at the stages."""
        return jnp.exp(self.log_alpha_bar)

    def _grid_log_noise(self) -> Array:
        return 0.5 * jnp.log(jnp.expm1(-self.log_alpha_bar))

    def _log_alpha_bar_at(self, t: ArrayLike) -> Array:
        t = jnp.asarray(t)
        return jnp.interp(t, self.stage_times().astype(t.dtype), self.log_alpha_bar.astype(t.dtype))

    def log_noise(self, t: ArrayLike) -> Array:
        t = jnp.asarray(t)
        if self.interpolation == "log_snr":
            return jnp.interp(t, self.stage_times().astype(t.dtype), self._grid_log_noise().astype(t.dtype))
        return 0.5 * jnp.log(jnp.expm1(-self._log_alpha_bar_at(t)))

    def alpha(self, t: ArrayLike) -> Array:
        if self.interpolation == "log_snr":
            return vp_coefficients(self.log_noise(t))[0]
        return jnp.exp(0.5 * self._log_alpha_bar_at(t))

    def sigma(self, t: ArrayLike) -> Array:
        if self.interpolation == "log_snr":
            return vp_coefficients(self.log_noise(t))[1]
        return jnp.sqrt(-jnp.expm1(self._log_alpha_bar_at(t)))

    def time_at_log_noise(self, log_noise: ArrayLike) -> Array:
        lam = jnp.asarray(log_noise)
        times = self.stage_times().astype(lam.dtype)
        # Both interpolations are monotone in t; invert them on the grid.
        if self.interpolation == "log_snr":
            return jnp.interp(lam, self._grid_log_noise().astype(lam.dtype), times)
        neg_lab = jax.nn.softplus(2 * lam)  # -log(alpha_bar) = log(1 + n^2)
        return jnp.interp(neg_lab, -self.log_alpha_bar.astype(lam.dtype), times)
