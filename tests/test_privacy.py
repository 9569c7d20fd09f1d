"""Tests of the Laplace accuracy release and the privacy accountant (common/privacy.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from common.privacy import LaplaceAccuracyRelease, PrivacyAccountant


# ---------------------------------------------------------------- Laplace release


def test_scale_is_one_over_m_epsilon() -> None:
    release = LaplaceAccuracyRelease(epsilon=0.5)
    assert release.scale(200) == pytest.approx(1.0 / (200 * 0.5), rel=1e-15)
    assert LaplaceAccuracyRelease.sensitivity(200) == pytest.approx(0.005, rel=1e-15)


def test_release_equals_exact_accuracy_plus_one_laplace_draw() -> None:
    release = LaplaceAccuracyRelease(epsilon=2.0)
    got = release.release(37, 100, np.random.default_rng(7))
    expected = 37 / 100 + np.random.default_rng(7).laplace(0.0, 1.0 / (100 * 2.0))
    assert got == pytest.approx(min(1.0, max(0.0, expected)), abs=1e-15)
    assert isinstance(got, float)


def test_release_noise_is_laplace_with_scale_one_over_m_epsilon() -> None:
    correct, m, epsilon, n = 500, 1000, 1.0, 20000
    release = LaplaceAccuracyRelease(epsilon)
    rng = np.random.default_rng(12345)
    values = np.array([release.release(correct, m, rng) for _ in range(n)])
    noise = values - 0.5
    b = 1.0 / (m * epsilon)
    # Var(mean) = 2 b^2 / n -> std ~ 1e-5; 5 sigma tolerance.
    assert abs(values.mean() - 0.5) < 5 * math.sqrt(2.0 / n) * b
    # E|X| = b for Laplace(0, b); |X| ~ Exp(b), so the relative std of the mean is 1/sqrt(n) ~ 0.7%.
    assert np.abs(noise).mean() == pytest.approx(b, rel=0.03)
    assert noise.var() == pytest.approx(2.0 * b * b, rel=0.05)
    assert stats.kstest(noise, stats.laplace(loc=0.0, scale=b).cdf).pvalue > 0.01
    # The wrong scale (2b) must be rejected: the test can tell scales apart.
    assert stats.kstest(noise, stats.laplace(loc=0.0, scale=2 * b).cdf).pvalue < 1e-6


def test_release_clips_to_unit_interval() -> None:
    release = LaplaceAccuracyRelease(epsilon=1.0)
    rng = np.random.default_rng(3)
    values = np.array([release.release(10, 10, rng) for _ in range(4000)])
    assert values.min() >= 0.0 and values.max() <= 1.0
    # True accuracy 1.0: non-negative noise (probability 1/2) is clipped to exactly 1.
    assert np.mean(values == 1.0) == pytest.approx(0.5, abs=0.04)
    low = np.array([release.release(0, 10, rng) for _ in range(4000)])
    assert np.mean(low == 0.0) == pytest.approx(0.5, abs=0.04)


@pytest.mark.parametrize("epsilon", [0.0, -1.0, math.inf, math.nan, True, "1"])
def test_release_rejects_bad_epsilon(epsilon: object) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        LaplaceAccuracyRelease(epsilon)  # type: ignore[arg-type]


@pytest.mark.parametrize(("correct", "m", "word"), [(-1, 10, "correct"), (11, 10, "correct"), (5, 0, "m"), (2.5, 10, "correct")])
def test_release_rejects_bad_counts(correct: object, m: object, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        LaplaceAccuracyRelease(1.0).release(correct, m, np.random.default_rng(0))  # type: ignore[arg-type]


# ---------------------------------------------------------------- accountant


def test_known_values_twenty_rounds_epsilon_one() -> None:
    accountant = PrivacyAccountant(epsilon_per_round=1.0, delta=1e-5)
    assert accountant.basic(20) == 20.0
    expected_advanced = math.sqrt(2 * 20 * math.log(1e5)) * 1.0 + 20 * 1.0 * (math.e - 1.0)
    assert accountant.advanced(20, 1e-5) == pytest.approx(expected_advanced, abs=1e-9)
    assert accountant.advanced(20, 1e-5) == pytest.approx(55.8, abs=0.05)
    assert accountant.pld(20, 1e-5) == pytest.approx(19.1, abs=0.05)


def test_pld_single_round_is_epsilon() -> None:
    for epsilon in (0.5, 1.0, 2.0):
        accountant = PrivacyAccountant(epsilon_per_round=epsilon, delta=1e-10)
        assert accountant.pld(1) == pytest.approx(epsilon, abs=1e-3)
        assert accountant.pld(1) <= epsilon + 1e-3


def test_pld_never_exceeds_basic_composition() -> None:
    accountant = PrivacyAccountant(epsilon_per_round=1.0, delta=1e-5)
    pld = [accountant.pld(t) for t in range(1, 31)]
    assert all(p <= accountant.basic(t) + 1e-9 for t, p in zip(range(1, 31), pld))
    assert all(b > a for a, b in zip(pld, pld[1:]))  # more rounds, more loss


def test_step_and_report() -> None:
    accountant = PrivacyAccountant(epsilon_per_round=0.5, delta=1e-6)
    assert accountant.rounds == 0 and accountant.basic() == 0.0 and accountant.pld() == 0.0
    for _ in range(10):
        accountant.step()
    assert accountant.rounds == 10
    report = accountant.report()
    assert report["rounds"] == 10 and report["delta"] == 1e-6 and report["epsilon_per_round"] == 0.5
    assert report["basic"] == pytest.approx(5.0)
    assert report["advanced"] == pytest.approx(math.sqrt(20 * math.log(1e6)) * 0.5 + 5.0 * math.expm1(0.5))
    assert report["pld"] == accountant.pld(10, 1e-6)
    assert report["best"] == min(report["basic"], report["advanced"], report["pld"])
    assert json.loads(json.dumps(report)) == report


@pytest.mark.parametrize(("epsilon", "delta"), [(0.0, 1e-5), (1.0, 0.0), (1.0, 1.0), (math.nan, 1e-5)])
def test_accountant_rejects_bad_parameters(epsilon: float, delta: float) -> None:
    with pytest.raises(ValueError):
        PrivacyAccountant(epsilon, delta)


def test_accountant_rejects_negative_rounds() -> None:
    with pytest.raises(ValueError, match="rounds"):
        PrivacyAccountant(1.0, 1e-5).advanced(-1)
