"""How much a layer moved between two versions: the quantity layer freezing is scored on."""

from __future__ import annotations

import math

import numpy as np


def rms_change(new: np.ndarray, old: np.ndarray) -> float:
    """s = ||new - old||_2 / sqrt(n): the root-mean-square change per parameter of an n-parameter layer.

    Per parameter so that layers of different sizes compare (the paper's eq. 15 uses the plain norm).
    """
    diff = np.asarray(new, dtype=np.float64).ravel() - np.asarray(old, dtype=np.float64).ravel()
    return float(np.linalg.norm(diff) / math.sqrt(diff.size))
