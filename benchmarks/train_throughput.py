"""Training-step throughput: a ctjax CT step against the identical step written in PyTorch, on one CPU.

Both sides train the same consistency function on the same data in float32:

- network: `ctjax.MLP(dim, width, depth)` (Fourier time embedding with 64 features and the same
  frequencies, a two-layer conditioning MLP, `depth` residual blocks with additive conditioning,
  zero-initialised output layer), wrapped in `ConsistencyFunction` with `EDMScalings(0.5)` on the
  VE schedule (sigma in [0.002, 80]): c_skip, c_out, c_in, c_noise = log(sigma)/4 and the exact
  boundary condition; the PyTorch model starts from a copy of the ctjax parameters and the script
  checks that both compute the same f(t, x) before timing;
- step: Song et al.'s CT (`ctjax.training.ct(optax.adam(1e-4), 100_000)`): data drawn with
  replacement from an (8192, dim) array, interval i ~ U{0..N(k)-2} on the Karras grid of the
  sqrt curriculum N(k), coupled noise x_hi = x0 + t_{i+1} z, x_lo = x0 + t_i z, student at
  (t_{i+1}, x_hi), EMA teacher (no gradient) at (t_i, x_lo), mean squared-L2 loss, gradient norm,
  Adam, then the teacher EMA mu(k) = exp(s0 log mu0 / N(k)) and the evaluation EMA (rate 0.999).

Timing is steady state: after compilation and warm-up, the median over repeats of K steps, run as
users run them (ctjax: one `ctjax.training.fit` call with `chunk_size=K`, i.e. one compiled
`lax.scan` of K steps; PyTorch: a Python loop of K eager steps). The two sides alternate within
each repeat, each going first in every other repeat, so that they see the same machine load. Both use the same number of threads: XLA's
CPU thread pool uses every visible core, so PyTorch gets `torch.set_num_threads(os.cpu_count())`
(and one inter-op thread).

FLOPs per step are counted analytically as 8 * batch * P, where P is the number of parameters of
the network (every weight is used once per example in a multiply-add, 2 FLOPs): 2 * B * P for the
student's forward pass, 4 * B * P for its backward pass (gradients with respect to activations and
weights), and 2 * B * P for the teacher's forward pass. Elementwise work (activations, scalings,
Adam, EMA) is not counted. The fraction is against the median FLOP/s of a 4096 x 4096 float32
`jnp.matmul` measured in the same run (the practical peak of this CPU for XLA).

    python benchmarks/train_throughput.py [--widths 128,256,512] [--batches 256,512,2048] [--dims 2,64]

Prints a table and writes benchmarks/results/train_throughput.json.
"""

import argparse
import functools
import json
import math
import os
import pathlib
import platform
import statistics
import time

# PyTorch runs with libgomp's default waiting (spin briefly, then sleep), its out-of-the-box
# setting. Measured on the quiet 2-core machine: OMP_WAIT_POLICY=PASSIVE makes PyTorch's small
# kernels up to 2x slower (a thread wake-up per operation), and ACTIVE makes its idle threads spin
# through the ctjax timings and halves ctjax's rate; both would bias the ratio. On a machine
# shared with other jobs, the default spinning can slow PyTorch several-fold: run this on a quiet
# machine.
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import ctjax
from ctjax.training import fit
from ctjax.training._base import partition_trainable


RESULTS = pathlib.Path(__file__).parent / "results"
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
S0, S1, MU0, EMA_RATE, TOTAL_STEPS, LR = 2, 150, 0.9, 0.999, 100_000, 1e-4
RHO = 7.0
NUM_DATA = 8192


# ---------------------------------------------------------------------------------------------
# ctjax side


def ctjax_setup(dim, width, depth):
    schedule = ctjax.VarianceExploding(SIGMA_MIN, SIGMA_MAX)
    net = ctjax.MLP(dim, width=width, depth=depth, key=jr.key(0))
    model = ctjax.ConsistencyFunction(net, schedule, ctjax.EDMScalings(SIGMA_DATA))
    trainer = ctjax.training.ct(optax.adam(LR), TOTAL_STEPS, s0=S0, s1=S1, mu0=MU0, ema_rate=EMA_RATE)
    return trainer, model


def num_params(model) -> int:
    params, _ = partition_trainable(model)
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


# ---------------------------------------------------------------------------------------------
# PyTorch side (the identical step)


