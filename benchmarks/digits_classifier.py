"""Train the digits feature network (ctjax/_data/digits_classifier.eqx) and measure it.

The classifier is trained on the train split of the digits preset (`presets.digits(split="train")`,
1438 images), full batch, Adam with decoupled weight decay, seed 0, in float32 on the CPU; it is
deterministic for a given JAX version. The script writes the weights into the package and prints and
saves (benchmarks/results/digits_classifier.json) its held-out accuracy, its mean confidence, and how
the Fréchet distance in its features and the W1 in data space respond to blurred and noised copies of
the held-out images: the check that the features see what W1 hardly does.

    python benchmarks/digits_classifier.py [--steps 3000] [--no-save]
"""

import argparse
import json
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from scipy.ndimage import gaussian_filter

from ctjax import metrics, presets
from ctjax._digits_features import DigitsClassifier, WEIGHTS
from ctjax._split import holdout_split


ROOT = pathlib.Path(__file__).parent.parent
OUT = ROOT / "benchmarks" / "results" / "digits_classifier.json"


def split():
    x, y = presets.digits_points(), presets.digits_labels()
    train, heldout = holdout_split(x.shape[0], presets.DIGITS_HOLDOUT, seed=0)
    return x[train], y[train], x[heldout], y[heldout]


def blur(x, sigma):
    """Gaussian blur of each 8x8 image (pixel units), kept in [-1, 1] like the data."""
    images = gaussian_filter(x.reshape(-1, 8, 8), sigma=(0, sigma, sigma), mode="constant", cval=-1.0)
    return images.reshape(-1, 64)


def train(steps: int, lr: float = 3e-3, weight_decay: float = 1e-3) -> DigitsClassifier:
    x_train, y_train, _, _ = split()
    x, y = jnp.asarray(x_train, jnp.float32), jnp.asarray(y_train)
    net = DigitsClassifier(key=jr.key(0))
    schedule = optax.cosine_decay_schedule(lr, steps, 0.01)
    optimizer = optax.adamw(schedule, weight_decay=weight_decay)
    opt_state = optimizer.init(eqx.filter(net, eqx.is_array))

    @eqx.filter_jit
    def step(net, opt_state):
        def loss(net):
            logits = jax.vmap(net)(x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        value, grads = eqx.filter_value_and_grad(loss)(net)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(net, eqx.is_array))
        return eqx.apply_updates(net, updates), opt_state, value

    for _ in range(steps):
        net, opt_state, value = step(net, opt_state)
    print(f"final training loss {float(value):.4g}")
    return net


def measure() -> dict:
    """Accuracy, confidence and the response of FD and W1 to corrupted held-out digits (shipped weights)."""
    from ctjax._digits_features import digits_classifier, digits_predict

    digits_classifier.cache_clear()
    x_train, y_train, x_held, y_held = split()
    rng = np.random.default_rng(0)
    result = {
        "train_accuracy": float(np.mean(digits_predict(x_train) == y_train)),
        "heldout_accuracy": float(np.mean(digits_predict(x_held) == y_held)),
        "heldout_confidence": metrics.digits_confidence(x_held),
        "num_train": int(x_train.shape[0]),
        "num_heldout": int(x_held.shape[0]),
    }
    # Every distance is to the train split; "heldout" is the floor.
    variants = {
        "heldout": x_held,
        "blur 0.5 px": blur(x_held, 0.5),
        "blur 1 px": blur(x_held, 1.0),
        "noise 0.1": np.clip(x_held + 0.1 * rng.standard_normal(x_held.shape), -1, 1),
        "noise 0.3": np.clip(x_held + 0.3 * rng.standard_normal(x_held.shape), -1, 1),
    }
    rows = {}
    for name, x in variants.items():
        rows[name] = {
            "fd": metrics.digits_frechet_distance(x, x_train),
            "w1": metrics.wasserstein1(x, x_train),
            "confidence": metrics.digits_confidence(x),
        }
    for row in rows.values():
        row["fd_ratio"] = row["fd"] / rows["heldout"]["fd"]
        row["w1_ratio"] = row["w1"] / rows["heldout"]["w1"]
    result["corruptions"] = rows
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--no-save", action="store_true", help="measure the shipped weights only")
    args = parser.parse_args()
    if not args.no_save:
        start = time.process_time()
        net = train(args.steps)
        seconds = time.process_time() - start
        eqx.tree_serialise_leaves(ROOT / "ctjax" / "_data" / WEIGHTS, net)
    result = measure()
    if not args.no_save:
        result.update(steps=args.steps, train_cpu_seconds=seconds, jax_version=jax.__version__)
    print(
        f"held-out accuracy {result['heldout_accuracy']:.4f} (train {result['train_accuracy']:.4f}), "
        f"held-out confidence {result['heldout_confidence']:.4f}"
    )
    print(f"{'held-out copy':<14} {'FD':>8} {'FD/floor':>9} {'W1':>8} {'W1/floor':>9} {'confidence':>11}")
    for name, row in result["corruptions"].items():
        print(
            f"{name:<14} {row['fd']:8.3f} {row['fd_ratio']:9.2f} {row['w1']:8.3f} {row['w1_ratio']:9.2f} "
            f"{row['confidence']:11.3f}"
        )
    if not args.no_save:
        OUT.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {OUT}")


if __name__ == "__main__":
    main()
