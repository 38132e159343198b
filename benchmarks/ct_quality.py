"""Consistency training without a teacher: velocity estimates and couplings, against distillation.

Every no-teacher method (staged sequential, CT, iCT, ECT, sCT) is trained on gmm2d with each of
{one-sample, reference-batch with a pool of 0 (the minibatch alone) or 4096 fresh points, minibatch
OT, reference batch (4096) + OT} (the staged stack, whose step cost a pool dominates: pool 0 only),
and `ct_fixed`: CT with distillation's recipe (a fixed 40-point grid, an EMA teacher of rate 0.95), over several seeds, next to CD and sCD with the exact teacher in the same run.
Each row records the 1-step and 2-step W1 as multiples of the finite-sample floor W1(data, data')
(POT, exact, 2000 points, averaged over repeats), the CPU seconds of training (evaluation
excluded), and the curve of 1-step W1/floor (1000 points) against CPU seconds, from which the time
to quality is read: the CPU seconds until the 1-step W1 first falls below 1.5x the floor.

    python benchmarks/ct_quality.py [--methods ct,ict] [--variants one-sample,rb-4096] [--seeds 0,1,2]
        [--steps-scale 1.0] [--tag screen]
    python benchmarks/ct_quality.py report     # table (stdout), docs table and figure from the JSON
    python benchmarks/ct_quality.py pool       # memory and time of the estimate against the pool size

Rows are merged into benchmarks/results/ct_quality.json under a lock, so runs over disjoint methods
can go in parallel. Nothing is CPU-specific: on a GPU the same command measures device seconds
(`cpu_seconds` is then the process's CPU time, the wall time is recorded too).
"""

import argparse
import contextlib
import fcntl
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import ctjax
from ctjax.presets import gmm2d
from ctjax.training import (
    ContinuousConsistencyTrainer,
    ExactVelocity,
    fit,
    Independent,
    MinibatchOT,
    OneSample,
    ReferenceBatch,
    StagedConsistencyTraining,
)


RESULTS = pathlib.Path(__file__).parent / "results"
OUT = RESULTS / "ct_quality.json"
DOCS = pathlib.Path(__file__).parent.parent / "docs"
FIGURE = DOCS / "figures" / "ct_quality.png"
PAGE = DOCS / "ct-quality.md"
MARKERS = ("<!-- ct_quality table: written by benchmarks/ct_quality.py report -->", "<!-- end of table -->")
VE = ctjax.VarianceExploding(0.002, 80.0)
NO_TEACHER = ("staged_sequential", "ct", "ct_fixed", "ict", "ect", "sct")
REFERENCE = ("cd_exact", "scd")
VARIANTS = ("one-sample", "rb-0", "rb-4096", "ot", "rb-4096+ot")
# The staged stages are small networks, so a pool dominates their step cost: no pool.
STAGED_VARIANTS = ("one-sample", "rb-0", "ot", "rb-0+ot")
TAGS = {"screen": 0, "ablation": 1, "long": 2}
EVAL_POINTS, FINAL_POINTS, FINAL_REPEATS, FLOOR_REPEATS = 1000, 2000, 3, 10


def variant_parts(variant: str, target):
    """(velocity_estimate, coupling, options) of a variant name: parts joined by "+", of which
    `rb-P` is a reference batch with a pool of P, `ot` the minibatch OT coupling, and the rest options
    of the loss (`sql2`, `l2`, `ph-C`: squared L2, L2, pseudo-Huber with c = C, reduced by the mean over
    dimensions with a `-mean` suffix) or of sCT (`rms`: RMS tangent normalisation, `prior`: prior
    weighting, `warm-K`: K warm-up steps)."""
    estimate, coupling, options = OneSample(), Independent(), {}
    for part in variant.split("+"):
        reduction = "sum"
        if part.endswith("-mean"):
            part, reduction = part[: -len("-mean")], "mean"
        if part == "ot":
            coupling = MinibatchOT()
        elif part.startswith("rb-"):
            pool = int(part[3:])
            estimate = ReferenceBatch(pool, data=target if pool else None)
        elif part == "sql2":
            options["distance"] = ctjax.SquaredL2(reduction)
        elif part == "l2":
            options["distance"] = ctjax.L2(reduction)
        elif part.startswith("ph-"):
            options["distance"] = ctjax.PseudoHuber(float(part[3:]), reduction)
        elif part == "rms":
            options["tangent_normalisation"] = "rms"
        elif part == "prior":
            options["prior_weighting"] = True
        elif part.startswith("warm-"):
            options["warmup_steps"] = int(part[5:])
        elif part != "one-sample":
            raise ValueError(f"unknown variant part {part!r}")
    return estimate, coupling, options


