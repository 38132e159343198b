"""How the teacher parameters follow the student: stop-gradient or an EMA with rate mu(k)."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Int

from .._custom_types import RealScalarLike
from .._misc import check_value, choice_field, int_field


class AbstractTeacher(eqx.Module):
    r"""How the teacher parameters $\theta^-$ follow the student $\theta$."""

    @abc.abstractmethod
    def decay(self, step: Int[ArrayLike, ""], num_scales: Int[ArrayLike, ""]) -> Array | None:
        r"""The EMA rate $\mu$ of $\theta^- \leftarrow \mu\theta^- + (1 - \mu)\theta$, or None for
        a stop-gradient teacher ($\theta^- = \mathrm{sg}(\theta)$, no stored copy)."""


class StopGradientTeacher(AbstractTeacher):
    r"""$\theta^- = \mathrm{sg}(\theta)$ (iCT, ECT, sCM)."""

    def decay(self, step: Int[ArrayLike, ""], num_scales: Int[ArrayLike, ""]) -> None:
        return None


class EMATeacher(AbstractTeacher):
    r"""A constant EMA rate $\mu$ (consistency distillation uses 0.95)."""

    mu: RealScalarLike = eqx.field(
        default=0.95, converter=lambda mu: check_value(mu, lambda m: (m >= 0) & (m < 1), "EMATeacher needs 0 <= mu < 1")
    )

    def decay(self, step: Int[ArrayLike, ""], num_scales: Int[ArrayLike, ""]) -> Array:
        return jnp.asarray(self.mu, jnp.float32)


class AdaptiveEMATeacher(AbstractTeacher):
    r"""Song et al.'s $\mu(k) = \exp(s_0 \log \mu_0 / N(k))$. The official code divides by
    $N(k) - 1$ instead (so $\mu(0) = \mu_0^{s_0/(s_0 - 1)}$): choose with `convention`."""

    mu0: RealScalarLike = eqx.field(
        default=0.9,
        converter=lambda mu: check_value(mu, lambda m: (m > 0) & (m < 1), "AdaptiveEMATeacher needs 0 < mu0 < 1"),
    )
    s0: int = eqx.field(static=True, default=2, converter=int_field("s0", 1))
    convention: str = eqx.field(static=True, default="paper", converter=choice_field("convention", ("paper", "code")))

    def decay(self, step: Int[ArrayLike, ""], num_scales: Int[ArrayLike, ""]) -> Array:
        n = jnp.asarray(num_scales, jnp.float32)
        if self.convention == "code":
            n = n - 1
        return jnp.exp(self.s0 * jnp.log(jnp.asarray(self.mu0, jnp.float32)) / n)
