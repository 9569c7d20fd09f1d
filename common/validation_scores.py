r"""The validation quality a client releases (privatised) for AdeptHEQ's weighting: per-record scores.

Each score is the mean over the client's ``m`` validation records of a per-record score
:math:`s(p_i, y_i) \in [0, 1]` (higher is better), so one formula covers its privacy:

.. math::
    q(D) = \frac{1}{m} \sum_{i=1}^{m} s(p_i, y_i), \qquad
    \Delta q = \max_{D \sim D'} |q(D) - q(D')| = \frac{1}{m},

where neighbouring validation sets :math:`D \sim D'` differ by replacing one record (``m`` fixed and
public, as in ``common.privacy.LaplaceAccuracyRelease``): one term changes, by at most the width
1 of the score's range. ``tests/test_validation_scores.py`` checks :math:`\Delta q` by enumerating
every neighbour pair of small data sets. The model's predictions :math:`p_i` are fixed (the model
was trained on the client's training share, not on its validation records).

- ``exact-match`` (the paper): 1 when every label is right (multi-label, threshold 0.5) or the
  arg-max class is right (multi-class), else 0. Rewards clients whose records are mostly NORM.
- ``hamming``: the fraction of labels right (multi-label); the arg-max class (multi-class).
- ``clipped-loss``: :math:`1 - \min(\ell_i, C) / C` with :math:`\ell_i` the record's loss (BCE averaged
  over labels, or cross-entropy) and :math:`C` = ``clip``; a smooth score that sees confidence.
"""

from __future__ import annotations

import numpy as np

from common.metrics import label_hits

SCORES = ("exact-match", "hamming", "clipped-loss")


class ValidationScore:
    """A per-record score in [0, 1] and its mean; sensitivity of the mean: 1/m (see the module)."""

    def __init__(self, name: str, task: str, clip: float = 1.0) -> None:
        if name not in SCORES:
            raise ValueError(f"validation score {name!r}: expected one of {', '.join(SCORES)}")
        if task not in ("multilabel", "multiclass"):
            raise ValueError(f"task {task!r}: expected 'multilabel' or 'multiclass'")
        if not clip > 0:
            raise ValueError(f"loss clip {clip!r}: expected a number > 0")
        self.name, self.task, self.clip = name, task, float(clip)

    @staticmethod
    def sensitivity(m: int) -> float:
        if m < 1:
            raise ValueError(f"validation set size m must be >= 1, got {m!r}")
        return 1.0 / m

    def per_record(self, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Each record's score in [0, 1] from its predicted probabilities and its 0/1 targets."""
        probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.float64)
        if probs.shape != targets.shape or probs.ndim != 2:
            raise ValueError(f"probabilities of shape {probs.shape} for targets of shape {targets.shape}; "
                             "expected equal (records, classes) shapes")
        if self.name == "clipped-loss":
            p = np.clip(probs, 1e-7, 1 - 1e-7)
            if self.task == "multilabel":
                loss = -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p), axis=1)
            else:
                loss = -np.log(p[np.arange(len(p)), targets.argmax(axis=1)])
            return 1.0 - np.minimum(loss, self.clip) / self.clip
        if self.task == "multiclass":
            return (probs.argmax(axis=1) == targets.argmax(axis=1)).astype(np.float64)
        right = label_hits(targets, probs)
        return right.mean(axis=1) if self.name == "hamming" else right.all(axis=1).astype(np.float64)

    def total(self, probs: np.ndarray, targets: np.ndarray) -> float:
        """The sum over records: the numerator the Laplace release noises (``release_total``)."""
        return float(self.per_record(probs, targets).sum())
