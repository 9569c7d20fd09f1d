"""Classification metrics for a data set's task (``data_prep.spec``): multi-label or multi-class.

Multi-label conventions (threshold 0.5 on sigmoid probabilities):
- ``accuracy``: exact-match (subset) accuracy, the fraction of records whose 5 predicted
  labels all equal the targets. It is a count of correct records over m records, so
  changing one record changes it by at most 1/m (the DP sensitivity used for it).
- ``hamming_accuracy``: fraction of correct (record, class) decisions.
- ``macro_f1``: mean over classes of F1 = 2TP / (2TP + FP + FN); a class with no positive
  targets and no positive predictions is left out of the mean.
- ``macro_auc``: mean over classes of the ROC AUC (Mann-Whitney U statistic, ties count
  one half); a class whose targets are all equal has no AUC and is left out.

Multi-class conventions (targets one-hot, prediction the arg-max of the softmax):
- ``accuracy``: fraction of records whose predicted class is the true one (sensitivity 1/m).
- ``balanced_accuracy``: mean over the classes present in the targets of the recall
  TP_c / (TP_c + FN_c) (scikit-learn's ``balanced_accuracy_score`` without adjustment).
- ``macro_f1``: as above, over the one-hot predictions.
- ``macro_auc``: one-vs-rest ROC AUC per class on its softmax column, averaged over classes
  with both positives and negatives (scikit-learn's ``roc_auc_score(multi_class='ovr',
  average='macro')`` when every class is present).
- ``confusion_matrix``: counts C[i, j] of true class i predicted as j, row-major, as a flat list.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def label_hits(targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(records, classes) booleans: the thresholded prediction equals the 0/1 target."""
    return (np.asarray(probs) >= threshold) == (np.asarray(targets) >= 0.5)


def exact_match_correct(targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> int:
    """Number of records whose thresholded predictions equal the targets on every class."""
    return int(label_hits(targets, probs, threshold).all(axis=1).sum())


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC = (sum of positive ranks - P(P+1)/2) / (P N); NaN when a class is absent."""
    targets = np.asarray(targets) >= 0.5
    n_pos = int(targets.sum())
    n_neg = targets.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(targets: np.ndarray, probs: np.ndarray) -> float:
    values = [roc_auc(targets[:, c], probs[:, c]) for c in range(targets.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def macro_f1(targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    pred = probs >= threshold
    truth = targets >= 0.5
    scores = []
    for c in range(targets.shape[1]):
        tp = int(np.sum(pred[:, c] & truth[:, c]))
        fp = int(np.sum(pred[:, c] & ~truth[:, c]))
        fn = int(np.sum(~pred[:, c] & truth[:, c]))
        if 2 * tp + fp + fn > 0:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else math.nan


def confusion_matrix(true_class: np.ndarray, pred_class: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true_class, pred_class), 1)
    return matrix


def multiclass_report(targets: np.ndarray, probs: np.ndarray, loss: float) -> dict:
    """Metrics of one multi-class evaluation (see the module docstring)."""
    n, k = targets.shape
    truth, pred = targets.argmax(axis=1), probs.argmax(axis=1)
    matrix = confusion_matrix(truth, pred, k)
    present = matrix.sum(axis=1) > 0
    recalls = np.diag(matrix)[present] / matrix.sum(axis=1)[present]
    onehot_pred = np.eye(k)[pred]
    return {
        "num_examples": n,
        "loss": float(loss),
        "accuracy": float(np.mean(truth == pred)),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_f1": macro_f1(targets, onehot_pred),
        "macro_auc": macro_auc(targets, probs),
        "confusion_matrix": [int(v) for v in matrix.ravel()],
    }


def classification_report(targets: np.ndarray, probs: np.ndarray, loss: float, task: str = "multilabel") -> dict:
    """All metrics of one evaluation for ``task``; ``num_examples`` counts records once each."""
    n = int(targets.shape[0])
    if n == 0:
        keys = ("accuracy", "balanced_accuracy") if task == "multiclass" else ("accuracy", "hamming_accuracy")
        return {"num_examples": 0, "loss": math.nan, **dict.fromkeys(keys, math.nan), "macro_f1": math.nan,
                "macro_auc": math.nan}
    if task == "multiclass":
        return multiclass_report(targets, probs, loss)
    correct = exact_match_correct(targets, probs)
    return {
        "num_examples": n,
        "loss": float(loss),
        "accuracy": correct / n,
        "hamming_accuracy": float(np.mean((probs >= 0.5) == (targets >= 0.5))),
        "macro_f1": macro_f1(targets, probs),
        "macro_auc": macro_auc(targets, probs),
    }