def adam(total):
    return optax.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 200, total, 1e-5))


def make_cm(key, sigma_data, schedule=VE, embedding="fourier"):
    return ctjax.ConsistencyFunction(
        ctjax.MLP(2, width=128, depth=3, embedding=embedding, key=key), schedule, ctjax.EDMScalings(sigma_data)
    )


def builders(target, sigma_data):
    """method -> (build(total, estimate, coupling, key) -> (trainer, model), batch, two-step times, steps).

    The recipes of benchmarks/quality_gmm.py (MLP 128x3, batch 256), with the estimate and the
    coupling as the only change."""
    trig = ctjax.TrigFlow(sigma_data)
    li = ctjax.DiscreteVP.li_huang_wei(128, 2.0, 4.0)

    def ct(total, est, coup, key, **opts):
        trainer = ctjax.training.ct(
            adam(total), total, s0=10, s1=150, mu0=0.95, velocity_estimate=est, coupling=coup, **opts
        )
        return trainer, make_cm(key, sigma_data)

    def ct_fixed(total, est, coup, key, **opts):
        trainer = ctjax.training.ConsistencyTrainer(
            adam(total),
            ctjax.training.ConstantCurriculum(40),
            teacher=ctjax.training.EMATeacher(0.95),
            velocity_estimate=est,
            coupling=coup,
            **opts,
        )
        return trainer, make_cm(key, sigma_data)

    def ict(total, est, coup, key, **opts):
        trainer = ctjax.training.ict(
            adam(total), total, s0=10, s1=640, p_mean=1.0, p_std=2.0, velocity_estimate=est, coupling=coup, **opts
        )
        return trainer, make_cm(key, sigma_data)

    def ect(total, est, coup, key, **opts):
        trainer = ctjax.training.ect(
            adam(total), total, num_stages=8, p_mean=0.0, p_std=2.0, velocity_estimate=est, coupling=coup, **opts
        )
        return trainer, make_cm(key, sigma_data)

    def scm(velocity):
        def build(total, est, coup, key, **opts):
            model = ctjax.ConsistencyFunction(
                ctjax.MLP(2, width=128, depth=3, embedding="sinusoidal", key=key),
                trig,
                ctjax.TrigFlowScalings(sigma_data),
            )
            trainer = ContinuousConsistencyTrainer(
                adam(total),
                velocity,
                **{"warmup_steps": min(1000, total // 10), **opts},
                p_mean=-1.0,
                p_std=1.4,
                velocity_estimate=est,
                coupling=coup,
            )
            return trainer, model

        return build

    def staged(total, est, coup, key, **opts):
        per_stage = max(1, total // (li.num_steps - 1))
        trainer = StagedConsistencyTraining(
            optax.adam(optax.exponential_decay(1e-3, per_stage, 0.05)),
            "sequential",
            per_stage,
            velocity_estimate=est,
            coupling=coup,
            **opts,
        )
        model = ctjax.StagedConsistencyModel.init(
            lambda k: ctjax.MLP(2, width=64, depth=2, key=k), li, scalings=ctjax.EDMScalings(sigma_data), key=key
        )
        return trainer, model

    def cd(total, est, coup, key, **opts):
        trainer = ctjax.training.cd(adam(total), ExactVelocity(target, VE), num_scales=40, mu=0.95)
        return trainer, make_cm(key, sigma_data)

    ve_two = jnp.array([80.0, 0.8])
    trig_two = jnp.array([float(trig.t_max), float(trig.time_at_noise(0.8))])
    li_two = jnp.array([float(li.t_max), float(jnp.round(li.time_at_noise(0.8)))])
    return {
        "staged_sequential": (staged, 256, li_two, 12_000),
        "ct": (ct, 256, ve_two, 3_000),
        "ct_fixed": (ct_fixed, 256, ve_two, 3_000),
        "ict": (ict, 256, ve_two, 3_000),
        "ect": (ect, 256, ve_two, 3_000),
        "sct": (scm(None), 256, trig_two, 3_000),
        "cd_exact": (cd, 256, ve_two, 3_000),
        "scd": (scm(ExactVelocity(target, trig)), 256, trig_two, 3_000),
    }


def w1(x, y):
    return ctjax.metrics.wasserstein1(np.asarray(x), np.asarray(y))


def run_one(spec, variant, seed, target, sigma_data, floors, steps_scale):
    build, batch, two_step, steps = spec
    steps = max(200, int(steps * steps_scale))
    estimate, coupling, options = variant_parts(variant, target)
    trainer, model = build(steps, estimate, coupling, jr.key(seed), **options)
    state = trainer.init(model, key=jr.key(1000 + seed))
    if isinstance(trainer, StagedConsistencyTraining):
        steps = trainer.total_steps(model)
    num_evals = 10
    eval_every = max(1, steps // num_evals)
    eval_ref = target.sample(jr.key(900), EVAL_POINTS)
    curve, cpu, wall, done = [], 0.0, 0.0, 0
    while done < steps:
        chunk = min(eval_every, steps - done)
        c0, w0 = time.process_time(), time.perf_counter()
        state, _ = fit(trainer, state, target, num_steps=chunk, batch_size=batch, chunk_size=chunk, progress=False)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        done += chunk
        samples = ctjax.sample(trainer.result(state), EVAL_POINTS, key=jr.key(901))
        distance = w1(samples, eval_ref)
        curve.append([cpu, done, distance / floors["eval"], distance])
    result = trainer.result(state)
    refs = [target.sample(jr.key(100 + r), FINAL_POINTS) for r in range(FINAL_REPEATS)]
    one = np.mean([w1(ctjax.sample(result, FINAL_POINTS, key=jr.key(200 + r)), refs[r]) for r in range(FINAL_REPEATS)])
    two = np.mean(
        [
            w1(ctjax.sample(result, FINAL_POINTS, times=two_step, key=jr.key(300 + r)), refs[r])
            for r in range(FINAL_REPEATS)
        ]
    )
    below = [point[0] for point in curve if point[2] < 1.5]
    return {
        "w1_1step_ratio": float(one / floors["final"]),
        "w1_2step_ratio": float(two / floors["final"]),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "cpu_seconds_to_1.5x": below[0] if below else None,
        "steps": int(steps),
        "w1_1step": float(one),
        "w1_2step": float(two),
        "curve": curve,
    }


@contextlib.contextmanager
def locked():
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / ".ct_quality.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def save_row(row, meta):
    with locked():
        data = json.loads(OUT.read_text()) if OUT.exists() else {"rows": []}
        key = lambda r: (r["method"], r["variant"], r["seed"], r.get("tag"))
        data["rows"] = [r for r in data["rows"] if key(r) != key(row)] + [row]
        data.update(meta)
        OUT.write_text(json.dumps(data, indent=1) + "\n")


def describe(variant):
    """The JSON fields that name a variant: `velocity_estimate`, `reference_pool`, `coupling`, `options`."""
    parts = variant.split("+")
    pools = [int(p[3:]) for p in parts if p.startswith("rb-")]
    return {
        "velocity_estimate": "reference-batch" if pools else "one-sample",
        "reference_pool": pools[0] if pools else None,
        "coupling": "ot" if "ot" in parts else "independent",
        "options": [p for p in parts if p not in ("ot", "one-sample") and not p.startswith("rb-")],
    }


def done_already(method, variant, seed, tag):
    if not OUT.exists():
        return False
    rows = json.loads(OUT.read_text())["rows"]
    return any((r["method"], r["variant"], r["seed"], r.get("tag")) == (method, variant, seed, tag) for r in rows)


def floors_for(target):
    refs = [target.sample(jr.key(100 + r), FINAL_POINTS) for r in range(FLOOR_REPEATS)]
    final = np.mean([w1(target.sample(jr.key(400 + r), FINAL_POINTS), refs[r]) for r in range(FLOOR_REPEATS)])
    eval_ref = target.sample(jr.key(900), EVAL_POINTS)
    evalf = np.mean([w1(target.sample(jr.key(410 + r), EVAL_POINTS), eval_ref) for r in range(FLOOR_REPEATS)])
    return {"final": float(final), "eval": float(evalf)}


def run(args):
    target = gmm2d()
    sigma_data = float(jnp.sqrt(jnp.trace(target.covariance()) / 2))
    specs = builders(target, sigma_data)
    floors = floors_for(target)
    meta = {
        "target": "presets.gmm2d()",
        "w1_floor": floors["final"],
        "w1_floor_eval": floors["eval"],
        "final_points": FINAL_POINTS,
        "final_repeats": FINAL_REPEATS,
        "eval_points": EVAL_POINTS,
    }
    print(
        f"floor W1(data, data') = {floors['final']:.4f} ({FINAL_POINTS} points), {floors['eval']:.4f} ({EVAL_POINTS})"
    )
    for method in args.methods.split(","):
        if method in REFERENCE:
            variants = ["one-sample"]
        elif args.variants:
            variants = args.variants.split(",")
        else:
            variants = STAGED_VARIANTS if method == "staged_sequential" else VARIANTS
        for variant in variants:
            for seed in map(int, args.seeds.split(",")):
                if done_already(method, variant, seed, args.tag):
                    continue
                row = run_one(specs[method], variant, seed, target, sigma_data, floors, args.steps_scale)
                row.update(describe(variant))
                row.update(
                    {
                        "method": method,
                        "variant": variant,
                        "seed": seed,
                        "tag": args.tag,
                    }
                )
                save_row(row, meta)
                ttq = row["cpu_seconds_to_1.5x"]
                print(
                    f"{method:18s} {variant:12s} seed {seed}: 1-step {row['w1_1step_ratio']:.2f}x  "
                    f"2-step {row['w1_2step_ratio']:.2f}x  {row['steps']} steps, {row['cpu_seconds']:.0f} CPU-s "
                    f"(to 1.5x: {'-' if ttq is None else f'{ttq:.0f} s'})",
                    flush=True,
                )


def summarise(rows):
    """(method, variant, tag) -> medians and spreads over seeds."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["variant"], r.get("tag")), []).append(r)
    out = {}
    for key, rs in groups.items():
        one = np.array([r["w1_1step_ratio"] for r in rs])
        two = np.array([r["w1_2step_ratio"] for r in rs])
        ttq = [r["cpu_seconds_to_1.5x"] for r in rs]
        reached = [t for t in ttq if t is not None]
        out[key] = {
            "seeds": len(rs),
            "one": float(np.median(one)),
            "one_lo": float(one.min()),
            "one_hi": float(one.max()),
            "two": float(np.median(two)),
            "two_lo": float(two.min()),
            "two_hi": float(two.max()),
            "cpu": float(np.median([r["cpu_seconds"] for r in rs])),
            "ttq": float(np.median(reached)) if len(reached) * 2 > len(rs) else None,
            "rows": rs,
        }
    return out


def report(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with locked():
        data = json.loads(OUT.read_text())
        for r in data["rows"]:  # rows written before `describe` existed
            r.update(describe(r["variant"]))
        OUT.write_text(json.dumps(data, indent=1) + "\n")
    summary = summarise(data["rows"])
    lines = [
        "| method | estimate | coupling | steps | 1-step W1/floor | 2-step W1/floor | CPU s | CPU s to 1.5x |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(NO_TEACHER + REFERENCE)}
    for (method, _, tag), s in sorted(
        summary.items(), key=lambda kv: (TAGS.get(kv[0][2], 9), order[kv[0][0]], kv[0][1])
    ):
        r0 = s["rows"][0]
        est = "one-sample" if r0["velocity_estimate"] == "one-sample" else f"reference-batch ({r0['reference_pool']})"
        if r0.get("options"):
            est += ", " + ", ".join(r0["options"])
        ttq = "-" if s["ttq"] is None else f"{s['ttq']:.0f}"
        lines.append(
            f"| {method}{'' if not tag else f' ({tag})'} | {est} | {r0['coupling']} | {r0['steps']} | "
            f"{s['one']:.2f} ({s['one_lo']:.2f}-{s['one_hi']:.2f}) | {s['two']:.2f} ({s['two_lo']:.2f}-{s['two_hi']:.2f}) "
            f"| {s['cpu']:.0f} | {ttq} |"
        )
    table = "\n".join(lines)
    print(table)
    if PAGE.exists():
        text = PAGE.read_text()
        start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
        PAGE.write_text(text[:start] + "\n\n" + table + "\n\n" + text[end:])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, which in zip(axes, ("one-sample", "best")):
        for method in NO_TEACHER + REFERENCE:
            # Left: the papers' one-sample velocity in the screen; right: each method's best row group
            # over every tag (the longer runs included).
            cands = {k: s for k, s in summary.items() if k[0] == method and (which == "best" or k[2] == args.tag)}
            if which == "one-sample" or method in REFERENCE:
                cands = {k: s for k, s in cands.items() if k[1] == "one-sample"}
            if not cands:
                continue
            key = min(cands, key=lambda k: cands[k]["one"])
            curves = np.array([r["curve"] for r in cands[key]["rows"]])  # (seeds, evals, [cpu, step, ratio, w1])
            style = "--" if method in REFERENCE else "-"
            label = method if which == "one-sample" else f"{method}: {key[1]} ({key[2]})"
            ax.plot(np.median(curves[:, :, 0], 0), np.median(curves[:, :, 2], 0), style, marker=".", label=label)
        ax.axhline(1.5, color="grey", lw=0.8, ls=":")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xlabel("CPU seconds of training")
        ax.set_yscale("log")
        ax.set_title("one-sample velocity" if which == "one-sample" else "best estimate / coupling per method")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"1-step W1 / floor ({EVAL_POINTS} points, median of seeds)")
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=120)
    print(f"figure: {FIGURE}")


def pool_cost(args):
    """Memory and time of one ReferenceBatch estimate (batch 256, gmm2d at sigma = 0.8) against the pool
    size and chunk: XLA's temporary buffers stay O(batch x chunk) whatever the pool."""
    target = gmm2d()
    x0 = target.sample(jr.key(0), 256)
    x_t = x0 + 0.8 * jr.normal(jr.key(1), x0.shape)
    t = jnp.full((256,), 0.8)
    exact = jax.vmap(lambda x: target.posterior_mean(x, 1.0, 0.8))(x_t)
    rows = []
    for pool in (0, 4096, 16384, 65536):
        for chunk in (1024, 4096):
            est = ReferenceBatch(pool, data=target if pool else None, chunk_size=chunk)
            fn = jax.jit(lambda k, est=est: est.posterior_mean(VE, t, x_t, x0, key=k))
            temp = fn.lower(jr.key(2)).compile().memory_analysis().temp_size_in_bytes
            for i in range(3):  # compile and warm up
                fn(jr.key(i)).block_until_ready()
            times = []
            for i in range(10):
                start = time.perf_counter()
                fn(jr.key(10 + i)).block_until_ready()
                times.append(time.perf_counter() - start)
            error = float(jnp.mean(jnp.linalg.norm(fn(jr.key(99)) - exact, axis=-1)))
            rows.append(
                {
                    "pool": pool,
                    "chunk": chunk,
                    "temp_bytes": int(temp),
                    "ms": 1e3 * float(np.median(times)),
                    "mean_error": error,
                }
            )
            print(
                f"pool {pool:6d} chunk {chunk:5d}: temporaries {temp / 1e6:6.2f} MB, {rows[-1]['ms']:6.1f} ms "
                f"(median of 10), mean |x0_hat - E[x0|x_t]| {error:.4f}"
            )
    (RESULTS / "ct_quality_pool.json").write_text(
        json.dumps({"batch": 256, "sigma": 0.8, "rows": rows}, indent=1) + "\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=("run", "report", "pool"))
    parser.add_argument("--methods", default=",".join(NO_TEACHER + REFERENCE))
    parser.add_argument("--variants", default="", help="default: every variant (the staged stack: fewer)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every method's step count")
    parser.add_argument("--tag", default="screen", help="a label for this set of runs (kept apart in the JSON)")
    args = parser.parse_args()
    {"run": run, "report": report, "pool": pool_cost}[args.command](args)


if __name__ == "__main__":
    main()
