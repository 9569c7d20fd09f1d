"""Metrics against independent computations (brute-force pair counting, hand counts)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from common.metrics import classification_report, exact_match_correct, macro_auc, macro_f1, roc_auc


def brute_force_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[targets == 1]
    neg = scores[targets == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, size=40)
        if y.min() == y.max():
            continue
        s = np.round(rng.random(40), 1)  # rounding creates ties
        assert roc_auc(y, s) == pytest.approx(brute_force_auc(y, s), abs=1e-12)


def test_auc_undefined_for_single_class_and_skipped_in_macro():
    assert math.isnan(roc_auc(np.ones(5), np.arange(5.0)))
    y = np.array([[1, 1], [0, 1], [1, 1], [0, 1]])
    p = np.array([[0.9, 0.1], [0.2, 0.2], [0.8, 0.3], [0.1, 0.4]])
    assert macro_auc(y, p) == pytest.approx(1.0)


def test_macro_f1_and_exact_match_by_hand():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[0.9, 0.1, 0.1], [0.6, 0.7, 0.2], [0.8, 0.4, 0.1], [0.2, 0.1, 0.3]])
    # class 0: TP 2, FP 1, FN 0 -> 4/5; class 1: TP 1, FP 0, FN 1 -> 2/3; class 2: no positives at all -> skipped
    assert macro_f1(y, p) == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert exact_match_correct(y, p) == 2  # records 0 and 3
    report = classification_report(y, p, loss=0.5)
    assert report["accuracy"] == 0.5 and report["num_examples"] == 4
    assert report["hamming_accuracy"] == pytest.approx(10 / 12)  # 3 + 2 + 2 + 3 correct decisions


def test_empty_split_reports_zero_examples():
    report = classification_report(np.zeros((0, 5)), np.zeros((0, 5)), loss=float("nan"))
    assert report["num_examples"] == 0 and math.isnan(report["accuracy"])


def test_multiclass_report_by_hand():
    # 3 classes, 6 records; predictions are the arg-max of each row
    truth = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4],
                      [0.1, 0.1, 0.8]])
    report = classification_report(np.eye(3)[truth], probs, loss=0.3, task="multiclass")
    # predicted 0, 1, 1, 1, 0, 2: confusion rows (true) 0: [1, 1, 0], 1: [0, 2, 0], 2: [1, 0, 1]
    assert report["confusion_matrix"] == [1, 1, 0, 0, 2, 0, 1, 0, 1]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)
    # F1: class 0 TP 1 FP 1 FN 1 -> 1/2; class 1 TP 2 FP 1 FN 0 -> 4/5; class 2 TP 1 FP 0 FN 1 -> 2/3
    assert report["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    ovr = [brute_force_auc((truth == c).astype(int), probs[:, c]) for c in range(3)]
    assert report["macro_auc"] == pytest.approx(np.mean(ovr))


def test_balanced_accuracy_ignores_classes_absent_from_the_targets():
    truth = np.array([0, 0, 0, 1])
    probs = np.eye(3)[[0, 0, 2, 1]] * 0.9 + 0.05
    report = classification_report(np.eye(3)[truth], probs, loss=0.1, task="multiclass")
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert report["confusion_matrix"] == [2, 0, 1, 0, 1, 0, 0, 0, 0]
