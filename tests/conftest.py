import os
import random

import jax
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)
# One compilation cache for all test processes (xdist workers compile many identical programs).
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("CTJAX_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Test programs are small: compiling them fast matters more than running them fast.
jax.config.update("jax_disable_most_optimizations", os.environ.get("CTJAX_OPTIMIZE_TESTS", "0") != "1")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


class GetKey:
    """Fresh PRNG keys from one printed seed (set CTJAX_TEST_SEED to replay a failure)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.key = jr.key(seed)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return jr.fold_in(self.key, self.calls)

    def __repr__(self):
        return f"GetKey(seed={self.seed})"


@pytest.fixture
def getkey(request):
    seed = int(os.environ.get("CTJAX_TEST_SEED", random.randint(0, 2**31 - 1)))
    request.node.ctjax_seed = seed
    return GetKey(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seed = getattr(item, "ctjax_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("ctjax", f"getkey seed: {seed} (replay with CTJAX_TEST_SEED={seed})"))
    return report
