"""The exact probability-flow map, solved with Diffrax in log noise level."""

import diffrax as dfx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._schedules import AbstractSchedule
from .._schedules.base import vp_coefficients
from .._targets import AbstractTarget
from .fields import _prepare


def _log_noise_field(lam, xt, target: AbstractTarget):
    # State xt = x / sqrt(alpha^2 + sigma^2), independent variable lam = log(sigma / alpha).
    # With (c, s) = (cos, sin) of arctan(e^lam): dxt/dlam = c (c xt - D(xt; c, s)), the VE
    # equation dy/dlam = y - D_VE(y, e^lam) for y = xt / c, rescaled so that it stays bounded
    # at both ends and decays exponentially in |lam| there.
    c, s = vp_coefficients(lam)
    c = c.astype(xt.dtype)
    s = s.astype(xt.dtype)
    return c * (c * xt - target.posterior_mean(xt, c, s))


_TERM = dfx.ODETerm(_log_noise_field)

DEFAULT_LOG_NOISE_RANGE = (-27.6, 27.6)  # noise levels 1e-12 .. 1e12
DEFAULT_SOLVER = dfx.Dopri8()
# The controller sees only the error of the solution, not of its derivatives: where the solution
# is trivial (the mean of a Gaussian stays put) it would take huge steps and jax.jacfwd of the map
# would be wrong by O(1). Bounding the step in log noise level keeps derivatives at 1e-9.
DEFAULT_MAX_STEP = 0.5
# DirectAdjoint supports forward and reverse mode (jax.jacfwd and jax.grad) at the same primal speed.
DEFAULT_ADJOINT = dfx.DirectAdjoint()


def flow_map(
    target: AbstractTarget,
    schedule: AbstractSchedule,
    x: ArrayLike,
    t_from: ArrayLike,
    t_to: ArrayLike,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    solver: dfx.AbstractAdaptiveSolver = DEFAULT_SOLVER,
    max_steps: int = 4096,
    adjoint: dfx.AbstractAdjoint = DEFAULT_ADJOINT,
    log_noise_range: tuple[float, float] = DEFAULT_LOG_NOISE_RANGE,
    max_step: float | None = DEFAULT_MAX_STEP,
) -> Float[Array, " dim"]:
    r"""The exact probability-flow map $\Phi_{t_{from} \to t_{to}}(x)$ for one point `x`.

    Solved in the variance-exploding reduction (theory.md section 7.4), with log noise level
    $\lambda = \log(\sigma/\alpha)$ as time and the state $x / \sqrt{\alpha^2 + \sigma^2}$, so
    the vector field $c(c\,x - D)$ with $c = (1 + e^{2\lambda})^{-1/2}$ is bounded everywhere and decays
    like $e^{-|\lambda|}$ at both ends. Infinite noise levels (e.g. the linear interpolant at
    $t = 1$) and zero noise levels (at $t = 0$) are cut off at `log_noise_range`, where the
    neglected tail is below $10^{-12}$ times the data scale.

    Works in both directions, under `jit` and `vmap`, and is differentiable in forward and reverse
    mode with the default `DirectAdjoint` (so `jax.jacfwd` gives its Jacobian).

    **Arguments:**

    - `target`, `schedule`: the data distribution and the interpolant.
    - `x`: one point of shape `(dim,)` at time `t_from`.
    - `t_from`, `t_to`: scalar times in `[schedule.t_min, schedule.t_max]`.
    - `rtol`, `atol`: tolerances of the adaptive step-size controller.
    - `solver`, `max_steps`, `adjoint`: passed to `diffrax.diffeqsolve`.
    - `log_noise_range`: where to cut off $\lambda$ at the ends.
    - `max_step`: the largest step in $\lambda$; it bounds the error of derivatives of the map,
      which the step-size controller does not see.
    """
    t_from, x = _prepare(target, schedule, t_from, x, "t_from")
    t_to, _ = _prepare(target, schedule, t_to, x, "t_to")
    lo, hi = log_noise_range
    lam_from = jnp.clip(schedule.log_noise(t_from), lo, hi).astype(x.dtype)
    lam_to = jnp.clip(schedule.log_noise(t_to), lo, hi).astype(x.dtype)
    scale_from = jnp.hypot(schedule.alpha(t_from), schedule.sigma(t_from)).astype(x.dtype)
    scale_to = jnp.hypot(schedule.alpha(t_to), schedule.sigma(t_to)).astype(x.dtype)
    sol = dfx.diffeqsolve(
        _TERM,
        solver,
        lam_from,
        lam_to,
        None,
        x / scale_from,
        target,
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol, dtmax=max_step),
        max_steps=max_steps,
        adjoint=adjoint,
    )
    assert sol.ys is not None
    return sol.ys[-1] * scale_to
