"""Two-time flow maps against the best consistency methods on gmm2d, checked against the exact Φ_{s→t}.

Every method is trained by the `ctjax train` code path on gmm2d (MLP 128x3, batch 256, the CLI's
defaults unless a variant adds options) and measured in one run:

- W1 of 1-, 2- and 4-step samples to fresh target samples, as multiples of the finite-sample floor
  W1(data, data') (POT, exact, 2000 points; 10 repeats, each against one of the floor's 10 reference
  sets, so that numerator and denominator share them: the W1 of two 2000-point draws of gmm2d varies by
  about 15% with the draw, mostly through the mode counts): flow maps sample by the
  deterministic chain X(t_k, t_{k+1}) on the uniform grid, consistency models by the CLI's re-noising times;
- the spread: the mean squared distance of the samples to their nearest mixture mean over that of the
  data (below 1: under-dispersed, which a finite-sample W1 rewards, down to below its floor);
- the CPU seconds of training (evaluation excluded);
- for a flow map, its RMS error against the exact jump Φ_{s→t} and its semigroup defect at every pair
  s > t of the grid (1, 0.8, 0.6, 0.4, 0.25, 0.1, 0) (500 points from the true marginal at s); for a
  consistency model, the same error in its only column, t = t_min.

Rows: meanflow (Geng et al., no teacher), flow-map-lsd / flow-map-esd (Boffi et al.'s self-distillation,
no teacher), flow-map-distill (distillation from the exact velocity), beside sct (the best consistency
training on gmm2d) and scd (distillation from the exact flow).

    python benchmarks/flow_maps.py run [--methods meanflow,sct] [--seeds 0,1,2] [--variant NAME] [-- CLI options]
    python benchmarks/flow_maps.py report     # table (stdout), docs table, heat-map figure

Rows merge into benchmarks/results/flow_maps.json under a lock (runs can go in parallel).
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time
import warnings

import _results as results
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import ctjax
from ctjax import metrics
from ctjax.experiments._cli import parse
from ctjax.experiments._config import FLOW_MAP_METHODS
from ctjax.experiments._run import FLOW_MAP_GRID, flow_map_grid, load_run, train
from ctjax.experiments._setup import model_sampling_times


ROOT = pathlib.Path(__file__).parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "flow_maps.json"
PAGE = ROOT / "docs" / "flow-maps.md"
FIGURE = ROOT / "docs" / "figures" / "flow_map_error.png"
MARKERS = ("<!-- flow_maps table: written by benchmarks/flow_maps.py report -->", "<!-- end of table -->")
METHODS = ("meanflow", "flow-map-lsd", "flow-map-esd", "flow-map-distill", "sct", "scd")
STEPS = (1, 2, 4)
POINTS, FLOOR_REPEATS, GRID_POINTS = 2000, 10, 500


def w1(x, y) -> float:
    return metrics.wasserstein1(np.asarray(x), np.asarray(y))


def floor(target) -> float:
    refs = [target.sample(jr.key(100 + r), POINTS) for r in range(FLOOR_REPEATS)]
    return float(np.mean([w1(target.sample(jr.key(400 + r), POINTS), refs[r]) for r in range(FLOOR_REPEATS)]))


def spread(x, means) -> float:
    """The mean squared distance of the points to their nearest mixture mean."""
    d2 = ((np.asarray(x)[:, None, :] - np.asarray(means)[None]) ** 2).sum(-1)
    return float(d2.min(axis=1).mean())


def measure(model, target, sigma_data, w1_floor, repeats) -> dict:
    refs = [target.sample(jr.key(100 + r), POINTS) for r in range(repeats)]
    data_spread = np.mean([spread(ref, target.means) for ref in refs])
    out = {}
    for steps in STEPS:
        times = model_sampling_times(model, steps, sigma_data)
        draws = [ctjax.sample(model, POINTS, times=times, key=jr.key(200 + 10 * steps + r)) for r in range(repeats)]
        out[f"w1_{steps}step_ratio"] = float(np.mean([w1(x, ref) for x, ref in zip(draws, refs)]) / w1_floor)
        # Below 1: the samples sit closer to the mixture means than the data do (under-dispersed). A finite-
        # sample W1 rewards that (it can then fall below the floor), so it is reported beside it.
        out[f"spread_{steps}step_ratio"] = float(np.mean([spread(x, target.means) for x in draws]) / data_spread)
    if isinstance(model, ctjax.AbstractFlowMap):
        grid = flow_map_grid(model, target, GRID_POINTS, seeds=(7, 8))
        out["error"], out["semigroup_defect"] = grid["error"], grid["semigroup_defect"]
    else:  # a consistency model has only the column t = t_min; its times are those of its schedule
        lo, hi = float(model.schedule.t_min), float(model.schedule.t_max)
        own = jnp.asarray([lo + f * (hi - lo) for f in FLOW_MAP_GRID[:-1]])
        # On TrigFlow, the grid fraction f is the time f * pi/2; the noise levels differ from the linear
        # interpolant's, so this column is comparable in its ends (t_max and t_min) only.
        out["column_t_min"] = metrics.map_error(model, target, own, num_points=GRID_POINTS, key=jr.key(7)).tolist()
    return out


def run_one(method, seed, options, w1_floor, repeats) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--method", method, "--seed", str(seed), "--out", f"{tmp}/run"]
        cfg = parse([*argv, "--no-progress", "--no-evaluate", *options])
        start, wall = time.process_time(), time.time()
        train(cfg)
        seconds, wall = time.process_time() - start, time.time() - wall
        saved, problem, trainer, state = load_run(cfg.out)
        model = trainer.result(state)
        sd = saved.model.sigma_data or problem.sigma_data
        return {
            "cpu_seconds": seconds,
            "wall_seconds": wall,
            "steps": saved.steps,
            **measure(model, problem.target, sd, w1_floor, repeats),
            "repeats": repeats,
        }


def run(args, options):
    w1_floor = floor(ctjax.presets.gmm2d())
    results.update(OUT, lambda data: data.update(w1_floor=w1_floor, grid=list(FLOW_MAP_GRID), target="presets.gmm2d()"))
    for seed in args.seeds:
        for method in args.methods:
            print(f"{method} {args.variant} seed {seed} {' '.join(options)}", flush=True)
            row = run_one(method, seed, options, w1_floor, args.repeats)
            row.update(method=method, variant=args.variant, options=options, seed=seed)
            results.save_row(OUT, row)
            ratios = "  ".join(f"{k}-step {row[f'w1_{k}step_ratio']:.3f}x" for k in STEPS)
            print(f"  W1/floor {ratios}  {row['cpu_seconds']:.0f} CPU s", flush=True)


def grid_median(rows, name):
    """The median over rows of an (s, t) grid; NaN where s <= t (no warning for those all-NaN cells)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian([np.array(r[name], dtype=float) for r in rows], axis=0)