def torch_setup(jax_model, data_np, batch, threads):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    net = jax_model.net

    def linear(layer):
        lin = torch.nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.array(layer.weight)))
            lin.bias.copy_(torch.from_numpy(np.array(layer.bias)))
        return lin

    class Block(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.linear1, self.linear2, self.cond_proj = (
                linear(block.linear1),
                linear(block.linear2),
                linear(block.cond_proj),
            )

        def forward(self, h, cond):
            return h + self.linear2(F.silu(self.linear1(F.silu(h)) + self.cond_proj(cond)))

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("freqs", torch.from_numpy(np.array(net.embedding.frequencies(jnp.float32))))
            self.cond_in, self.cond_out, self.inp, self.out = (
                linear(net.cond_in),
                linear(net.cond_out),
                linear(net.inp),
                linear(net.out),
            )
            self.blocks = torch.nn.ModuleList([Block(b) for b in net.blocks])

        def forward(self, x, c_noise):
            arg = (2 * math.pi) * self.freqs[None, :] * c_noise[:, None]
            emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)
            cond = F.silu(self.cond_out(F.silu(self.cond_in(emb))))
            h = self.inp(x)
            for block in self.blocks:
                h = block(h, cond)
            return self.out(F.silu(h))

    def consistency(f, t, x):
        """EDM scalings on the VE schedule (alpha = 1, sigma = t), exact at t_min."""
        c_skip = SIGMA_DATA**2 / ((t - SIGMA_MIN) ** 2 + SIGMA_DATA**2)
        root = torch.sqrt(SIGMA_DATA**2 + t**2)
        c_out = SIGMA_DATA * (t - SIGMA_MIN) / root
        c_in = 1.0 / root
        c_noise = 0.25 * torch.clamp(torch.log(t), -30.0, 30.0)
        out = c_skip[:, None] * x + c_out[:, None] * f(c_in[:, None] * x, c_noise)
        return torch.where((t <= SIGMA_MIN)[:, None], x, out)

    def num_scales(k):
        frac = min(max(k / TOTAL_STEPS, 0.0), 1.0)
        inner = math.sqrt(frac * ((S1 + 1) ** 2 - S0**2) + S0**2)
        return min(max(math.ceil(inner - 1) + 1, 2), S1 + 1)

    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)

    def karras_time(i, n):
        t = torch.clamp((lo + i.float() / (n - 1) * (hi - lo)) ** RHO, SIGMA_MIN, SIGMA_MAX)
        t = torch.where(i == 0, torch.full_like(t, SIGMA_MIN), t)
        return torch.where(i == n - 1, torch.full_like(t, SIGMA_MAX), t)

    model, teacher, ema = MLP(), MLP(), MLP()
    params = list(model.parameters())
    teacher_params, ema_params = list(teacher.parameters()), list(ema.parameters())
    for p in teacher_params + ema_params:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    data = torch.from_numpy(np.array(data_np))
    state = {"step": 0}

    def step():
        k = state["step"]
        n = num_scales(k)
        x0 = data[torch.randint(0, data.shape[0], (batch,))]
        i = torch.randint(0, n - 1, (batch,))
        t_lo, t_hi = karras_time(i, n), karras_time(i + 1, n)
        z = torch.randn_like(x0)
        x_hi = x0 + t_hi[:, None] * z
        x_lo = x0 + t_lo[:, None] * z
        with torch.no_grad():
            teacher_out = consistency(teacher, t_lo, x_lo)
        loss = torch.mean(torch.sum((consistency(model, t_hi, x_hi) - teacher_out) ** 2, dim=-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
        optimizer.step()
        mu = math.exp(S0 * math.log(MU0) / n)
        with torch.no_grad():
            torch._foreach_lerp_(teacher_params, params, 1.0 - mu)
            torch._foreach_lerp_(ema_params, params, 1.0 - EMA_RATE)
        state["step"] = k + 1
        return loss.detach(), grad_norm

    def run(num_steps):
        out = [step() for _ in range(num_steps)]
        return torch.stack([loss for loss, _ in out]).numpy()

    def evaluate(t, x):
        with torch.no_grad():
            return consistency(model, torch.from_numpy(t), torch.from_numpy(x)).numpy()

    return run, evaluate


# ---------------------------------------------------------------------------------------------


def peak_matmul_flops(n=4096, repeats=7):
    """(median, best) FLOP/s of an n x n float32 matmul: jax.jit(jnp.matmul), then torch.matmul."""
    import torch

    a = jr.normal(jr.key(0), (n, n), jnp.float32)
    b = jr.normal(jr.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    mm(a, b).block_until_ready()
    ta @ tb
    jax_times, torch_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, b).block_until_ready()
        jax_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        ta @ tb
        torch_times.append(time.perf_counter() - start)
    flops = 2 * n**3
    return [(flops / statistics.median(t), flops / min(t)) for t in (jax_times, torch_times)]


def optimiser_ms(model, steps=50, repeats=5):
    """{"params", "ms_per_step"}: the CT step's update alone on `model`'s parameters (Adam, the
    teacher EMA and the evaluation EMA, in a compiled `lax.scan` of `steps`): memory-bound work of
    every training step, on both sides, that no faster product removes."""
    import equinox as eqx

    from ctjax.training._base import ema_update

    params = eqx.filter(model, eqx.is_inexact_array)
    adam = optax.adam(LR)

    def body(carry, _):
        params, opt_state, teacher, average = carry
        grads = jax.tree_util.tree_map(lambda p: 1e-3 * p, params)
        updates, opt_state = adam.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, ema_update(teacher, params, MU0), ema_update(average, params, EMA_RATE)), None

    run = jax.jit(lambda carry: jax.lax.scan(body, carry, None, length=steps)[0])
    carry = (params, adam.init(params), params, params)
    jax.block_until_ready(run(carry))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(carry))
        times.append(time.perf_counter() - start)
    count = sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
    return {"params": count, "ms_per_step": 1e3 * statistics.median(times) / steps}


