"""Hypothesis profiles: `ci` (deterministic, bounded) by default; `thorough` for long runs.

Select with CTJAX_HYPOTHESIS_PROFILE=thorough. Strategies vary values, not shapes, so each
property compiles once per schedule family.
"""

import os
from typing import Any

import hypothesis
import jax


jax.config.update("jax_enable_x64", True)
# Compiling fast matters more than running fast here (as in tests/conftest.py): most of the suite's time is
# XLA compiling Diffrax solves, once per schedule family.
jax.config.update("jax_disable_most_optimizations", os.environ.get("CTJAX_OPTIMIZE_TESTS", "0") != "1")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

_common: dict[str, Any] = dict(deadline=None, print_blob=True, suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile("ci", max_examples=20, derandomize=True, database=None, **_common)
hypothesis.settings.register_profile("thorough", max_examples=300, **_common)
hypothesis.settings.register_profile("dev", max_examples=5, derandomize=True, database=None, **_common)
hypothesis.settings.load_profile(os.environ.get("CTJAX_HYPOTHESIS_PROFILE", "ci"))
