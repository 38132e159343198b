"""Theorem 1 of Li, Huang and Wei (2402.07802) and the Lipschitz constant it needs (theory.md 1.5, 1.6, 7.3)."""

import math

import jax.numpy as jnp
import numpy as np
import scipy.special
from jaxtyping import Array, ArrayLike

from .._misc import as_float_array, check_value, finite
from .._targets import Gaussian
from ._gaussian_oracle import host_eigh, host_grid


def _check_positive(x: Array, name: str, minimum: float = 0.0, strict: bool = True) -> Array:
    rel = ">" if strict else ">="
    return check_value(
        x,
        lambda v: finite(v) & ((v > minimum) if strict else (v >= minimum)),
        f"`{name}` must be finite and {rel} {minimum:g}",
    )


def theorem1_bound(
    num_steps: ArrayLike,
    dim: ArrayLike,
    lipschitz: ArrayLike,
    eps: ArrayLike = 0.0,
    eps_approx: ArrayLike = 0.0,
    constant: ArrayLike = 1.0,
) -> Array:
    r"""The right-hand side of Theorem 1 (Li, Huang and Wei, eq. (24)):

    $W_1(f_T(X_T), X_1) < C L_f^3 d^{5/2} \log^5 T / T + \varepsilon + \varepsilon_{\mathcal F}$.

    **Arguments:**

    - `num_steps`: $T \ge 2$ (broadcasts, so a grid of $T$ works).
    - `dim`: the dimension $d$.
    - `lipschitz`: $L_f$, the Lipschitz constant of every flow map $\Phi_{t \to k}$ (Assumption 1);
      for Gaussian data see `gaussian_flow_lipschitz`.
    - `eps`, `eps_approx`: the cumulative training and approximation errors (Assumption 2).
    - `constant`: the unspecified universal constant $C_1$ (1 by default: the bound's shape, not its value).
    """
    names = ("num_steps", "dim", "lipschitz", "eps", "eps_approx", "constant")
    args = [as_float_array(v, n) for v, n in zip((num_steps, dim, lipschitz, eps, eps_approx, constant), names)]
    args = [
        _check_positive(args[0], "num_steps", 2.0, strict=False),
        _check_positive(args[1], "dim", 1.0, strict=False),
        _check_positive(args[2], "lipschitz"),
        _check_positive(args[3], "eps", strict=False),
        _check_positive(args[4], "eps_approx", strict=False),
        _check_positive(args[5], "constant"),
    ]
    dtype = np.result_type(*(np.dtype(a.dtype) for a in args))
    T, d, L, e, ea, c = (
        jnp.broadcast_to(v.astype(dtype), jnp.broadcast_shapes(*(a.shape for a in args))) for v in args
    )
    return c * L**3 * d**2.5 * jnp.log(T) ** 5 / T + e + ea


def theorem1_required_steps(dim: float, lipschitz: float, eps_total: float, constant: float = 1.0) -> int:
    r"""The smallest $T \ge 2$ from which on Theorem 1's discretisation term stays below `eps_total`:
    $C L^3 d^{5/2} \log^5 T' / T' \le \varepsilon$ for every $T' \ge T$ (the corollary, eq. (25), with
    $\varepsilon$ = `eps_total` $= \varepsilon + \varepsilon_{\mathcal F}$ giving $W_1 \le 2\varepsilon$).

    $\log^5 T / T$ increases up to $T = e^5$ and decreases after, so the answer is 2 when the term's
    maximum $C L^3 d^{5/2}(5/e)^5$ is already below `eps_total`, and otherwise the crossing on the
    decreasing branch, $T = \lceil e^u \rceil$ with $u = -5 W_{-1}(-(\varepsilon/K)^{1/5}/5)$ (Lambert W),
    $K = C L^3 d^{5/2}$. Host-side; returns a Python int (minimal exactly below $2^{52}$, to float64
    resolution above).
    """
    vals = {}
    for name, v in (("dim", dim), ("lipschitz", lipschitz), ("eps_total", eps_total), ("constant", constant)):
        v = float(np.asarray(v))
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"`{name}` must be a finite positive number, got {v}.")
        vals[name] = v
    K = vals["constant"] * vals["lipschitz"] ** 3 * vals["dim"] ** 2.5
    eps = vals["eps_total"]

    def term(T: float) -> float:
        return K * math.log(T) ** 5 / T

    if K * (5.0 / math.e) ** 5 <= eps:
        return 2
    u = float(np.real(-5.0 * scipy.special.lambertw(-((eps / K) ** 0.2) / 5.0, k=-1)))
    if u > 700:
        raise ValueError(
            f"The required number of steps exp({u:.4g}) exceeds the float64 range; check `dim`, `lipschitz` "
            "and `eps_total`."
        )
    T = max(math.ceil(math.exp(u)), 149)  # e^5 < 149: stay on the decreasing branch
    if T < 2**52:  # fix the rounding of exp/lambertw by integer steps
        while term(T) > eps:
            T += 1
        while T - 1 >= 149 and term(T - 1) <= eps:
            T -= 1
    else:  # beyond 2^52 integers are not floats: exact up to float64 resolution only
        while term(T) > eps:
            T = math.ceil(float(T) * (1 + 2.0**-50))
    return T


def gaussian_flow_lipschitz(target: Gaussian, alphas: ArrayLike, sigmas: ArrayLike) -> float:
    r"""Assumption 1's constant for Gaussian data on a stage grid (theory.md 7.3):
    $L_f = \max_{1 \le k < t \le T} \max_i \rho_i(t \to k)$,
    $\rho_i(t \to k) = \sqrt{(a_k^2\lambda_i + s_k^2)/(a_t^2\lambda_i + s_t^2)}$.

    Computed in $O(Td)$ without the $O(T^2)$ pairs: for each $t$ the best $k < t$ is the running maximum of
    $a_k^2\lambda_i + s_k^2$ over the earlier stages (the order $k < t$ matters where that variance is not
    monotone along the grid, as for the linear interpolant). Host-side float64.
    """
    what = "gaussian_flow_lipschitz"
    lam, _ = host_eigh(target, what)
    a, s = host_grid(alphas, sigmas, what)
    earlier_max = a[0] ** 2 * lam + s[0] ** 2  # per direction, max over k < t of the variance
    best = 0.0
    block = max(1, 2**17 // lam.shape[0])
    for lo in range(1, a.shape[0], block):  # blocks of stages, to bound memory
        var = a[lo : lo + block, None] ** 2 * lam[None, :] + s[lo : lo + block, None] ** 2
        running = np.maximum(np.maximum.accumulate(var, axis=0), earlier_max[None, :])
        prev = np.concatenate([earlier_max[None, :], running[:-1]])
        best = max(best, float(np.max(prev / var)))
        earlier_max = running[-1]
    return math.sqrt(best)