def call_and_wait(fn, *args):
    return jax.block_until_ready(fn(*args))


def dense_product_ms(batch, width, repeats, layers=13, seconds=0.1):
    """Milliseconds of each library for the three batch x width x width products of a dense layer:
    forward x W^T, input gradient dy W and weight gradient dy^T x.

    Each runs as a chain whose next operand is the last product, as products follow one another in
    a network, through `layers` distinct weights per pass (as many as the step's dense layers, so
    that loop overhead is shared as in a step): h <- h Q_l^T and g <- g Q_l with Q_l orthogonal, and
    the Newton-Schulz step u <- 1.5 u - 0.5 u (u^T u) (one `addmm` in PyTorch) from u of
    orthonormal columns or rows, which keeps u. The weight-gradient time is that last chain's
    time less the input-gradient time (a difference of two medians: noisy for small products).
    XLA runs each chain as one compiled `lax.scan` over passes (as `fit` runs the step), PyTorch as
    an eager loop of the `linear` / `mm` calls its autograd makes. The sides alternate, each going
    first in every other repeat; medians per product. Measured in every row, right after its step
    timings, so that both see the same machine load. Returns {"ctjax": {"fwd", "dx", "dw", "dw+dx"}, "torch": ...}.
    """
    import torch

    passes = int(min(max(round(seconds / (layers * 2 * batch * width * width / 2e11)), 2), 64))
    qs = jnp.linalg.qr(jr.normal(jr.key(7), (layers, width, width), jnp.float32))[0]
    # Orthonormal columns, or orthonormal rows when batch < width: either way u u^T u = u.
    tall = jnp.linalg.qr(jr.normal(jr.key(8), (max(batch, width), min(batch, width)), jnp.float32))[0]
    u = tall if batch >= width else tall.T
    chains = {
        "fwd": (lambda h, q: h @ q.T, lambda h, tq: torch.nn.functional.linear(h, tq)),
        "dx": (lambda g, q: g @ q, lambda g, tq: g.mm(tq)),
        "dw+dx": (
            lambda u, q: 1.5 * u - 0.5 * (u @ (u.T @ u)),
            lambda u, tq: torch.addmm(u, u, u.t().mm(u), beta=1.5, alpha=-0.5),
        ),
    }
    tqs = [torch.from_numpy(np.array(q)) for q in qs]
    per_product = {"ctjax": {}, "torch": {}}
    for name, (ours, theirs) in chains.items():

        def one_pass(x, ours=ours):
            for layer in range(layers):
                x = ours(x, qs[layer])
            return x

        scan = jax.jit(lambda x, one_pass=one_pass: jax.lax.scan(lambda c, _: (one_pass(c), None), x, length=passes)[0])

        def torch_chain(x, theirs=theirs):
            for _ in range(passes):
                for tq in tqs:
                    x = theirs(x, tq)
            return x

        run_ours = functools.partial(call_and_wait, scan, u)
        run_theirs = functools.partial(torch_chain, torch.from_numpy(np.array(u)))
        # Orthogonal factors keep the norm, and u is a fixed point of its step: checked on both sides.
        norm = float(jnp.linalg.norm(u))
        assert abs(float(jnp.linalg.norm(run_ours())) / norm - 1) < 1e-3
        assert abs(float(torch.linalg.norm(run_theirs())) / norm - 1) < 1e-3
        ctjax_times, torch_times = time_pair(run_ours, run_theirs, repeats)
        per_product["ctjax"][name] = 1e3 * statistics.median(ctjax_times) / (passes * layers)
        per_product["torch"][name] = 1e3 * statistics.median(torch_times) / (passes * layers)
    for side in per_product.values():
        side["dw"] = side["dw+dx"] - side["dx"]
    return per_product


