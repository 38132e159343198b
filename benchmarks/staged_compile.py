"""Compile time, steady-state step time and memory of the staged sequential trainer against T.

Li, Huang and Wei's staged consistency training (`StagedConsistencyTraining(mode="sequential")`) on
a `StagedConsistencyModel` (one `MLP(2, width=64, depth=2)` per stage, EDM scalings) over
`DiscreteVP.li_huang_wei(T, 2.0, c1)` with c1 = 4 (c1 = 3 at T = 8, where c1 = 4 gives a beta above 1),
trained with `ctjax.training.fit` on 2-D data, batch 256, 20 steps per stage (so stage changes happen
inside every timed chunk).

Every T runs in a fresh Python process with JAX's persistent compilation cache switched off, so the
first call compiles from scratch. Per T it measures

- `first_chunk_seconds`: the first `fit` call of K steps (tracing, compilation and K steps), and
  `compile_seconds` = that minus the steady-state time of K steps: the time to the first step;
- `step_ms`: steady state, the median over repeats of a K-step `fit` call, per step;
- memory: the peak resident set size of the process (`ru_maxrss`), the baseline after importing
  and a first tiny computation, the size of the training state, and XLA's `memory_analysis()` of
  the compiled chunk (argument, output and temporary bytes).

The largest T (default 1024) is the memory run. Writes benchmarks/results/staged_compile.json.

    python benchmarks/staged_compile.py [--stages 8,64,512,1024]
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time


RESULTS = pathlib.Path(__file__).parent / "results"


def child(args) -> dict:
    import resource

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    jax.config.update("jax_compilation_cache_dir", None)

    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    import ctjax
    from ctjax.training import fit, StagedConsistencyTraining
    from ctjax.training._fit import run_chunk

    num_stages, k = args.child, args.chunk
    jnp.ones(3).block_until_ready()
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    c1 = 4.0 if num_stages > 8 else 3.0
    schedule = ctjax.DiscreteVP.li_huang_wei(num_stages, 2.0, c1)
    start = time.perf_counter()
    model = ctjax.StagedConsistencyModel.init(
        lambda key: ctjax.MLP(2, width=args.width, depth=args.depth, key=key),
        schedule,
        scalings=ctjax.EDMScalings(0.5),
        key=jr.key(0),
    )
    trainer = StagedConsistencyTraining(optax.adam(1e-3), "sequential", args.steps_per_stage)
    state = trainer.init(model, key=jr.key(1))
    jax.block_until_ready(eqx.filter(state, eqx.is_array))
    init_s = time.perf_counter() - start
    data = 0.5 * jr.normal(jr.key(2), (8192, 2), jnp.float32)
    state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(eqx.filter(state, eqx.is_array)))

    def run(state):
        return fit(trainer, state, data, num_steps=k, batch_size=args.batch, chunk_size=k, progress=False)

    start = time.perf_counter()
    state, history = run(state)
    first_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, history = run(state)
        times.append(time.perf_counter() - start)
    chunk_s = statistics.median(times)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    compiled = run_chunk.lower(trainer, state, data, jnp.asarray(k), args.batch, k).compile()
    analysis = compiled.compiled.memory_analysis()
    memory = {}
    if analysis is not None:
        for name in ("argument", "output", "temp", "alias", "generated_code"):
            value = getattr(analysis, f"{name}_size_in_bytes", None)
            if value is not None:
                memory[f"xla_{name}_bytes"] = int(value)
    return {
        "stages": num_stages,
        "c1": c1,
        "params_per_stage": sum(
            x.size for x in jax.tree_util.tree_leaves(eqx.filter(model.stage_net(0), eqx.is_array))
        ),
        "model_init_seconds": init_s,
        "first_chunk_seconds": first_s,
        "compile_seconds": first_s - chunk_s,
        "step_ms": 1000 * chunk_s / k,
        "step_ms_best": 1000 * min(times) / k,
        "steps_per_chunk": k,
        "final_stage": int(state.extra.stage) + 1,
        "state_bytes": int(state_bytes),
        "peak_rss_bytes": int(peak_rss),
        "baseline_rss_bytes": int(baseline_rss),
        **memory,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="8,64,512,1024", help="T values; the last one is the memory run")
    parser.add_argument("--chunk", type=int, default=100, help="steps per timed fit call (K)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps-per-stage", type=int, default=20)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "staged_compile.json"))
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args)))
        return

    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    rows = []
    print(
        f"{'T':>6}{'compile s':>11}{'first chunk s':>15}{'step ms':>9}{'state MB':>10}{'peak RSS MB':>13}{'XLA temp MB':>13}"
    )
    for num_stages in map(int, args.stages.split(",")):
        command = [sys.executable, __file__, "--child", str(num_stages)]
        for name in ("chunk", "repeats", "batch", "width", "depth", "steps_per_stage"):
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{num_stages:6d}{row['compile_seconds']:11.2f}{row['first_chunk_seconds']:15.2f}{row['step_ms']:9.3f}"
            f"{row['state_bytes'] / 2**20:10.1f}{row['peak_rss_bytes'] / 2**20:13.0f}"
            f"{row.get('xla_temp_bytes', float('nan')) / 2**20:13.2f}",
            flush=True,
        )
    import jax

    result = {
        "rows": rows,
        "memory_run": rows[-1],
        "setup": {
            "network": f"MLP(2, width={args.width}, depth={args.depth}) per stage, EDMScalings(0.5)",
            "schedule": "DiscreteVP.li_huang_wei(T, 2.0, c1), c1 = 4 (3 at T = 8)",
            "trainer": f"StagedConsistencyTraining(optax.adam(1e-3), 'sequential', {args.steps_per_stage})",
            "batch": args.batch,
            "steps_per_timed_chunk": args.chunk,
            "repeats": args.repeats,
            "persistent_compilation_cache": False,
            "fresh_process_per_T": True,
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
