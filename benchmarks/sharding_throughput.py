"""Training throughput of data-parallel `fit(..., mesh=...)` against the number of devices.

Each device count runs in its own Python process, because JAX fixes the device count when it
starts: on CPU the devices are forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N),
which split one machine's cores, so this measures the overhead of the sharded program rather than
a speed-up; on a machine with N accelerators pass --platform gpu (or tpu) to use them.

Workload: improved consistency training (ict) on the gmm2d preset, MLP width 128, depth 3, batch
1024, float32. `devices = 0` is the plain single-device `fit` (no mesh); `1` is a mesh of one device.

Writes benchmarks/results/sharding_throughput.json.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time


ROOT = pathlib.Path(__file__).parent
RESULTS = ROOT / "results"


def measure(devices: int, steps: int, batch_size: int, chunk_size: int, repeats: int) -> dict:
    """Runs in the child process."""
    import jax
    import jax.random as jr
    import optax

    import ctjax
    from ctjax.training import fit, ict

    mesh = None
    if devices > 0:
        auto = (jax.sharding.AxisType.Auto,)
        mesh = jax.make_mesh((devices,), ("data",), axis_types=auto, devices=jax.devices()[:devices])
    target = ctjax.presets.gmm2d()
    net = ctjax.MLP(2, width=128, depth=3, key=jr.key(0))
    model = ctjax.ConsistencyFunction(net, ctjax.VarianceExploding(0.002, 80.0), ctjax.EDMScalings(0.5))
    trainer = ict(optax.adam(1e-4), steps * (repeats + 1))
    state = trainer.init(model, key=jr.key(1))

    def train(state, num_steps):
        return fit(
            trainer,
            state,
            target,
            num_steps=num_steps,
            batch_size=batch_size,
            chunk_size=chunk_size,
            progress=False,
            mesh=mesh,
        )[0]

    start = time.perf_counter()
    state = train(state, chunk_size)  # compiles
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state = train(state, steps)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {
        "devices": devices,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "first_chunk_s": compile_s,
        "seconds": times,
        "steps_per_s": steps / best,
        "examples_per_s": steps * batch_size / best,
    }


def main():
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--platform", default="cpu", help="cpu (forced host devices) or gpu/tpu (real devices)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "sharding_throughput.json")
    args = parser.parse_args()

    if args.child is not None:
        row = measure(args.child, args.steps, args.batch_size, args.chunk_size, args.repeats)
        print("RESULT " + json.dumps(row))
        return

    rows = []
    for n in args.devices:
        env = {**os.environ, "JAX_PLATFORMS": args.platform, "POT_BACKEND_DISABLE_PYTORCH": "1"}
        if args.platform == "cpu":
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(n, 1)}"
        cmd = [sys.executable, __file__, "--child", str(n), "--steps", str(args.steps)]
        cmd += ["--batch-size", str(args.batch_size), "--chunk-size", str(args.chunk_size)]
        cmd += ["--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"devices={n} failed:\n{proc.stderr[-3000:]}")
        row = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
        rows.append(row)
        print(
            f"devices={n:2d} ({row['platform']}): {row['steps_per_s']:8.1f} steps/s, "
            f"{row['examples_per_s']:10.0f} examples/s (first chunk {row['first_chunk_s']:.1f} s)"
        )
    result = {
        "workload": "ict on gmm2d, MLP(2, width=128, depth=3), float32",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