def time_pair(run_ctjax, run_torch, repeats):
    """Seconds of each side, alternating within every repeat and each side first in every other
    repeat: (ctjax times, torch times)."""
    times = {run_ctjax: [], run_torch: []}
    for i in range(repeats):
        for run in (run_ctjax, run_torch) if i % 2 == 0 else (run_torch, run_ctjax):
            start = time.perf_counter()
            run()
            times[run].append(time.perf_counter() - start)
    return times[run_ctjax], times[run_torch]


def bench_one(width, depth, batch, dim, peak, args):
    trainer, model = ctjax_setup(dim, width, depth)
    params = num_params(model)
    flops = 8 * batch * params
    # K: enough steps for about `--seconds` per timed block (estimated at 25% of peak plus overhead).
    est = flops / (0.25 * peak) + 3e-4
    k = int(min(max(round(args.seconds / est), 4), 1000))
    data_np = np.asarray(SIGMA_DATA * jr.normal(jr.key(2), (NUM_DATA, dim), jnp.float32))
    data = jnp.asarray(data_np)

    state = trainer.init(model, key=jr.key(1))
    holder = {"state": state}

    def run_ctjax():
        holder["state"], history = fit(
            trainer, holder["state"], data, num_steps=k, batch_size=batch, chunk_size=k, progress=False
        )
        return history

    start = time.perf_counter()
    run_ctjax()
    compile_s = time.perf_counter() - start
    run_ctjax()

    run_torch, evaluate = torch_setup(model, data_np, batch, args.threads)
    run_torch(k)
    ctjax_times, torch_times = time_pair(run_ctjax, lambda: run_torch(k), args.repeats)
    ctjax_rate, torch_rate = k / statistics.median(ctjax_times), k / statistics.median(torch_times)
    # The step's width x width layers (the conditioning MLP's second layer and three per block),
    # each run forward twice (student, teacher) and backward once (input and weight gradients).
    products = dense_product_ms(batch, width, 2 * args.repeats + 1)
    layers = 1 + 3 * depth
    dense = {side: layers * (2 * ms["fwd"] + ms["dw+dx"]) for side, ms in products.items()}
    update = optimiser_ms(model)["ms_per_step"]
    return {
        "width": width,
        "depth": depth,
        "batch": batch,
        "dim": dim,
        "ctjax_steps_per_s": ctjax_rate,
        "torch_steps_per_s": torch_rate,
        "ratio": ctjax_rate / torch_rate,
        "flops_fraction_of_peak": flops * ctjax_rate / peak,
        "torch_flops_fraction_of_peak": flops * torch_rate / peak,
        "ctjax_steps_per_s_best": k / min(ctjax_times),
        "torch_steps_per_s_best": k / min(torch_times),
        "params": params,
        "flops_per_step": flops,
        "steps_per_timing": k,
        "ctjax_first_call_seconds": compile_s,
        "ctjax_dense_ms_per_step": dense["ctjax"],
        "torch_dense_ms_per_step": dense["torch"],
        "dense_only_ratio": dense["torch"] / dense["ctjax"],
        # PyTorch's whole step against ctjax's width x width products and optimiser update alone:
        # the ratio ctjax would reach if everything else in its step cost nothing.
        "ctjax_update_ms_per_step": update,
        "ratio_ceiling": 1e3 / torch_rate / (dense["ctjax"] + update),
        "ratio_ceiling_products_only": 1e3 / torch_rate / dense["ctjax"],
        "ctjax_dense_share_of_step": dense["ctjax"] * ctjax_rate / 1e3,
        "torch_dense_share_of_step": dense["torch"] * torch_rate / 1e3,
        "dense_product_ms": products,
    }


