"""Accuracy-weighted aggregation weights of AdeptHEQ-FL (paper section 3.4, eq. 13).

:func:`tempered_softmax` turns the clients' privatised validation accuracies into aggregation
weights; :func:`weight_spread` summarises how concentrated such weights are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np


def _check_accuracies(accuracies: Sequence[float]) -> np.ndarray:
    values = np.asarray(accuracies, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"accuracies must be a non-empty 1-D sequence, got {accuracies!r}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"accuracies must be finite, got {accuracies!r}")
    if np.any(values < 0.0) or np.any(values > 1.0):
        raise ValueError(f"accuracies must lie in [0, 1], got {accuracies!r}")
    return values


def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, Real) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"temperature tau must be a positive finite number, got {tau!r}")
    return float(tau)


def _check_counts(sample_counts: Sequence[int], n_clients: int) -> np.ndarray:
    counts = list(sample_counts)
    if len(counts) != n_clients:
        raise ValueError(
            f"sample_counts must have one entry per client ({n_clients}), got {len(counts)}: {sample_counts!r}"
        )
    for count in counts:
        if isinstance(count, (bool, np.bool_)) or not isinstance(count, Integral) or count < 1:
            raise ValueError(f"sample_counts must be positive integers, got {count!r} in {sample_counts!r}")
    return np.asarray(counts, dtype=np.float64)


def tempered_softmax(
    accuracies: Sequence[float],
    tau: float = 0.5,
    sample_counts: Sequence[int] | None = None,
) -> np.ndarray:
    r"""Aggregation weights from (privatised) validation accuracies, paper eq. 13.

    .. math::
        w_i = \frac{n_i \exp\bigl((a_i - \max_j a_j)/\tau\bigr)}
                   {\sum_k n_k \exp\bigl((a_k - \max_j a_j)/\tau\bigr)}

    with :math:`n_i = 1` when ``sample_counts`` is ``None`` (the paper's formula). Subtracting
    :math:`\max_j a_j` does not change the weights (it cancels in the ratio); it only keeps every
    exponent <= 0 so nothing overflows. With counts the sum is taken in the log domain,
    :math:`\log n_i + (a_i - \max_j a_j)/\tau`, for the same reason.

    A small ``tau`` concentrates the weight on the best client(s) (argmax as tau -> 0); a large
    ``tau`` tends to uniform weights (or to :math:`n_i / \sum_k n_k` with counts).

    Args:
        accuracies: one accuracy in [0, 1] per client.
        tau: temperature :math:`\tau > 0`.
        sample_counts: optional positive integer sample count per client, multiplying each
            numerator (FedAvg-style prior).

    Returns:
        float64 array of weights, non-negative, summing to 1.
    """
    values = _check_accuracies(accuracies)
    tau = _check_tau(tau)
    logits = (values - values.max()) / tau
    if sample_counts is not None:
        logits = logits + np.log(_check_counts(sample_counts, values.size))
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def weight_spread(weights: Sequence[float]) -> dict[str, float]:
    r"""How concentrated a weight vector is.

    Returns a dict of plain Python numbers:

    * ``n_clients``: N (int).
    * ``min``, ``max``: smallest and largest weight.
    * ``max_min_ratio``: ``max / min`` (``inf`` when some weight is 0).
    * ``normalized_entropy``: :math:`H(w)/\ln N` with :math:`H(w) = -\sum_i w_i \ln w_i` and
      :math:`0 \ln 0 = 0`; 1 for uniform weights, 0 when one client has all the weight
      (defined as 1 for N = 1).
    * ``effective_clients``: :math:`1/\sum_i w_i^2`, from 1 (one client) to N (uniform).

    Args:
        weights: non-negative finite weights summing to 1 (within 1e-6).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must be a non-empty 1-D sequence, got {weights!r}")
    if not np.all(np.isfinite(w)) or np.any(w < 0.0):
        raise ValueError(f"weights must be finite and non-negative, got {weights!r}")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got sum {w.sum()!r} for {weights!r}")
    n = w.size
    positive = w[w > 0.0]
    entropy = float(-np.sum(positive * np.log(positive)))
    w_min, w_max = float(w.min()), float(w.max())
    return {
        "n_clients": n,
        "min": w_min,
        "max": w_max,
        "max_min_ratio": w_max / w_min if w_min > 0.0 else math.inf,
        "normalized_entropy": entropy / math.log(n) if n > 1 else 1.0,
        "effective_clients": float(1.0 / np.sum(w * w)),
    }
