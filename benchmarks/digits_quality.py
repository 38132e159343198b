"""Digits: which methods generalise and which copy the training set.

Every method is trained by the `ctjax train` code path on the train split of the digits preset (1438
of 1797 images; `--holdout 0.2`, split seed 0) and its 1-step and 2-step samples are measured against
the 359 held-out images by `ctjax eval`'s held-out metrics: W1, the Fréchet distance in the digits
classifier's features (FD), precision and recall in those features (k = 3), the classifier's mean
confidence, and the memorised fraction against the train split (nearest training image closer than
1/3 of the second-nearest). Each metric sits beside its floor, the same metric between the train split
and the held-out split. The rows:

- `exact_ode`: samples of the exact probability flow of the train split (the ground truth ctjax
  distils from), which sends noise to training images;
- `scd`, `cd`: distillation from that exact flow;
- every no-teacher method (ct, ict, ect, sct, staged, staged-simultaneous, staged-shared) with the
  reference-batch velocity and pool measured best on gmm2d (`reference-batch`) and with the papers'
  one-sample velocity (`one-sample`): the CLI's default estimator on a data set is the better of the two;
- `fm-scd`: a flow-matching teacher trained on the train split, then sCD from it (initialised from it).

    python benchmarks/digits_quality.py run [--methods scd,ct] [--variants reference-batch,one-sample] [--seeds 0]
    python benchmarks/digits_quality.py report    # table (stdout), docs table, sample grid

Rows merge into benchmarks/results/digits_quality.json under a lock (runs can go in parallel).
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
import time

import _results as results
import jax.random as jr
import numpy as np

from ctjax import sample
from ctjax._consistency import ConsistencyFunction, ExactConsistencyFunction
from ctjax.experiments import _heldout as heldout_eval
from ctjax.experiments._config import TrainConfig
from ctjax.experiments._run import load_run, train
from ctjax.experiments._setup import (
    _optimizer,
    build_method,
    build_problem,
    MEASURED_BEST,
    model_sampling_times,
    resolve_defaults,
)
from ctjax.training import fit, FlowMatchingTrainer, LearnedVelocity


ROOT = pathlib.Path(__file__).parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "digits_quality.json"
PAGE = ROOT / "docs" / "digits.md"
GRID = ROOT / "docs" / "figures" / "digits_samples.png"
MARKERS = ("<!-- digits table: written by benchmarks/digits_quality.py report -->", "<!-- end of table -->")
METHODS = ("scd", "cd", "ct", "ict", "ect", "sct", "staged", "staged-simultaneous", "staged-shared", "fm-scd")
NO_TEACHER = ("ct", "ict", "ect", "sct", "staged", "staged-simultaneous", "staged-shared")
GRID_SAMPLES = 12
TUNE_LR = 1e-4  # fm-scd's sCD phase


def measure(model, problem, sigma_data, seed) -> dict:
    train_pts, held = np.asarray(problem.target.points), np.asarray(problem.heldout)
    out = {}
    for steps in (1, 2):
        times = model_sampling_times(model, steps, sigma_data)
        num = train_pts.shape[0]
        metrics, first = heldout_eval.drawn_metrics(
            model, times, num, train_pts, held, problem.features, base_seed=70_000 + 10 * seed
        )
        out[f"{steps}step"] = metrics
        out[f"grid_{steps}step"] = np.round(first[:GRID_SAMPLES], 3).tolist()
    return out


def reference_rows(problem):
    """The floor and the exact flow of the train split (no training)."""
    train_pts, held = np.asarray(problem.target.points), np.asarray(problem.heldout)
    cfg = resolve_defaults(TrainConfig(preset="digits", method="scd"))
    _, model, _ = build_method(cfg, problem)
    exact = ExactConsistencyFunction(problem.target, model.schedule, rtol=1e-6, atol=1e-6)
    start = time.process_time()
    xs = np.asarray(sample(exact, train_pts.shape[0], key=jr.key(60_000)))
    seconds = time.process_time() - start
    return {
        "floor": heldout_eval.floor_metrics(train_pts, held, train_pts.shape[0], problem.features),
        "exact_ode": {
            **heldout_eval.sample_metrics(xs, train_pts, held, problem.features),
            "cpu_seconds": seconds,
            "grid": np.round(xs[:GRID_SAMPLES], 3).tolist(),
        },
        "heldout_grid": np.round(held[:GRID_SAMPLES], 3).tolist(),
        "num_train": int(train_pts.shape[0]),
        "num_heldout": int(held.shape[0]),
    }


def run_cli_method(method, variant, seed, steps):
    options = {}
    if variant == "one-sample":
        options = {"velocity_estimate": "one-sample"}
    elif variant == "reference-batch":  # with the pool measured best on gmm2d
        options = {"velocity_estimate": "reference-batch", "reference_pool": MEASURED_BEST[method][1]}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            preset="digits",
            method=method,
            steps=steps,
            seed=seed,
            out=pathlib.Path(tmp) / "run",
            progress=False,
            evaluate=False,
            **options,
        )
        start, wall = time.process_time(), time.time()
        train(cfg)
        seconds, wall = time.process_time() - start, time.time() - wall
        saved, problem, trainer, state = load_run(cfg.out)
        model = trainer.result(state)
        sd = saved.model.sigma_data or problem.sigma_data
        if method not in NO_TEACHER:
            estimate = "exact teacher"
        elif saved.velocity_estimate == "reference-batch":
            estimate = f"reference batch, pool {saved.reference_pool}"
        else:
            estimate = "one-sample"
        return {"config": estimate, "cpu_seconds": seconds, "wall_seconds": wall, **measure(model, problem, sd, seed)}


def run_fm_scd(seed, steps, teacher_steps):
    """Flow matching on the train split, then sCD from the learned velocity, started from the teacher."""
    cfg = resolve_defaults(TrainConfig(preset="digits", method="scd", steps=steps, seed=seed))
    problem = build_problem(cfg)
    trainer, model, _ = build_method(cfg, problem)  # sCD's model and options; its teacher is replaced
    assert isinstance(model, ConsistencyFunction)
    start, wall = time.process_time(), time.time()
    fm = FlowMatchingTrainer(_optimizer(cfg, teacher_steps), p_mean=cfg.scm.p_mean, p_std=cfg.scm.p_std)
    state, _ = fit(
        fm,
        fm.init(model, key=jr.key(seed)),
        problem.data,
        num_steps=teacher_steps,
        batch_size=cfg.batch_size,
        chunk_size=cfg.chunk_size,
        progress=False,
    )
    teacher = fm.result(state)
    # Tuned at a tenth of the learning rate: at 1e-3, sCD from the learned velocity (whether started
    # from the teacher or from scratch) left its tangent warm-up with the tangent norm doubling and
    # collapsed to the mean image (FD 126x the floor); at 1e-4 it stayed stable (1.8x at 8000 steps).
    slow = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=TUNE_LR))
    tune = dataclasses.replace(trainer, velocity=LearnedVelocity.from_model(teacher), optimizer=_optimizer(slow, steps))
    state, _ = fit(
        tune,
        tune.init(teacher, key=jr.key(seed + 1)),
        problem.data,
        num_steps=steps,
        batch_size=cfg.batch_size,
        chunk_size=cfg.chunk_size,
        progress=False,
    )
    seconds, wall = time.process_time() - start, time.time() - wall
    sd = cfg.model.sigma_data or problem.sigma_data
    return {
        "config": f"flow matching {teacher_steps} steps, then sCD at lr {TUNE_LR:g}",
        "cpu_seconds": seconds,
        "wall_seconds": wall,
        **measure(tune.result(state), problem, sd, seed),
    }


def run(args):
    problem = build_problem(TrainConfig(preset="digits"))
    if not OUT.exists() or "floor" not in json.loads(OUT.read_text()):
        refs = reference_rows(problem)
        results.update(OUT, lambda data: data.update(refs))
    for seed in args.seeds:
        for method in args.methods:
            variants = args.variants if method in NO_TEACHER else ["default"]
            for variant in variants:
                print(f"{method} {variant} seed {seed}", flush=True)
                if method == "fm-scd":
                    row = run_fm_scd(seed, args.steps, args.teacher_steps)
                else:
                    row = run_cli_method(method, variant, seed, args.steps)
                row.update(method=method, variant=variant, seed=seed, steps=args.steps)
                results.save_row(OUT, row)
                one, two = row["1step"], row["2step"]
                fd = lambda m: "out of range" if m["fd"] is None else f"{m['fd']:.2f}"
                print(
                    f"  FD 1-step {fd(one)} 2-step {fd(two)}  memorised {one['memorised']:.3f} "
                    f"{two['memorised']:.3f}  W1 {one['w1']:.3f} {two['w1']:.3f}  {row['cpu_seconds']:.0f} s",
                    flush=True,
                )


COLUMNS = ("w1", "fd", "precision", "recall", "confidence", "memorised")


def _median(rows, steps, name):
    """The median over seeds; a seed whose samples left the classifier's input range (None: no
    feature metric) counts as worse than any other, and a median that falls on one is None."""
    worst = np.inf if name == "fd" else -np.inf
    values = [worst if r[f"{steps}step"][name] is None else r[f"{steps}step"][name] for r in rows]
    median = float(np.median(values))
    return None if not np.isfinite(median) else median


def table(data) -> list[str]:
    floor = data["floor"]
    head = (
        "| method | velocity / teacher | seeds | CPU s | "
        + " | ".join(
            f"{n} {s}"
            for s in ("1-step", "2-step")
            for n in ("FD (x floor)", "W1 (x floor)", "prec", "recall", "memorised")
        )
        + " |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def cells(metrics_by_steps):
        out = []
        for steps in (1, 2):
            m = metrics_by_steps(steps)
            fd = "n/a" if m["fd"] is None else f"{m['fd']:.1f} ({m['fd'] / floor['fd']:.2f}x)"
            out += [fd, f"{m['w1']:.3f} ({m['w1'] / floor['w1']:.2f}x)"]
            out += ["n/a" if m[k] is None else f"{m[k]:.3f}" for k in ("precision", "recall", "memorised")]
        return out

    lines.append("| floor (train vs held-out) | | | | " + " | ".join(cells(lambda s: floor)) + " |")
    ex = data["exact_ode"]
    lines.append(
        f"| exact ODE of the train split | | | {ex['cpu_seconds']:.0f} | " + " | ".join(cells(lambda s: ex)) + " |"
    )
    groups = {}
    for r in data["rows"]:
        groups.setdefault((r["method"], r["variant"]), []).append(r)
    for method in METHODS:
        for variant in ("default", "reference-batch", "one-sample"):
            rows = groups.get((method, variant))
            if not rows:
                continue
            med = lambda s, rows=rows: {
                k: _median(rows, s, k) for k in ("fd", "w1", "precision", "recall", "memorised")
            }
            cpu = float(np.median([r["cpu_seconds"] for r in rows]))
            lines.append(
                f"| {method} | {rows[0]['config']} | {len(rows)} | {cpu:.0f} | " + " | ".join(cells(med)) + " |"
            )
    return lines


def grid(data):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("held-out data", data["heldout_grid"]), ("exact ODE (train split)", data["exact_ode"]["grid"])]
    seen = set()
    for r in sorted(data["rows"], key=lambda r: (METHODS.index(r["method"]), r["variant"], r["seed"])):
        if (r["method"], r["variant"]) in seen:
            continue
        seen.add((r["method"], r["variant"]))
        label = r["method"] if r["variant"] == "default" else f"{r['method']} ({r['variant']})"
        rows.append((f"{label}, 1-step", r["grid_1step"]))
    fig, axes = plt.subplots(len(rows), GRID_SAMPLES, figsize=(GRID_SAMPLES * 0.6, len(rows) * 0.65))
    for i, (label, images) in enumerate(rows):
        for j in range(GRID_SAMPLES):
            ax = axes[i, j]
            ax.imshow(np.clip(np.asarray(images[j]).reshape(8, 8), -1, 1), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.subplots_adjust(left=0.3)
    GRID.parent.mkdir(exist_ok=True)
    fig.savefig(GRID, dpi=110)
    print(f"wrote {GRID}")


def report(_args):
    data = json.loads(OUT.read_text())
    lines = table(data)
    print("\n".join(lines))
    if PAGE.exists():
        text = PAGE.read_text()
        start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
        PAGE.write_text(text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:])
        print(f"wrote the table into {PAGE}")
    grid(data)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    r.add_argument("--variants", type=lambda s: s.split(","), default=["reference-batch", "one-sample"])
    r.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    r.add_argument("--steps", type=int, default=8000)
    r.add_argument("--teacher-steps", type=int, default=8000)
    r.set_defaults(fn=run)
    sub.add_parser("report").set_defaults(fn=report)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