def max_function_difference(model, dim, threads):
    """Both implementations evaluate f(t, x) on the same random points with the same parameters
    (the zero-initialised output layer replaced by random weights so that F is not zero)."""
    import equinox as eqx

    out = model.net.out
    model = eqx.tree_at(
        lambda m: (m.net.out.weight, m.net.out.bias),
        model,
        (0.1 * jr.normal(jr.key(5), out.weight.shape), 0.1 * jr.normal(jr.key(6), out.bias.shape)),
    )
    rng = np.random.default_rng(0)
    t = np.exp(rng.uniform(np.log(SIGMA_MIN), np.log(SIGMA_MAX), 256)).astype(np.float32)
    t[0] = SIGMA_MIN
    x = (rng.normal(size=(256, dim)) * (1 + t[:, None])).astype(np.float32)
    ours = np.asarray(jax.vmap(model)(jnp.asarray(t), jnp.asarray(x)))
    _, evaluate = torch_setup(model, x, 1, threads)
    theirs = evaluate(t, x)
    return float(np.max(np.abs(ours - theirs) / (1 + np.abs(ours))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="128,256,512")
    parser.add_argument("--batches", default="256,512,2048")
    parser.add_argument("--dims", default="2,64")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.25, help="target seconds per timed block of K steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch intra-op threads")
    parser.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    start_all = time.perf_counter()
    (peak, peak_best), (torch_peak, torch_peak_best) = peak_matmul_flops()
    print(
        f"float32 matmul 4096^2, median (best): jnp {peak / 1e9:.1f} ({peak_best / 1e9:.1f}) GFLOP/s, "
        f"torch {torch_peak / 1e9:.1f} ({torch_peak_best / 1e9:.1f}) GFLOP/s"
    )
    _, check_model = ctjax_setup(64, 128, args.depth)
    difference = max_function_difference(check_model, 64, args.threads)
    print(f"max relative |f_ctjax - f_torch| on 256 points: {difference:.2e}")

    rows = []
    header = (
        f"{'width':>6}{'batch':>7}{'dim':>5}{'ctjax/s':>10}{'torch/s':>10}{'ratio':>7}{'peak%':>7}"
        f"{'dense-only ratio':>18}{'ceiling':>9}{'dense share ctjax/torch':>25}{'K':>6}"
    )
    print(header)
    for dim in map(int, args.dims.split(",")):
        for width in map(int, args.widths.split(",")):
            for batch in map(int, args.batches.split(",")):
                row = bench_one(width, args.depth, batch, dim, peak, args)
                rows.append(row)
                print(
                    f"{width:6d}{batch:7d}{dim:5d}{row['ctjax_steps_per_s']:10.1f}{row['torch_steps_per_s']:10.1f}"
                    f"{row['ratio']:7.2f}{100 * row['flops_fraction_of_peak']:7.1f}{row['dense_only_ratio']:18.2f}{row['ratio_ceiling']:9.2f}"
                    f"{row['ctjax_dense_share_of_step']:17.2f} / {row['torch_dense_share_of_step']:5.2f}"
                    f"{row['steps_per_timing']:6d}",
                    flush=True,
                )
    result = {
        "rows": rows,
        "peak_matmul_flops_per_s": peak,
        "peak_matmul_flops_per_s_best": peak_best,
        "torch_peak_matmul_flops_per_s": torch_peak,
        "torch_peak_matmul_flops_per_s_best": torch_peak_best,
        "max_relative_function_difference": difference,
        "total_seconds": time.perf_counter() - start_all,
        "flops_formula": "8 * batch * params (student forward 2BP + backward 4BP, teacher forward 2BP)",
        "timing": f"median of {args.repeats} repeats of K steps; ctjax: fit(chunk_size=K), torch: eager loop",
        "threads": {
            "xla": os.cpu_count(),
            "torch_intra_op": args.threads,
            "torch_inter_op": 1,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "backend": jax.default_backend(),
        },
    }
    print(f"total {result['total_seconds']:.0f} s")
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
