"""Tests of the tempered-softmax aggregation weights (strategies/weighting.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from strategies.weighting import tempered_softmax, weight_spread


def test_hand_computed_weights() -> None:
    # Unshifted exponentials: the max shift cancels in the ratio.
    e = [math.exp(a / 0.5) for a in (0.9, 0.8, 0.5)]
    expected = [x / sum(e) for x in e]
    got = tempered_softmax([0.9, 0.8, 0.5], tau=0.5)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    # e^1.8, e^1.6, e^1.0 over their sum (6.049647 + 4.953032 + 2.718282 = 13.720961).
    np.testing.assert_allclose(got, [0.440905, 0.360983, 0.198112], atol=1e-6)
    assert got.sum() == pytest.approx(1.0, abs=1e-15)


def test_shift_invariance() -> None:
    base = np.array([0.61, 0.42, 0.3, 0.55])
    np.testing.assert_allclose(tempered_softmax(base, 0.3), tempered_softmax(base + 0.35, 0.3), rtol=1e-12)


def test_large_tau_is_uniform_small_tau_is_argmax() -> None:
    acc = [0.2, 0.9, 0.5, 0.7]
    np.testing.assert_allclose(tempered_softmax(acc, tau=1e9), [0.25] * 4, atol=1e-9)
    np.testing.assert_allclose(tempered_softmax(acc, tau=1e-4), [0.0, 1.0, 0.0, 0.0], atol=1e-12)
    # Ties at the top share the weight.
    np.testing.assert_allclose(tempered_softmax([0.8, 0.3, 0.8], tau=1e-4), [0.5, 0.0, 0.5], atol=1e-12)


def test_sample_counts_multiply_numerators() -> None:
    acc, counts, tau = [0.9, 0.8, 0.5], [10, 300, 7], 0.5
    raw = [n * math.exp(a / tau) for a, n in zip(acc, counts)]
    np.testing.assert_allclose(tempered_softmax(acc, tau, counts), [r / sum(raw) for r in raw], rtol=1e-13)
    # Equal accuracies reduce to sample-size weighting (FedAvg).
    np.testing.assert_allclose(tempered_softmax([0.7] * 3, tau, counts), np.array(counts) / 317, rtol=1e-13)
    # Huge counts do not overflow (log domain).
    w = tempered_softmax([0.5, 0.5], tau, [10**300, 3 * 10**300])
    np.testing.assert_allclose(w, [0.25, 0.75], rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"accuracies": []}, "accuracies"),
        ({"accuracies": [0.5, math.nan]}, "accuracies"),
        ({"accuracies": [0.5, 1.2]}, "accuracies"),
        ({"accuracies": [-0.1, 0.5]}, "accuracies"),
        ({"accuracies": [0.5, 0.6], "tau": 0.0}, "tau"),
        ({"accuracies": [0.5, 0.6], "tau": math.inf}, "tau"),
        ({"accuracies": [0.5, 0.6], "sample_counts": [1]}, "sample_counts"),
        ({"accuracies": [0.5, 0.6], "sample_counts": [1, 0]}, "sample_counts"),
        ({"accuracies": [0.5, 0.6], "sample_counts": [1, 2.5]}, "sample_counts"),
    ],
)
def test_invalid_inputs_raise(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        tempered_softmax(**kwargs)


def test_weight_spread_figures() -> None:
    w = [0.5, 0.25, 0.25]
    spread = weight_spread(w)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert spread["n_clients"] == 3
    assert spread["min"] == 0.25 and spread["max"] == 0.5 and spread["max_min_ratio"] == 2.0
    assert spread["normalized_entropy"] == pytest.approx(entropy / math.log(3), rel=1e-14)
    assert spread["effective_clients"] == pytest.approx(1 / (0.25 + 0.0625 + 0.0625), rel=1e-14)


def test_weight_spread_extremes() -> None:
    uniform = weight_spread([0.2] * 5)
    assert uniform["normalized_entropy"] == pytest.approx(1.0) and uniform["effective_clients"] == pytest.approx(5.0)
    one_hot = weight_spread([0.0, 1.0, 0.0])
    assert one_hot["normalized_entropy"] == 0.0 and one_hot["effective_clients"] == 1.0
    assert one_hot["max_min_ratio"] == math.inf
    with pytest.raises(ValueError, match="sum to 1"):
        weight_spread([0.5, 0.6])
