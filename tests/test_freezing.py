"""Tests of the EMA layer freezer (strategies/freezing.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from strategies.freezing import EMALayerFreezer


def _trajectory(size: int, steps: list[float], seed: int) -> list[np.ndarray]:
    """Parameters theta(0..K) whose per-parameter RMS change in round t is steps[t-1]."""
    rng = np.random.default_rng(seed)
    theta = [rng.normal(size=size)]
    for step in steps:
        direction = rng.normal(size=size)
        direction *= step / np.sqrt(np.mean(direction**2))
        theta.append(theta[-1] + direction)
    return theta


def _reference_freeze_round(steps: list[float], alpha: float, threshold: float) -> int | None:
    """Independent EMA: first round index t (1-based change) with EMA < threshold."""
    ema = None
    for t, s in enumerate(steps, start=1):
        ema = s if ema is None else alpha * ema + (1 - alpha) * s
        if ema < threshold:
            return t
    return None


STEPS = [0.1 * 0.5**k for k in range(12)] + [0.0] * 40


def test_stopping_layer_freezes_at_predicted_round_and_quantum_layer_never() -> None:
    expected = _reference_freeze_round(STEPS, 0.9, 1e-3)
    assert expected is not None and expected > 12
    classical = _trajectory(50, STEPS, seed=1)
    quantum = _trajectory(50, STEPS, seed=2)
    freezer = EMALayerFreezer(alpha=0.9, threshold=1e-3, never_freeze=["quantum"])
    frozen_at = None
    for t, (c, q) in enumerate(zip(classical, quantum)):
        layers = {"quantum": q} if "fc" in freezer.frozen else {"fc": c, "quantum": q}
        newly = freezer.observe(layers)
        if newly:
            assert newly == {"fc"} and frozen_at is None
            frozen_at = t
    assert frozen_at == expected
    assert freezer.frozen == frozenset({"fc"})
    assert "quantum" not in freezer.frozen
    # The quantum layer followed the same score sequence, so its EMA went below the threshold too.
    assert freezer.ema["quantum"] < 1e-3


def test_first_observed_change_initialises_ema() -> None:
    freezer = EMALayerFreezer(alpha=0.9, threshold=1e-3)
    assert freezer.observe({"a": np.zeros(4)}) == set()
    assert freezer.ema == {}
    freezer.observe({"a": np.full(4, 0.3)})
    assert freezer.scores["a"] == pytest.approx(0.3, rel=1e-14)
    assert freezer.ema["a"] == pytest.approx(0.3, rel=1e-14)
    freezer.observe({"a": np.full(4, 0.4)})
    assert freezer.scores["a"] == pytest.approx(0.1, rel=1e-12)
    assert freezer.ema["a"] == pytest.approx(0.9 * 0.3 + 0.1 * 0.1, rel=1e-12)


def test_score_is_per_parameter_rms_independent_of_layer_size() -> None:
    freezer = EMALayerFreezer()
    freezer.observe({"small": np.zeros(10), "big": np.zeros((25, 40))})
    freezer.observe({"small": np.full(10, 0.01), "big": np.full((25, 40), -0.01)})
    assert freezer.scores["small"] == pytest.approx(0.01, rel=1e-12)
    assert freezer.scores["big"] == pytest.approx(freezer.scores["small"], rel=1e-12)
    # Same as the raw L2 norm divided by sqrt(n).
    assert freezer.scores["big"] == pytest.approx(np.linalg.norm(np.full(1000, 0.01)) / math.sqrt(1000), rel=1e-12)


def test_layer_that_keeps_changing_is_never_frozen() -> None:
    freezer = EMALayerFreezer()
    theta = _trajectory(30, [0.01] * 60, seed=3)
    assert all(freezer.observe({"conv": p}) == set() for p in theta)
    assert freezer.frozen == frozenset()
    assert freezer.ema["conv"] == pytest.approx(0.01, rel=1e-9)


def test_immediate_freeze_on_first_change_below_threshold() -> None:
    freezer = EMALayerFreezer(threshold=1e-3)
    freezer.observe({"a": np.ones(3), "b": np.ones(3)})
    assert freezer.observe({"a": np.ones(3) + 1e-4, "b": np.ones(3) + 1.0}) == {"a"}
    # A frozen layer may be absent afterwards, and stays frozen.
    assert freezer.observe({"b": np.ones(3) + 2.0}) == set()
    assert freezer.frozen == frozenset({"a"})


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 1.5, math.nan, True])
def test_invalid_alpha_raises(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        EMALayerFreezer(alpha=alpha)


@pytest.mark.parametrize("threshold", [-1e-3, math.inf, math.nan, "0.001"])
def test_invalid_threshold_raises(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        EMALayerFreezer(threshold=threshold)  # type: ignore[arg-type]


def test_invalid_observations_raise() -> None:
    freezer = EMALayerFreezer()
    freezer.observe({"a": np.zeros(3), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        freezer.observe({"a": np.zeros(4), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="non-finite"):
        freezer.observe({"a": np.array([0.0, np.nan, 0.0]), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="missing"):
        freezer.observe({"a": np.zeros(3)})
    with pytest.raises(ValueError, match="unknown"):
        freezer.observe({"a": np.zeros(3), "b": np.zeros(2), "c": np.zeros(1)})
    with pytest.raises(ValueError, match="never_freeze"):
        EMALayerFreezer(never_freeze="quantum")


def test_state_dict_round_trips_through_json() -> None:
    steps = [0.05 * 0.6**k for k in range(10)] + [0.0] * 30
    theta = _trajectory(20, steps, seed=4)
    original = EMALayerFreezer(alpha=0.8, threshold=2e-3, never_freeze=["q"])
    for p in theta[:8]:
        original.observe({"fc": p, "q": p[:5]})
    restored = EMALayerFreezer()
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.alpha == 0.8 and restored.threshold == 2e-3 and restored.never_freeze == frozenset({"q"})
    for p in theta[8:]:
        layers = {"fc": p, "q": p[:5]}
        assert restored.observe(layers) == original.observe(layers)
        assert restored.ema == original.ema and restored.frozen == original.frozen
    assert original.frozen == frozenset({"fc"})
    summary = original.state_dict(include_reference=False)
    assert "reference" not in summary and summary["frozen"] == ["fc"]
    with pytest.raises(ValueError, match="reference"):
        EMALayerFreezer().load_state_dict(summary)


def test_freezing_is_strictly_below_threshold() -> None:
    freezer = EMALayerFreezer(threshold=0.5)
    freezer.observe({"a": np.zeros(4), "b": np.zeros(4)})
    # RMS changes exactly 0.5 (binary-exact) and 0.25: only the strictly smaller one freezes.
    assert freezer.observe({"a": np.full(4, 0.5), "b": np.full(4, 0.25)}) == {"b"}
    assert freezer.ema["a"] == 0.5


def test_observe_scores_follows_the_same_ema_as_parameters():
    from strategies.freezing import EMALayerFreezer

    by_params = EMALayerFreezer(alpha=0.9, threshold=1e-3)
    by_scores = EMALayerFreezer(alpha=0.9, threshold=1e-3)
    theta = np.zeros(20)
    by_params.observe({"fc": theta})
    frozen_params, frozen_scores = [], []
    for t in range(1, 40):
        step = 0.05 * 0.7 ** t
        new = theta + step
        score = float(np.linalg.norm(new - theta) / np.sqrt(theta.size))
        frozen_params.append(bool(by_params.observe({"fc": new})))
        frozen_scores.append(bool(by_scores.observe_scores({"fc": score})))
        theta = new
    assert frozen_params == frozen_scores
    assert any(frozen_scores)
    assert by_scores.ema["fc"] == pytest.approx(by_params.ema["fc"], rel=1e-12)


def test_observe_scores_rejects_bad_values_and_never_freezes_quantum():
    from strategies.freezing import EMALayerFreezer

    freezer = EMALayerFreezer(threshold=1e-3, never_freeze={"quantum"})
    assert freezer.observe_scores({"quantum": 0.0}) == set()
    with pytest.raises(ValueError, match="fc"):
        freezer.observe_scores({"fc": float("nan")})
    with pytest.raises(ValueError, match="fc"):
        freezer.observe_scores({"fc": -1.0})