def summarise(rows):
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["variant"]), []).append(r)
    out = []
    for (method, variant), rs in groups.items():
        med = {f"w1_{k}": float(np.median([r[f"w1_{k}step_ratio"] for r in rs])) for k in STEPS}
        med.update({f"spread_{k}": float(np.median([r[f"spread_{k}step_ratio"] for r in rs])) for k in STEPS})
        med["cpu"] = float(np.median([r["cpu_seconds"] for r in rs]))
        if "error" in rs[0]:
            err, dfc = grid_median(rs, "error"), grid_median(rs, "semigroup_defect")
            med["error_1_to_0"], med["error_median"] = float(err[0, -1]), float(np.nanmedian(err))
            med["error_max"], med["defect_median"] = float(np.nanmax(err)), float(np.nanmedian(dfc))
        else:
            med["error_1_to_0"] = float(np.median([r["column_t_min"][0] for r in rs]))
        repeats = rs[0].get("repeats", 3)  # the first rows measured 3 repeats against the floor's first 3 references
        out.append({"method": method, "variant": variant, "seeds": len(rs), "repeats": repeats, **med})
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(out, key=lambda s: (order.get(s["method"], 99), s["variant"]))


def table(summary) -> list[str]:
    lines = [
        "| method | variant | seeds | W1 repeats | 1-step W1/floor | 2-step | 4-step | spread 1/2/4-step | CPU s | error 1→0 | median error over (s, t) | max error | median semigroup defect |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        extra = (
            f"{s['error_median']:.3f} | {s['error_max']:.3f} | {s['defect_median']:.3f}"
            if "error_median" in s
            else "(t = t_min only) | | "
        )
        lines.append(
            f"| {s['method']} | {s['variant']} | {s['seeds']} | {s['repeats']} | {s['w1_1']:.2f}x | {s['w1_2']:.2f}x | {s['w1_4']:.2f}x | "
            f"{s['spread_1']:.2f} / {s['spread_2']:.2f} / {s['spread_4']:.2f} | "
            f"{s['cpu']:.0f} | {s['error_1_to_0']:.3f} | {extra} |"
        )
    return lines


