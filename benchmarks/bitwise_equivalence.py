"""Did a refactoring change any number? Train every method for 300 steps with fixed seeds and save
the final model, EMA, teacher and extra-state arrays and the whole metric history; run it under two
checkouts and compare the files bit for bit.

    python benchmarks/bitwise_equivalence.py run OUT.npz          # with the ctjax that is importable
    python benchmarks/bitwise_equivalence.py compare OLD.npz NEW.npz

Uses only names that every version since 1f89fea has (the presets, `fit`, the public trainers).
"""

import json
import pathlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import ctjax
from ctjax import training


N = 300  # steps per method


def compare(old_path: str, new_path: str) -> bool:
    """Print and save (benchmarks/results/bitwise_equivalence.json) which methods' arrays are identical."""
    a, b = np.load(old_path), np.load(new_path)
    same = set(a.files) == set(b.files)
    if not same:
        print("arrays only in one file:", sorted(set(a.files) ^ set(b.files))[:10])
    rows = {}
    for method in sorted({k.split("/")[0] for k in a.files}):
        keys = sorted(k for k in set(a.files) & set(b.files) if k.startswith(method + "/"))
        diff = [k for k in keys if not (a[k].shape == b[k].shape and np.array_equal(a[k], b[k], equal_nan=True))]
        same &= not diff
        rows[method] = {"arrays": len(keys), "identical": not diff, "differing": diff}
        verdict = "all bit-identical" if not diff else "DIFFER: " + ", ".join(diff[:5])
        print(f"{method:20s} {len(keys):4d} arrays, {verdict}")
    out = pathlib.Path(__file__).parent / "results" / "bitwise_equivalence.json"
    out.write_text(json.dumps({"old": old_path, "new": new_path, "steps": N, "methods": rows}, indent=2) + "\n")
    return same


if sys.argv[1:2] == ["compare"]:
    sys.exit(0 if compare(sys.argv[2], sys.argv[3]) else 1)
if sys.argv[1:2] != ["run"] or len(sys.argv) != 3:
    sys.exit(__doc__)
out = sys.argv[2]
target = ctjax.presets.gmm2d()
sd = float(jnp.sqrt(jnp.trace(target.covariance()) / 2))
VE = ctjax.VarianceExploding(0.002, 80.0)


def cm(schedule=VE, scal=None, emb="fourier"):
    return ctjax.ConsistencyFunction(
        ctjax.MLP(2, width=32, depth=2, embedding=emb, key=jr.key(0)), schedule, scal or ctjax.EDMScalings(sd)
    )


def adam(total):
    return optax.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 20, total, 1e-5))


trig = ctjax.TrigFlow(sd)
li = ctjax.DiscreteVP.li_huang_wei(16, 2.0, 4.0)
specs = {
    "ct": lambda: (training.ct(adam(N), N, s0=10, s1=150, mu0=0.95), cm()),
    "ict": lambda: (training.ict(adam(N), N, s0=10, s1=640, p_mean=1.0), cm()),
    "cd": lambda: (training.cd(adam(N), training.ExactVelocity(target, VE), num_scales=40, mu=0.95), cm()),
    "ect": lambda: (training.ect(adam(N), N, p_mean=0.0), cm()),
    "sct": lambda: (training.sct(adam(N), warmup_steps=50), cm(trig, ctjax.TrigFlowScalings(sd), "sinusoidal")),
    "sct_noweight": lambda: (
        training.sct(adam(N), warmup_steps=50, adaptive_weighting=False),
        cm(trig, ctjax.TrigFlowScalings(sd), "sinusoidal"),
    ),
    "scd": lambda: (
        training.scd(adam(N), training.ExactVelocity(target, trig), warmup_steps=50),
        cm(trig, ctjax.TrigFlowScalings(sd), "sinusoidal"),
    ),
    "flow_matching": lambda: (
        training.FlowMatchingTrainer(adam(N)),
        cm(trig, ctjax.TrigFlowScalings(sd), "sinusoidal"),
    ),
    "denoising": lambda: (training.DenoisingTrainer(adam(N)), cm()),
    "pretrain_then_ect": lambda: (
        training.PretrainThenTune(training.DenoisingTrainer(adam(100)), training.ect(adam(N - 100), N - 100), 100),
        cm(),
    ),
    "staged_seq": lambda: (
        training.StagedConsistencyTraining(optax.adam(1e-3), "sequential", 20),
        ctjax.StagedConsistencyModel.init(
            lambda k: ctjax.MLP(2, width=16, depth=1, key=k), li, scalings=ctjax.EDMScalings(sd), key=jr.key(0)
        ),
    ),
    "staged_sim": lambda: (
        training.StagedConsistencyTraining(adam(N), "simultaneous", N),
        ctjax.StagedConsistencyModel.init(
            lambda k: ctjax.MLP(2, width=16, depth=1, key=k), li, scalings=ctjax.EDMScalings(sd), key=jr.key(0)
        ),
    ),
    "staged_shared": lambda: (training.staged_shared(adam(N), li.stage_times(), ema_rate=0.999), cm(li)),
}
data_array = np.asarray(target.sample(jr.key(5), 4096))
res = {}
for name, make in specs.items():
    trainer, model = make()
    state = trainer.init(model, key=jr.key(1))
    data = data_array if name in ("ect", "staged_sim") else target
    state, hist = training.fit(trainer, state, data, num_steps=N, batch_size=64, chunk_size=100, progress=False)
    for part in ("model", "ema", "teacher"):
        tree = getattr(state, part)
        if tree is None:
            continue
        leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
        for i, leaf in enumerate(leaves):
            res[f"{name}/{part}/{i}"] = np.asarray(leaf)
    extra = state.extra
    if extra is not None:
        for i, leaf in enumerate(jax.tree_util.tree_leaves(eqx.filter(extra, eqx.is_array))):
            res[f"{name}/extra/{i}"] = np.asarray(leaf)
    for k, v in hist.items():
        res[f"{name}/hist/{k}"] = np.asarray(v)
    print(name, "done", float(np.mean(hist["loss"][-50:])), flush=True)
np.savez(out, **res)
