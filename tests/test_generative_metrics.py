"""Fréchet distance, precision/recall, memorisation and the digits feature network, against independent
NumPy/SciPy/scikit-learn computations and the identities that define them."""

import numpy as np
import pytest
import scipy.linalg
from scipy.ndimage import gaussian_filter
from sklearn.neighbors import NearestNeighbors

from ctjax import holdout_split, presets
from ctjax.metrics import (
    digits_confidence,
    digits_features,
    digits_frechet_distance,
    frechet_distance,
    memorised_fraction,
    precision_recall,
    wasserstein1,
)


def _fid_scipy(x, y):
    """FID as the reference implementations compute it: sqrtm of the covariance product."""
    mx, my = x.mean(0), y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cx @ cy).real
    return float(np.sum((mx - my) ** 2) + np.trace(cx + cy - 2 * root))


@pytest.mark.parametrize("seed", [0, 1])
def test_frechet_distance_matches_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((400, 5)) @ rng.standard_normal((5, 5))
    y = 0.3 + rng.standard_normal((300, 5)) @ rng.standard_normal((5, 5))
    np.testing.assert_allclose(frechet_distance(x, y), _fid_scipy(x, y), rtol=1e-9)


def test_frechet_distance_identities():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 3))
    assert abs(frechet_distance(x, x)) < 1e-10
    shift = np.array([1.0, -2.0, 0.5])
    # A pure translation of one set adds |shift|^2 exactly; translating both changes nothing.
    np.testing.assert_allclose(frechet_distance(x + shift, x), np.sum(shift**2), rtol=1e-9)
    y = rng.standard_normal((150, 3)) * 2.0
    np.testing.assert_allclose(frechet_distance(x + shift, y + shift), frechet_distance(x, y), rtol=1e-9)


def _precision_recall_sklearn(samples, reference, k):
    def radii(points):
        dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
        return dist[:, k]  # column 0 is the point itself

    def coverage(points, centres, r):
        d = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1)
        return float(np.mean(np.any(d <= r[None, :], axis=1)))

    return coverage(samples, reference, radii(reference)), coverage(reference, samples, radii(samples))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_sklearn_neighbours(k):
    rng = np.random.default_rng(k)
    reference = rng.standard_normal((700, 4))
    samples = 0.8 * rng.standard_normal((600, 4)) + np.array([0.6, 0.0, 0.0, 0.0])
    expected = _precision_recall_sklearn(samples, reference, k)
    got = precision_recall(samples, reference, k=k)
    assert 0.05 < got.precision < 0.999 and 0.05 < got.recall < 0.999  # a case that separates them
    np.testing.assert_allclose(tuple(got), expected, atol=1e-12)


def test_precision_recall_sees_collapse_and_spread():
    rng = np.random.default_rng(5)
    reference = rng.standard_normal((500, 2))
    assert precision_recall(reference, reference) == (1.0, 1.0)
    collapsed = 0.2 * rng.standard_normal((500, 2))  # on the manifold, but covering its centre only
    spread = 3.0 * rng.standard_normal((500, 2))  # covering it, but mostly off it
    pc, rc = precision_recall(collapsed, reference)
    ps, rs = precision_recall(spread, reference)
    assert pc > 0.95 and rc < 0.5, (pc, rc)
    assert ps < 0.5 and rs > 0.95, (ps, rs)
    assert precision_recall(reference + 100.0, reference) == (0.0, 0.0)


def test_memorised_fraction_copies_heldout_and_brute_force():
    train, heldout = presets.digits(split="train").points, presets.digits(split="heldout").points
    train, heldout = np.asarray(train), np.asarray(heldout)
    assert memorised_fraction(train[:300], train) == 1.0
    # Fresh digits sit among many near neighbours: none counts as a copy.
    assert memorised_fraction(heldout, train) < 0.01
    # Half copies with small noise, half fresh: the fraction counts the copies, by brute force too.
    rng = np.random.default_rng(0)
    mixed = np.concatenate([train[:100] + 0.05 * rng.standard_normal((100, 64)), heldout[:100]])
    d = np.sort(np.linalg.norm(mixed[:, None, :] - train[None, :, :], axis=-1), axis=1)
    expected = float(np.mean(d[:, 0] < d[:, 1] / 3))
    assert memorised_fraction(mixed, train) == expected
    assert 0.45 <= expected <= 0.55


def test_digits_classifier_accuracy_and_features():
    """The shipped classifier: at least 97% held out (the issue's bar); 64-D finite features."""
    x, y = presets.digits_points(), presets.digits_labels()
    _, held = holdout_split(x.shape[0], presets.DIGITS_HOLDOUT, seed=0)
    from ctjax._digits_features import digits_predict

    accuracy = np.mean(digits_predict(x[held]) == y[held])
    assert accuracy >= 0.97, accuracy
    features = digits_features(x[held])
    assert features.shape == (held.size, 64) and np.all(np.isfinite(features))
    assert digits_confidence(x[held]) > 0.95


def test_digits_fd_sees_blur_and_noise_where_w1_does_not():
    train, heldout = (np.asarray(presets.digits(split=s).points) for s in ("train", "heldout"))
    blurred = gaussian_filter(heldout.reshape(-1, 8, 8), sigma=(0, 0.5, 0.5), mode="constant", cval=-1.0)
    blurred = blurred.reshape(-1, 64)
    noised = np.clip(heldout + 0.3 * np.random.default_rng(0).standard_normal(heldout.shape), -1, 1)
    fd_floor, w1_floor = digits_frechet_distance(heldout, train), wasserstein1(heldout, train)
    for corrupted in (blurred, noised):
        assert digits_frechet_distance(corrupted, train) > 3.0 * fd_floor
        assert wasserstein1(corrupted, train) < 1.2 * w1_floor
    assert digits_confidence(blurred) < digits_confidence(heldout)


def test_holdout_split():
    train, held = holdout_split(1797, 0.2, seed=0)
    assert held.size == 359 and train.size == 1438
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(1797))
    again, other = holdout_split(1797, 0.2, seed=0), holdout_split(1797, 0.2, seed=1)
    assert np.array_equal(again[1], held) and not np.array_equal(other[1], held)
    assert holdout_split(10, 0.0)[1].size == 0 and holdout_split(10, 0.01)[1].size == 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: holdout_split(3, 0.5), "at least 2"),
        (lambda: holdout_split(10, 1.0), "fraction"),
        (lambda: holdout_split(0, 0.2), "num_points"),
        (lambda: precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3), "samples"),
        (lambda: precision_recall(np.zeros((10, 2)), np.zeros((10, 3))), "same dimension"),
        (lambda: precision_recall(np.zeros((10, 2)), np.zeros((10, 2)), k=0), "`k`"),
        (lambda: memorised_fraction(np.zeros((3, 2)), np.zeros((1, 2))), "train"),
        (lambda: memorised_fraction(np.zeros((3, 2)), np.zeros((5, 2)), ratio=1.5), "ratio"),
        (lambda: frechet_distance(np.full((4, 2), np.nan), np.zeros((4, 2))), "NaN"),
        (lambda: digits_frechet_distance(np.zeros((5, 63)), np.zeros((5, 64))), r"\(n, 64\)"),
        (lambda: digits_frechet_distance(np.full((5, 64), 16.0), np.zeros((5, 64))), "x / 8 - 1"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