def heat_map(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r["method"] in FLOW_MAP_METHODS and r["variant"] == "default"]
    # The paired measurement's rows (the same CLI defaults, more W1 repeats) where a method has them.
    paired = [r for r in rows if r["method"] in FLOW_MAP_METHODS and r["variant"] == "paired-10"]
    chosen = [r for r in chosen if not any(p["method"] == r["method"] for p in paired)] + paired
    methods = [m for m in METHODS if any(r["method"] == m for r in chosen)]
    if not methods:
        return None
    grid = FLOW_MAP_GRID
    fig, axes = plt.subplots(2, len(methods), figsize=(3.3 * len(methods), 6.2), squeeze=False)
    for c, method in enumerate(methods):
        rs = [r for r in chosen if r["method"] == method]
        for row, (name, title) in enumerate([("error", "error vs exact Φ"), ("semigroup_defect", "semigroup defect")]):
            values = grid_median(rs, name)
            ax = axes[row, c]
            image = ax.imshow(values, cmap="viridis", vmin=0)
            ax.set_xticks(range(len(grid)), [f"{t:g}" for t in grid], fontsize=7)
            ax.set_yticks(range(len(grid)), [f"{t:g}" for t in grid], fontsize=7)
            ax.set_xlabel("to t", fontsize=8)
            ax.set_ylabel("from s", fontsize=8)
            ax.set_title(f"{method}: {title}", fontsize=8)
            fig.colorbar(image, ax=ax, shrink=0.75)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(_args):
    data = json.loads(OUT.read_text())
    summary = summarise(data["rows"])
    lines = table(summary)
    print(f"gmm2d, W1 floor {data['w1_floor']:.4f}; medians over seeds")
    print("\n".join(lines))
    if PAGE.exists():
        text = PAGE.read_text()
        head, rest = text.split(MARKERS[0])
        _, tail = rest.split(MARKERS[1])
        PAGE.write_text(head + MARKERS[0] + "\n" + "\n".join(lines) + "\n" + MARKERS[1] + tail)
    FIGURE.parent.mkdir(exist_ok=True)
    if heat_map(data["rows"], FIGURE):
        print(f"wrote {FIGURE}")


def main():
    argv = sys.argv[1:]
    options = []
    if "--" in argv:
        cut = argv.index("--")
        argv, options = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--variant", default="default", help="a name for the CLI options after --")
    parser.add_argument(
        "--repeats",
        type=int,
        default=FLOOR_REPEATS,
        help="W1 repeats per step count, against the first of the floor's reference sets (10: the floor's own)",
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args, options)
    else:
        report(args)


if __name__ == "__main__":
    main()
