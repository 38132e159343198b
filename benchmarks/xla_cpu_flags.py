"""What was tried to speed up the CPU training step, measured: XLA's CPU library flags, `fit`'s
`lax.cond`, and the optimiser's share of the step.

- Flags: ctjax's CT step (the setup of `train_throughput.py`) in `fit` at four sizes, in a fresh
  process per flag set, since XLA reads `XLA_FLAGS` once per process. Medians of 5 timings of K
  steps.
- `fit`'s chunk against a plain `lax.scan` of `trainer.step` without the `lax.cond` that lets a
  short last chunk reuse the compiled program, alternating, at width 128 and 256, batch 256.
- Adam with both EMAs (teacher and evaluation) alone, in a `lax.scan`, on the parameters of the
  width-512 network.

    python benchmarks/xla_cpu_flags.py     (about 5 minutes on 2 cores)

Prints tables and writes benchmarks/results/xla_cpu_flags.json.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time


RESULTS = pathlib.Path(__file__).parent / "results"
sys.path.insert(0, str(pathlib.Path(__file__).parent))  # train_throughput's setup and timings
SIZES = [(256, 256, 2), (512, 512, 64), (256, 2048, 2), (512, 2048, 64)]
FLAG_SETS = [
    "",
    "--xla_cpu_experimental_ynn_fusion_type=dot",
    "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_use_xnnpack=false",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
]


def _median_seconds(fn, repeats=5):
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _setup(width, batch, dim):
    import jax.random as jr
    from train_throughput import ctjax_setup

    trainer, model = ctjax_setup(dim, width, 4)
    data = 0.5 * jr.normal(jr.key(2), (8192, dim))
    return trainer, trainer.init(model, key=jr.key(3)), data


def step_ms(width, batch, dim):
    """Milliseconds per step of `fit` (K steps in one chunk)."""
    from ctjax.training import fit

    trainer, state, data = _setup(width, batch, dim)
    k = max(4, round(0.3 / (8 * batch * width * width * 14 / 2.5e11)))

    def run():
        return fit(trainer, state, data, num_steps=k, batch_size=batch, chunk_size=k, progress=False)

    return 1e3 * _median_seconds(run) / k


def cond_against_scan(width, batch, dim, k=40, repeats=5):
    """(fit's ms per step, a plain scan's ms per step), alternating."""
    import equinox as eqx
    import jax
    import jax.random as jr

    from ctjax.training import fit
    from ctjax.training._base import step_key
    from ctjax.training._fit import draw_batch

    trainer, state, data = _setup(width, batch, dim)

    @eqx.filter_jit
    def plain(state):
        def body(state, _):
            k_data, k_step = jr.split(step_key(state))
            return trainer.step(state, draw_batch(data, k_data, batch), key=k_step)

        return jax.lax.scan(body, state, None, length=k)

    runs = {
        "fit": lambda: fit(trainer, state, data, num_steps=k, batch_size=batch, chunk_size=k, progress=False),
        "scan": lambda: plain(state),
    }
    times = {name: [] for name in runs}
    for fn in runs.values():
        jax.block_until_ready(fn())
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) / k for name, t in times.items()}


def optimiser_ms(width=512):
    """Adam with both EMA updates alone on the parameters of the width-`width` network."""
    from train_throughput import ctjax_setup, optimiser_ms as measure

    _, model = ctjax_setup(2, width, 4)
    return measure(model)


def child(mode):
    if mode == "steps":
        rows = [{"width": w, "batch": b, "dim": d, "ms_per_step": step_ms(w, b, d)} for w, b, d in SIZES]
        print(json.dumps(rows))
    else:
        cond = {f"{w}x{b}": cond_against_scan(w, b, d) for w, b, d in [(128, 256, 2), (256, 256, 2)]}
        print(json.dumps({"cond_against_scan": cond, "optimiser": optimiser_ms()}))


def run_child(mode, flags=""):
    env = {**os.environ, "XLA_FLAGS": flags}
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=["steps", "anatomy"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    start = time.perf_counter()
    flags = []
    header = "".join(f"{f'{w}/{b}/{d}':>14}" for w, b, d in SIZES)
    print(f"ms per step (width/batch/d)  {header}")
    for flag in FLAG_SETS:
        rows = run_child("steps", flag)
        flags.append({"flags": flag, "rows": rows})
        cells = "".join(f"{r['ms_per_step']:14.2f}" for r in rows)
        print(f"{flag or '(default)':<60}{cells}", flush=True)
    default = {(r["width"], r["batch"]): r["ms_per_step"] for r in flags[0]["rows"]}
    for entry in flags:
        for r in entry["rows"]:
            r["relative_to_default"] = r["ms_per_step"] / default[(r["width"], r["batch"])]
    anatomy = run_child("anatomy")
    for size, ms in anatomy["cond_against_scan"].items():
        print(f"{size}: fit {ms['fit']:.2f} ms/step, plain scan without the cond {ms['scan']:.2f} ms/step")
    opt = anatomy["optimiser"]
    print(f"Adam + teacher EMA + evaluation EMA on {opt['params']} parameters: {opt['ms_per_step']:.2f} ms/step")
    RESULTS.mkdir(exist_ok=True)
    result = {"flags": flags, **anatomy, "total_seconds": time.perf_counter() - start}
    (RESULTS / "xla_cpu_flags.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
