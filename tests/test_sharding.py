"""Data-parallel training on a `jax.sharding.Mesh` of 4 forced host devices.

JAX fixes its device count when it starts, and this test process already started it with one
CPU device; so the checks run in a fresh Python with XLA_FLAGS=--xla_force_host_platform_device_count=4
and report back as JSON.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest


CHILD = textwrap.dedent(
    r"""
    import json, sys, tempfile

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P

    import ctjax
    from ctjax.training import AbstractTrainer, fit, ict

    assert jax.device_count() == 4, jax.devices()
    out = {}
    seen = {}


    class Inspecting(AbstractTrainer):
        # Delegates to `inner`, recording (at compile time) the shardings the step sees.
        inner: AbstractTrainer
        tag: str = eqx.field(static=True)

        def init(self, model, *, key):
            return self.inner.init(model, key=key)

        def step(self, state, batch, *, key):
            def record(name):
                def callback(sharding):
                    seen.setdefault(self.tag, {})[name] = sharding

                return callback

            jax.debug.inspect_array_sharding(batch, callback=record("batch"))
            weight = jax.tree.leaves(eqx.filter(state.model, eqx.is_inexact_array))[0]
            jax.debug.inspect_array_sharding(weight, callback=record("param"))
            return self.inner.step(state, batch, key=key)

        def result(self, state):
            return self.inner.result(state)


    def params(state):
        return jax.tree.leaves(eqx.filter((state.model, state.opt_state), eqx.is_inexact_array))


    def max_diff(a, b):
        return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(params(a), params(b)))


    def describe(sharding, shape):
        return {
            "type": type(sharding).__name__,
            "spec": str(getattr(sharding, "spec", None)),
            "num_devices": len(sharding.device_set),
            "shard_shape": list(sharding.shard_shape(shape)),
        }


    schedule = ctjax.VarianceExploding(0.002, 80.0)
    model = ctjax.ConsistencyFunction(ctjax.MLP(2, width=16, depth=1, key=jr.key(0)), schedule, ctjax.EDMScalings(1.0))
    trainer = ict(optax.adam(1e-2), 12, s0=10, s1=20)
    state = trainer.init(model, key=jr.key(1))
    mesh4 = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    mesh2 = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:2])
    target = ctjax.Gaussian(jnp.array([1.0, -1.0]), jnp.array([[1.0, 0.3], [0.3, 0.5]]))
    points = jr.normal(jr.key(2), (64, 2))
    kw = dict(num_steps=12, batch_size=16, chunk_size=6, progress=False)

    # A target sampled inside the step, on 4 devices; an (N, d) data array on 2.
    for name, data, mesh in [("target", target, mesh4), ("array", points, mesh2)]:
        single, h1 = fit(Inspecting(trainer, name + "-single"), state, data, **kw)
        sharded, h2 = fit(Inspecting(trainer, name + "-sharded"), state, data, mesh=mesh, **kw)
        leaves = [x for x in jax.tree.leaves(sharded) if isinstance(x, jax.Array)]
        out[name] = {
            "max_param_diff": max_diff(single, sharded),
            "max_param_change": max_diff(state, sharded),
            "max_loss_diff": float(np.max(np.abs(h1["loss"] - h2["loss"]))),
            "steps": int(sharded.step),
            "batch": describe(seen[name + "-sharded"]["batch"], (16, 2)),
            "param": describe(seen[name + "-sharded"]["param"], (2,)),
            "single_batch_devices": len(seen[name + "-single"]["batch"].device_set),
            "outputs_replicated_on_mesh": all(
                isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh and x.sharding.spec == P()
                for x in leaves
            ),
            "output_devices": sorted({len(x.sharding.device_set) for x in leaves}),
        }

    def error(fn):
        try:
            fn()
        except Exception as err:
            return f"{type(err).__name__}: {err}"
        return None

    out["indivisible"] = error(lambda: fit(trainer, state, target, mesh=mesh4, **{**kw, "batch_size": 10}))
    bad_mesh = jax.make_mesh((4,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    out["no_data_axis"] = error(lambda: fit(trainer, state, target, mesh=bad_mesh, **kw))

    # The command line: --devices builds the mesh; bad counts give one-line errors.
    from ctjax.experiments import _cli as cli

    tiny = ["--steps", "4", "--chunk-size", "2", "--model.width", "8", "--model.depth", "1", "--no-progress",
            "--no-evaluate", "--method", "ict", "--batch-size", "8"]
    with tempfile.TemporaryDirectory() as tmp:
        out["cli_ok"] = cli.main(["train", "--devices", "4", "--out", tmp + "/run", *tiny])
        out["cli_saved_devices"] = json.load(open(tmp + "/run/config.json"))["devices"]
        out["cli_too_many"] = cli.main(["train", "--devices", "8", "--out", tmp + "/b", *tiny])
        out["cli_indivisible"] = cli.main(["train", "--devices", "3", "--out", tmp + "/c", *tiny])
        out["cli_negative"] = cli.main(["train", "--devices", "-1", "--out", tmp + "/d", *tiny])
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "JAX_ENABLE_X64": "1",
        # The fast-compile settings and shared compilation cache of tests/conftest.py.
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(__file__), "..", ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "POT_BACKEND_DISABLE_PYTORCH": "1",
    }
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :]), proc.stderr


@pytest.mark.parametrize("case", ["target", "array"])
def test_sharded_run_matches_single_device(result, case):
    r = result[0][case]
    assert r["steps"] == 12
    # Training moved the parameters, and the sharded run moved them to the same place (float64;
    # only the order of the gradient all-reduce differs).
    assert r["max_param_change"] > 1e-3
    assert r["max_param_diff"] < 1e-10, r
    assert r["max_loss_diff"] < 1e-10, r


@pytest.mark.parametrize("case, devices", [("target", 4), ("array", 2)])
def test_shardings_are_the_intended_ones(result, case, devices):
    r = result[0][case]
    # Inside the step: the batch split over the "data" axis, the parameters replicated.
    assert r["batch"] == {
        "type": "NamedSharding",
        "spec": "P('data',)",
        "num_devices": devices,
        "shard_shape": [16 // devices, 2],
    }
    assert r["param"]["spec"] == "P()" and r["param"]["num_devices"] == devices
    assert r["param"]["shard_shape"] == [2]
    assert r["single_batch_devices"] == 1
    # Outputs: the whole state replicated on the mesh.
    assert r["outputs_replicated_on_mesh"] and r["output_devices"] == [devices]


def test_bad_meshes_are_named(result):
    r = result[0]
    assert r["indivisible"].startswith("ValueError") and "`batch_size` (10)" in r["indivisible"]
    assert "divisible by the 4 devices" in r["indivisible"]
    assert r["no_data_axis"].startswith("ValueError") and "'data'" in r["no_data_axis"]


def test_cli_devices(result):
    r, stderr = result
    assert r["cli_ok"] == 0 and r["cli_saved_devices"] == 4
    assert r["cli_too_many"] == 2 and "--devices 8: only 4 cpu device(s) available" in stderr
    assert r["cli_indivisible"] == 2 and "--batch-size 8 must be divisible by --devices 3" in stderr
    assert r["cli_negative"] == 2 and "--devices must be 0" in stderr
