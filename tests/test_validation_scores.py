"""The released validation scores: per-record values, and their sensitivity 1/m by brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.privacy import LaplaceAccuracyRelease
from common.validation_scores import SCORES, ValidationScore


def _universe(task: str):
    """Small sets of possible records: (probabilities, targets) rows."""
    if task == "multilabel":
        probs = [np.array(p) for p in itertools.product((0.2, 0.7, 0.99), repeat=2)]
        targets = [np.array(t, dtype=float) for t in itertools.product((0, 1), repeat=2)]
    else:
        probs = [np.array(p) for p in ((0.8, 0.1, 0.1), (0.2, 0.5, 0.3), (0.005, 0.005, 0.99), (1 / 3, 1 / 3, 1 / 3))]
        targets = [np.eye(3)[i] for i in range(3)]
    return [(p, t) for p in probs for t in targets]


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
@pytest.mark.parametrize("name", SCORES)
def test_sensitivity_is_one_over_m_by_enumerating_every_neighbour_pair(task, name):
    score = ValidationScore(name, task, clip=1.0)
    records = _universe(task)
    m = 2
    worst = 0.0
    for data in itertools.product(range(len(records)), repeat=m):
        probs = np.stack([records[i][0] for i in data])
        targets = np.stack([records[i][1] for i in data])
        q = score.total(probs, targets) / m
        for position, other in itertools.product(range(m), range(len(records))):
            neighbour = list(data)
            neighbour[position] = other  # replace one record, m fixed
            q2 = score.total(np.stack([records[i][0] for i in neighbour]),
                             np.stack([records[i][1] for i in neighbour])) / m
            worst = max(worst, abs(q - q2))
    assert worst <= score.sensitivity(m) + 1e-12
    assert worst >= 0.9 * score.sensitivity(m)  # the bound is (nearly) attained: not a loose claim


def test_scores_on_a_hand_computed_example():
    probs = np.array([[0.9, 0.2, 0.6], [0.9, 0.8, 0.1]])
    targets = np.array([[1, 0, 1], [1, 0, 0]], dtype=float)
    assert ValidationScore("exact-match", "multilabel").per_record(probs, targets).tolist() == [1.0, 0.0]
    assert ValidationScore("hamming", "multilabel").per_record(probs, targets) == pytest.approx([1.0, 2 / 3])
    first = -np.mean([np.log(0.9), np.log(0.8), np.log(0.6)])  # BCE of record 1, averaged over labels
    second = -np.mean([np.log(0.9), np.log(0.2), np.log(0.9)])
    clipped = ValidationScore("clipped-loss", "multilabel", clip=0.5).per_record(probs, targets)
    assert clipped == pytest.approx([1 - first / 0.5, 1 - min(second, 0.5) / 0.5])
    with pytest.raises(ValueError, match="expected one of exact-match"):
        ValidationScore("auc", "multilabel")


def test_release_total_is_the_mean_plus_one_laplace_draw():
    release = LaplaceAccuracyRelease(epsilon=2.0)
    got = release.release_total(7.25, 10, np.random.default_rng(3))
    expected = 0.725 + np.random.default_rng(3).laplace(0.0, 1.0 / (10 * 2.0))
    assert got == pytest.approx(min(1.0, max(0.0, expected)), abs=1e-15)
    with pytest.raises(ValueError, match="0 <= correct <= m=10"):
        release.release_total(10.5, 10, np.random.default_rng(0))
