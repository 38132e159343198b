"""A seeded train / held-out split of a data set."""

import numpy as np


def holdout_split(num_points: int, fraction: float = 0.2, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r"""Indices `(train, heldout)` of a seeded random split of `num_points` points, each sorted.

    The held-out part has $\mathrm{round}(\text{fraction} \cdot n)$ points (at least one when
    `fraction` > 0); the split depends only on `num_points`, `fraction` and `seed` (NumPy's PCG64), so
    it is the same on every machine. `fraction` = 0 holds nothing out.

    **Arguments:**

    - `num_points`: $n$, the size of the data set.
    - `fraction`: the share held out, in $[0, 1)$.
    - `seed`: the seed of the permutation.
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int | np.integer) or num_points < 1:
        raise ValueError(f"`num_points` must be a positive integer, got {num_points!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must lie in [0, 1) (the share held out), got {fraction}.")
    num_heldout = 0 if fraction == 0 else max(1, int(round(fraction * num_points)))
    if num_points - num_heldout < 2:
        raise ValueError(
            f"`fraction` {fraction} of {num_points} points leaves {num_points - num_heldout} to train on; "
            "at least 2 are needed: hold out less or pass more points."
        )
    order = np.random.default_rng(int(seed)).permutation(int(num_points))
    return np.sort(order[num_heldout:]), np.sort(order[:num_heldout])
