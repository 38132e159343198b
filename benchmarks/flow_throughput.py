"""Ground-truth throughput: ctjax.flow_map (Diffrax, vmapped) against SciPy's solve_ivp (DOP853)
and, when installed (the `bench` extra), torchdiffeq's batched dopri8.

All integrate the same ODE (the log-noise form of ctjax.flow_map) from the noise end to the data
end of the EDM schedule for points of the 8-component 2-D mixture, at rtol = atol = 1e-8, in
float64. SciPy's right-hand side is an independent NumPy implementation of the mixture posterior,
and torchdiffeq's an independent batched PyTorch one, so the disagreements also cross-check the
JAX code. torchdiffeq solves the whole batch as one ODE (one step size for all points, its usual
use), accepting a step when the RMS scaled error of every point is within tolerance, which is
ctjax's per-point criterion. Prints a table and writes benchmarks/results/flow_throughput.json. Numbers are
medians over repeats in one run.
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


def torch_flow(x, lam0, lam1, weights, means, covs, rtol, atol):
    """torchdiffeq's dopri8 on the whole (N, 2) batch in float64: (solution, RHS evaluations)."""
    import torch
    import torchdiffeq

    weights, means, covs = (torch.from_numpy(np.array(v, np.float64)) for v in (weights, means, covs))
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    calls = [0]

    def posterior_mean(xt, a, s):
        cov_t = a * a * covs + s * s * eye  # (K, d, d)
        r = xt[:, None, :] - a * means[None]  # (N, K, d)
        sol = torch.linalg.solve(cov_t[None], r.unsqueeze(-1)).squeeze(-1)
        logs = torch.log(weights) - 0.5 * (r * sol).sum(-1) - 0.5 * torch.logdet(cov_t)
        comp = means[None] + a * torch.einsum("kde,nke->nkd", covs, sol)
        return (torch.softmax(logs, dim=-1)[..., None] * comp).sum(1)

    def rhs(lam, xt):
        calls[0] += 1
        c = 1.0 / torch.sqrt(1.0 + torch.exp(2 * lam))
        return c * (c * xt - posterior_mean(xt, c, torch.exp(lam) * c))

    times = torch.tensor([lam0, lam1], dtype=torch.float64)
    y0 = torch.from_numpy(np.array(x, np.float64))
    # Diffrax's controller in flow_map takes the RMS of each point's scaled error; the batch's
    # step is accepted when every point's RMS is within tolerance.
    options = {"norm": lambda e: e.pow(2).mean(dim=-1).sqrt().max()}
    out = torchdiffeq.odeint(rhs, y0, times, rtol=rtol, atol=atol, method="dopri8", options=options)
    return out[-1].numpy(), calls[0]


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

    torch_row = {}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
        scale_in, scale_out = np.hypot(1.0, t_from), np.hypot(1.0, t_to)
        args_t = (lam0, lam1, weights, means, covs, args.tol, args.tol)
        torch_flow(np.asarray(xs[:100]) / scale_in, *args_t)  # warm-up
        torch_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            torch_out, torch_nfev = torch_flow(np.asarray(xs) / scale_in, *args_t)
            torch_times.append(time.perf_counter() - start)
        torch_out = torch_out * scale_out
        torch_tight, _ = torch_flow(np.asarray(xs[: args.scipy_points]) / scale_in, *args_t[:-2], 1e-12, 1e-12)
        torch_row = {
            "torchdiffeq_points_per_s": args.num_points / statistics.median(torch_times),
            "torchdiffeq_rhs_evaluations": torch_nfev,
            "speedup_vs_torchdiffeq": jax_rate * statistics.median(torch_times) / args.num_points,
            "torchdiffeq_max_error_vs_rtol_1e-12": float(np.max(np.abs(torch_out[: args.scipy_points] - reference))),
            "max_abs_disagreement_torchdiffeq": float(np.max(np.abs(torch_out - np.asarray(out)))),
            "torchdiffeq_vs_ctjax_1e-12_solves": float(np.max(np.abs(torch_tight * scale_out - reference))),
            "torch": torch.__version__,
        }

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
        **torch_row,
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
    if torch_row:
        print(
            f"{'torchdiffeq dopri8':24s}{torch_row['torchdiffeq_points_per_s']:14.1f}   ({args.num_points} points "
            f"as one batch, median of {args.repeats}, {torch_row['torchdiffeq_rhs_evaluations']} RHS evaluations)"
        )
    print(f"speedup {row['speedup']:.1f}x, max |ctjax - SciPy| = {disagreement:.2e}")
    if torch_row:
        print(
            f"speedup against torchdiffeq {torch_row['speedup_vs_torchdiffeq']:.1f}x, max |ctjax - torchdiffeq| = "
            f"{torch_row['max_abs_disagreement_torchdiffeq']:.2e}, torchdiffeq error against the 1e-12 solve "
            f"{torch_row['torchdiffeq_max_error_vs_rtol_1e-12']:.2e}; the two 1e-12 solves differ by "
            f"{torch_row['torchdiffeq_vs_ctjax_1e-12_solves']:.2e}"
        )
    print(f"max error against a 1e-12 solve: ctjax {ctjax_error:.2e}, SciPy {scipy_error:.2e}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow_throughput.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
