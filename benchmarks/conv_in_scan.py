"""The ConvNet's convolutions: im2col matrix products (what `ctjax.ConvNet` does) against `lax.conv`
(Equinox's `Conv2d.__call__` on the same parameters), inside and outside `lax.scan`.

XLA's CPU backend runs convolutions and their gradients far slower inside a loop than outside one
(jax-ml/jax#12868), and `ctjax.training.fit` runs every step inside `lax.scan`. Both forms compute
the same network (checked here before timing). Timed: one gradient step of the mean squared output
(forward and backward through the whole network) on a batch of 8x8 digits-shaped inputs, as K steps
in one `lax.scan` and as single jitted calls; medians over repeats, alternating the variants.

    python benchmarks/conv_in_scan.py [--channels 16,32] [--batch 128] [--repeats 3]

Prints a table and writes benchmarks/results/conv_in_scan.json.
"""

import argparse
import json
import pathlib
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import ctjax


RESULTS = pathlib.Path(__file__).parent / "results"
K = 8


def lax_conv_forward(net: ctjax.ConvNet, x, c_noise):
    """The ConvNet's forward pass with every convolution and GroupNorm as Equinox's layer call
    (`lax.conv_general_dilated`, channels first)."""

    def block(b, h, cond):
        u = b.conv1(jax.nn.silu(b.norm1(h))) + b.cond_proj(cond)[:, None, None]
        u = b.conv2(jax.nn.silu(b.norm2(u)))
        return (h if b.skip is None else b.skip(h)) + u

    cond = jax.nn.silu(net.cond_out(jax.nn.silu(net.cond_in(net.embedding(c_noise)))))  # pyright: ignore
    h = net.conv_in(x.reshape(net.image_shape))
    skip = block(net.block_high, h, cond)
    h = block(net.block_low2, block(net.block_low1, net.down(skip), cond), cond)
    h = net.up(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
    h = block(net.block_up, jnp.concatenate([h, skip]), cond)
    return net.conv_out(jax.nn.silu(net.norm_out(h))).reshape(-1)


def variants():
    forwards = {"im2col (ctjax)": lambda n, x, c: n(x, c), "lax.conv": lax_conv_forward}
    out = {}
    for name, forward in forwards.items():

        def update(n, xs, cs, forward=forward):
            grads = eqx.filter_grad(lambda n: jnp.mean(jax.vmap(lambda x, c: forward(n, x, c))(xs, cs) ** 2))(n)
            return jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, n, grads)

        def scanned(n, xs, cs, update=update):
            params, static = eqx.partition(n, eqx.is_array)

            def body(p, _):
                return eqx.filter(update(eqx.combine(p, static), xs, cs), eqx.is_array), None

            return eqx.combine(jax.lax.scan(body, params, None, length=K)[0], static)

        out[name] = (eqx.filter_jit(update), eqx.filter_jit(scanned))
    return out


def ms_per_step(fn, args, steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / steps * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", default="16,32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for channels in [int(c) for c in args.channels.split(",")]:
        net = ctjax.ConvNet((1, 8, 8), channels=channels, key=jr.key(0))
        # Non-zero output layer, so that the comparison and the gradients see the whole network.
        net = eqx.tree_at(lambda n: n.conv_out.weight, net, 0.05 * jr.normal(jr.key(1), net.conv_out.weight.shape))
        xs = jr.normal(jr.key(2), (args.batch, 64))
        cs = jr.uniform(jr.key(3), (args.batch,), minval=-1.5, maxval=1.5)
        ours = jax.vmap(net)(xs, cs)
        reference = jax.vmap(lax_conv_forward, in_axes=(None, 0, 0))(net, xs, cs)
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-4, atol=1e-5)
        timed = variants()
        row = {"channels": channels, "batch": args.batch, "steps_per_scan": K}
        for name, (single, scanned) in timed.items():
            start = time.perf_counter()
            jax.block_until_ready(scanned(net, xs, cs))
            row[f"{name} compile_s (scan)"] = time.perf_counter() - start
            jax.block_until_ready(single(net, xs, cs))
        for name in timed:
            row[f"{name} ms/step in scan"] = []
            row[f"{name} ms/step single"] = []
        for _ in range(args.repeats):
            for name, (single, scanned) in timed.items():
                row[f"{name} ms/step in scan"].append(ms_per_step(scanned, (net, xs, cs), K))
                row[f"{name} ms/step single"].append(ms_per_step(single, (net, xs, cs), 1))
        for key in [k for k in row if k.endswith(("in scan", "single"))]:
            row[key] = statistics.median(row[key])
        row["speedup in scan"] = row["lax.conv ms/step in scan"] / row["im2col (ctjax) ms/step in scan"]
        rows.append(row)
        print(
            f"channels {channels:3d} batch {args.batch}: in scan im2col {row['im2col (ctjax) ms/step in scan']:.1f} ms, "
            f"lax.conv {row['lax.conv ms/step in scan']:.1f} ms ({row['speedup in scan']:.1f}x); single call "
            f"im2col {row['im2col (ctjax) ms/step single']:.1f} ms, lax.conv {row['lax.conv ms/step single']:.1f} ms",
            flush=True,
        )
    RESULTS.mkdir(exist_ok=True)
    meta = {"backend": jax.default_backend(), "devices": str(jax.devices()), "jax": jax.__version__}
    (RESULTS / "conv_in_scan.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
