"""Ground-truth throughput: ctjax.flow_map (Diffrax, vmapped) against SciPy's solve_ivp (DOP853).

Both integrate the same ODE (the log-noise form of ctjax.flow_map) from the noise end to the data
end of the EDM schedule for points of the 8-component 2-D mixture, at rtol = atol = 1e-8. SciPy's
right-hand side is an independent NumPy implementation of the mixture posterior, so the maximum
disagreement also cross-checks the JAX code. Prints a table and writes
benchmarks/results/flow_throughput.json. Numbers are medians over repeats in one run.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.random as jr
import numpy as np
import scipy.integrate
import scipy.special

import ctjax
from ctjax.presets import gmm2d


RESULTS = pathlib.Path(__file__).parent / "results"


def numpy_posterior_mean(x, a, s, weights, means, covs):
    """E[x0 | a x0 + s z = x] for a Gaussian mixture, with explicit solves (theory.md 7.2)."""
    d = x.shape[0]
    logs, comp = [], []
    for w, m, c in zip(weights, means, covs):
        cov_t = a * a * c + s * s * np.eye(d)
        r = x - a * m
        sol = np.linalg.solve(cov_t, r)
        logs.append(np.log(w) - 0.5 * r @ sol - 0.5 * np.linalg.slogdet(cov_t)[1])
        comp.append(m + a * c @ sol)
    return scipy.special.softmax(np.array(logs)) @ np.array(comp)


def scipy_flow(x, lam0, lam1, weights, means, covs, rtol, atol):
    def rhs(lam, xt):
        c = 1.0 / np.sqrt(1.0 + np.exp(2 * lam))
        s = np.exp(lam) * c
        return c * (c * xt - numpy_posterior_mean(xt, c, s, weights, means, covs))

    sol = scipy.integrate.solve_ivp(rhs, (lam0, lam1), x, method="DOP853", rtol=rtol, atol=atol)
    return sol.y[:, -1], sol.nfev


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-points", type=int, default=10_000)
    parser.add_argument("--scipy-points", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-8)
    args = parser.parse_args()

    target = gmm2d()
    schedule = ctjax.VarianceExploding(0.002, 80.0)
    t_from, t_to = schedule.t_max, schedule.t_min
    key_x, key_z = jr.split(jr.key(0))
    xs = target.sample(key_x, args.num_points) + t_from * jr.normal(key_z, (args.num_points, 2))

    solve = jax.jit(jax.vmap(lambda x: ctjax.flow_map(target, schedule, x, t_from, t_to, rtol=args.tol, atol=args.tol)))
    start = time.perf_counter()
    out = solve(xs).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = solve(xs).block_until_ready()
        times.append(time.perf_counter() - start)
    jax_s = statistics.median(times)
    jax_rate = args.num_points / jax_s

    lo, hi = -27.6, 27.6
    lam0 = float(np.clip(np.log(t_from), lo, hi))
    lam1 = float(np.clip(np.log(t_to), lo, hi))
    weights, means, covs = (np.asarray(v) for v in (target.weights, target.means, target.covs))
    sub = np.asarray(xs[: args.scipy_points])
    scipy_out, nfevs, per_point = [], [], []
    for x in sub:
        start = time.perf_counter()
        y, nfev = scipy_flow(x / np.hypot(1.0, t_from), lam0, lam1, weights, means, covs, args.tol, args.tol)
        per_point.append(time.perf_counter() - start)
        scipy_out.append(y * np.hypot(1.0, t_to))
        nfevs.append(nfev)
    scipy_rate = 1.0 / statistics.median(per_point)
    disagreement = float(np.max(np.abs(np.array(scipy_out) - np.asarray(out[: args.scipy_points]))))
    # A much tighter solve as reference tells which side the disagreement comes from.
    tight = jax.jit(jax.vmap(lambda x: ctjax.flow_map(target, schedule, x, t_from, t_to, rtol=1e-12, atol=1e-12)))
    reference = np.asarray(tight(xs[: args.scipy_points]))
    ctjax_error = float(np.max(np.abs(np.asarray(out[: args.scipy_points]) - reference)))
    scipy_error = float(np.max(np.abs(np.array(scipy_out) - reference)))

    row = {
        "target": "gmm2d (8 components, full covariances)",
        "schedule": "VarianceExploding(0.002, 80), t_max -> t_min",
        "rtol": args.tol,
        "atol": args.tol,
        "num_points": args.num_points,
        "scipy_points": args.scipy_points,
        "ctjax_seconds_median": jax_s,
        "ctjax_compile_seconds": compile_s,
        "ctjax_points_per_s": jax_rate,
        "scipy_points_per_s": scipy_rate,
        "scipy_median_rhs_evaluations": statistics.median(nfevs),
        "speedup": jax_rate / scipy_rate,
        "max_abs_disagreement": disagreement,
        "ctjax_max_error_vs_rtol_1e-12": ctjax_error,
        "scipy_max_error_vs_rtol_1e-12": scipy_error,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0]),
        },
    }
    print(f"{'':24s}{'points/s':>14s}")
    print(
        f"{'ctjax (vmap, Dopri8)':24s}{jax_rate:14.1f}   ({args.num_points} points, median of {args.repeats}, compile {compile_s:.1f}s)"
    )
    print(f"{'SciPy DOP853':24s}{scipy_rate:14.1f}   ({args.scipy_points} points, median per point)")
    print(f"speedup {row['speedup']:.1f}x, max |ctjax - SciPy| = {disagreement:.2e}")
    print(f"max error against a 1e-12 solve: ctjax {ctjax_error:.2e}, SciPy {scipy_error:.2e}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow_throughput.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
