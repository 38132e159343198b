"""`ctjax eval` on a data set: samples against the held-out split, each metric beside its floor."""

import jax.random as jr
import numpy as np

from .. import metrics
from .._digits_features import confidence_of, digits_outputs
from .._sampling import sample


# Sample sets whose metrics are averaged over this many draws (the floor's train subsample included).
HELDOUT_REPEATS = 3


def sample_metrics(samples: np.ndarray, train: np.ndarray, heldout: np.ndarray, features: str | None) -> dict:
    """W1, Fréchet distance (in the feature network's space where there is one, and in data space),
    precision and recall against `heldout`, and the memorised fraction against `train`."""
    data_pr = metrics.precision_recall(samples, heldout)
    out: dict[str, float | None] = {
        "w1": metrics.wasserstein1(samples, heldout),
        "fd_data": metrics.frechet_distance(samples, heldout),
        "precision_data": data_pr.precision,
        "recall_data": data_pr.recall,
        "memorised": metrics.memorised_fraction(samples, train),
    }
    if features == "digits":
        if np.max(np.abs(samples)) > 4.0:  # far outside [-1, 1]: the classifier's features mean nothing
            out.update(fd=None, precision=None, recall=None, confidence=None)
            return out
        f_samples, logits = digits_outputs(samples, "samples")
        f_heldout = digits_outputs(heldout, "heldout")[0]
        feature_pr = metrics.precision_recall(f_samples, f_heldout)
        out.update(
            fd=metrics.frechet_distance(f_samples, f_heldout),
            precision=feature_pr.precision,
            recall=feature_pr.recall,
            confidence=confidence_of(logits),
        )
    else:
        out.update(fd=out["fd_data"], precision=out["precision_data"], recall=out["recall_data"])
    return out


def mean_metrics(rows: list[dict]) -> dict:
    """The mean of each metric over repeated draws (None where any draw has None)."""
    return {
        name: None if any(r[name] is None for r in rows) else float(np.mean([r[name] for r in rows]))
        for name in rows[0]
    }


def drawn_metrics(
    model, times, num: int, train: np.ndarray, heldout: np.ndarray, features: str | None, base_seed: int = 70_000
) -> tuple[dict, np.ndarray]:
    """The mean `sample_metrics` of `HELDOUT_REPEATS` draws of `num` samples at `times` (keys
    `base_seed + r`), and the first draw."""
    draws = [np.asarray(sample(model, num, times=times, key=jr.key(base_seed + r))) for r in range(HELDOUT_REPEATS)]
    return mean_metrics([sample_metrics(x, train, heldout, features) for x in draws]), draws[0]


def floor_metrics(
    train: np.ndarray, heldout: np.ndarray, num: int, features: str | None, repeats: int = HELDOUT_REPEATS
) -> dict:
    """Each metric between `num` training points (a seeded subsample) and the held-out split: what a
    model that samples the data distribution itself scores. The memorised fraction's floor is that of
    the held-out split against the train split (a copy of the training set would score 1)."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(repeats if num < train.shape[0] else 1):
        row = sample_metrics(train[rng.permutation(train.shape[0])[:num]], train, heldout, features)
        row["memorised"] = metrics.memorised_fraction(heldout, train)
        rows.append(row)
    return mean_metrics(rows)


_COLUMNS = (
    ("w1", "W1", ".3f"),
    ("fd", "FD", ".2f"),
    ("precision", "prec", ".3f"),
    ("recall", "recall", ".3f"),
    ("memorised", "memorised", ".3f"),
)


def format_table(heldout: dict) -> list[str]:
    """Lines of `ctjax eval`'s held-out table: one row per sample set, each metric over its floor."""
    floor = heldout["floor"]
    space = "digits features" if heldout["features"] == "digits" else "data space"
    lines = [
        f"  against the held-out split ({heldout['num_heldout']} points; {heldout['num_points']} samples; FD and "
        f"precision/recall in {space}):",
        "    " + f"{'':<12}" + "".join(f"{label:>18}" for _, label, _ in _COLUMNS),
    ]
    for name in ["floor", *[k for k in heldout if k.endswith("step") or k == "exact_ode"]]:
        row = heldout[name]
        cells = []
        for key, _, fmt in _COLUMNS:
            value = row[key]
            if value is None:
                cells.append(f"{'n/a':>18}")
            elif name == "floor" or key not in ("w1", "fd") or not floor[key]:
                cells.append(f"{format(value, fmt):>18}")
            else:
                cells.append(f"{format(value, fmt) + f' ({value / floor[key]:.2f}x)':>18}")
        lines.append("    " + f"{name:<12}" + "".join(cells))
    return lines
