"""How the error of staged consistency training scales with T and d: exact (Gaussian oracle)
and trained, beside Li, Huang and Wei's Theorem 1 bound.

1. Exact: W2(f*_T(X_T), X_1) of the exact staged minimisers for Gaussian data (ctjax.theory),
   T in {2^4 .. 2^14}, d in {1, 4, 16, 64, 256}, Li et al.'s schedule (c0 = 2, c1 = 4). A
   least-squares fit of log W2 = a + p log T + q log d + r log log T gives the exponents.
2. Trained: staged sequential training of MLP stage functions for T in {8 .. 256} on a 2-D Gaussian
   and on the 2-D mixture (c0 = 1, c1 = 3 so that small T are valid), measuring the RMS distance of
   f_T to the exact flow map Phi_T on samples of X_T (>= W1(f_T(X_T), X_1)) and, for the Gaussian,
   the oracle's W2 of the exact minimisers on the same grid.
3. The bound C L_f^3 d^{5/2} log^5 T / T with C = 1 and L_f from the Gaussian flow (exact).

Writes benchmarks/results/scaling.json and docs/figures/scaling_*.png.
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax

import ctjax
from ctjax.training import fit, StagedConsistencyTraining


ROOT = pathlib.Path(__file__).parent
RESULTS = ROOT / "results"
FIGURES = ROOT.parent / "docs" / "figures"


def exact_study(ts, ds, c0=2.0, c1=4.0):
    rows = []
    for d in ds:
        target = ctjax.presets.gaussian(d, condition=10.0, seed=0)
        for T in ts:
            schedule = ctjax.DiscreteVP.li_huang_wei(T, c0, c1)
            alphas, sigmas = ctjax.theory.stage_grid(schedule)
            oracle = ctjax.theory.staged_ct_gaussian(target, alphas, sigmas)
            lip = ctjax.theory.gaussian_flow_lipschitz(target, alphas, sigmas)
            rows.append(
                {
                    "d": d,
                    "T": T,
                    "w2_exact_minimisers": oracle.w2(),
                    "w2_from_standard_normal": oracle.w2_from_standard_normal(),
                    "lipschitz": lip,
                    "theorem1_bound_C1": float(ctjax.theory.theorem1_bound(T, d, lip)),
                }
            )
    return rows


def fit_exponents(rows):
    """log W2 = a + p log T + q log d + r log log T over all (T, d)."""
    T = np.array([r["T"] for r in rows], dtype=float)
    d = np.array([r["d"] for r in rows], dtype=float)
    w = np.array([r["w2_exact_minimisers"] for r in rows])
    X = np.stack([np.ones_like(T), np.log(T), np.log(d), np.log(np.log(T))], axis=1)
    coef, *_ = np.linalg.lstsq(X, np.log(w), rcond=None)
    simple = np.linalg.lstsq(X[:, :3], np.log(w), rcond=None)[0]
    per_d = {}
    for dd in sorted(set(d.tolist())):
        m = d == dd
        per_d[str(int(dd))] = float(np.polyfit(np.log(T[m]), np.log(w[m]), 1)[0])
    return {
        "with_loglog": {"T": float(coef[1]), "d": float(coef[2]), "log_log_T": float(coef[3])},
        "power_law": {"T": float(simple[1]), "d": float(simple[2])},
        "T_exponent_per_d": per_d,
    }


def trained_study(ts, steps_per_stage, width, depth, num_points, seed=0):
    rows = []
    gauss = ctjax.Gaussian(jnp.array([0.5, -0.3]), jnp.array([[1.0, 0.4], [0.4, 0.5]]))
    problems = {"gaussian2d": gauss, "gmm2d": ctjax.presets.gmm2d()}
    for name, target in problems.items():
        sd = float(jnp.sqrt(jnp.trace(target.covariance()) / 2))
        for T in ts:
            schedule = ctjax.DiscreteVP.li_huang_wei(T, 1.0, 3.0)
            model = ctjax.StagedConsistencyModel.init(
                lambda k: ctjax.MLP(2, width=width, depth=depth, key=k),
                schedule,
                scalings=ctjax.EDMScalings(sd),
                key=jr.key(seed),
            )
            trainer = StagedConsistencyTraining(
                optax.adam(optax.exponential_decay(1e-3, steps_per_stage, 0.05)), "sequential", steps_per_stage
            )
            state = trainer.init(model, key=jr.key(seed + 1))
            start = time.perf_counter()
            state, _ = fit(
                trainer,
                state,
                target,
                num_steps=trainer.total_steps(model),
                batch_size=256,
                chunk_size=500,
                progress=False,
            )
            seconds = time.perf_counter() - start
            model = trainer.result(state)
            err = float(
                ctjax.metrics.map_error(model, target, jnp.asarray([float(T)]), num_points=num_points, key=jr.key(9))[0]
            )
            row = {
                "problem": name,
                "T": T,
                "rms_map_error": err,
                "train_seconds": seconds,
                "steps": trainer.total_steps(model),
            }
            if name == "gaussian2d":
                alphas, sigmas = ctjax.theory.stage_grid(schedule)
                row["w2_exact_minimisers"] = ctjax.theory.staged_ct_gaussian(target, alphas, sigmas).w2()
                lip = ctjax.theory.gaussian_flow_lipschitz(target, alphas, sigmas)
                row["theorem1_bound_C1"] = float(ctjax.theory.theorem1_bound(T, 2, lip))
            rows.append(row)
            print(f"  trained {name:10s} T={T:4d}  RMS |f_T - Phi_T| = {err:.4f}  ({seconds:.0f}s)", flush=True)
    return rows


def plot_exact(rows, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ds = sorted({r["d"] for r in rows})
    for d in ds:
        sub = [r for r in rows if r["d"] == d]
        T = [r["T"] for r in sub]
        axes[0].loglog(T, [r["w2_exact_minimisers"] for r in sub], "o-", label=f"d={d}")
        axes[1].loglog(T, [r["theorem1_bound_C1"] for r in sub], "--", label=f"bound, d={d}")
        axes[1].loglog(T, [r["w2_exact_minimisers"] for r in sub], "o-", ms=3)
    axes[0].set_xlabel("T (stages)")
    axes[0].set_ylabel(r"$W_2(f^\star_T(X_T), X_1)$, exact minimisers")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("T (stages)")
    axes[1].set_ylabel("error")
    axes[1].set_title(r"Theorem 1, $C_1 = 1$: $L_f^3 d^{5/2}\log^5 T/T$ (dashed) vs exact (solid)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trained(rows, path):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, style in [("gaussian2d", "o-"), ("gmm2d", "s-")]:
        sub = [r for r in rows if r["problem"] == name]
        ax.loglog([r["T"] for r in sub], [r["rms_map_error"] for r in sub], style, label=f"trained, {name}")
    sub = [r for r in rows if r["problem"] == "gaussian2d"]
    ts = [r["T"] for r in sub]
    ax.loglog(ts, [r["w2_exact_minimisers"] for r in sub], "k--", label="exact minimisers, gaussian2d")
    if all("theorem1_bound_C1" in r for r in sub):
        ax.loglog(ts, [r["theorem1_bound_C1"] for r in sub], "r:", label="Theorem 1 bound ($C_1 = 1$), gaussian2d")
    ax.set_xlabel("T (stages)")
    ax.set_ylabel(r"RMS $\|f_T - \Phi_T\|$ on $X_T$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-log2-T", type=int, default=14)
    parser.add_argument("--dims", default="1,4,16,64,256")
    parser.add_argument("--trained-T", default="8,16,32,64,128,256")
    parser.add_argument("--steps-per-stage", type=int, default=300)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--num-points", type=int, default=500)
    parser.add_argument("--skip-trained", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figures from scaling.json")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads((RESULTS / "scaling.json").read_text())
        plot_exact(saved["exact"], FIGURES / "scaling_exact.png")
        if "trained" in saved:
            plot_trained(saved["trained"], FIGURES / "scaling_trained.png")
        return
    jax.config.update("jax_enable_x64", True)
    ts = [2**k for k in range(4, args.max_log2_T + 1)]
    ds = [int(v) for v in args.dims.split(",")]
    start = time.perf_counter()
    exact = exact_study(ts, ds)
    exponents = fit_exponents(exact)
    print(f"exact study ({len(exact)} grids) in {time.perf_counter() - start:.1f}s")
    print(
        f"  fitted: W2 ~ T^{exponents['power_law']['T']:.3f} d^{exponents['power_law']['d']:.3f} (power law); "
        f"with log log T: T^{exponents['with_loglog']['T']:.3f} d^{exponents['with_loglog']['d']:.3f} (log T)^{exponents['with_loglog']['log_log_T']:.2f}"
    )
    for r in exact:
        if r["T"] in (16, 1024, 16384):
            print(
                f"  d={r['d']:4d} T={r['T']:6d}  W2={r['w2_exact_minimisers']:.3e}  bound(C=1)={r['theorem1_bound_C1']:.3e}  ratio={r['theorem1_bound_C1'] / r['w2_exact_minimisers']:.2e}"
            )
    result = {"exact": exact, "exponents": exponents, "schedule": "DiscreteVP.li_huang_wei(T, c0=2, c1=4)"}
    FIGURES.mkdir(parents=True, exist_ok=True)
    plot_exact(exact, FIGURES / "scaling_exact.png")
    if not args.skip_trained:
        jax.config.update("jax_enable_x64", False)
        trained_ts = [int(v) for v in args.trained_T.split(",")]
        result["trained"] = trained_study(trained_ts, args.steps_per_stage, args.width, args.depth, args.num_points)
        result["trained_setup"] = {
            "schedule": "DiscreteVP.li_huang_wei(T, c0=1, c1=3)",
            "steps_per_stage": args.steps_per_stage,
            "width": args.width,
            "depth": args.depth,
            "batch": 256,
        }
        plot_trained(result["trained"], FIGURES / "scaling_trained.png")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
