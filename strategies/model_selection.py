"""Model selection: the final model is the global model of the round with the best validation score.

Scoring the test split only on the last round's model reports whichever round training stopped
at; on real ECG the validation AUC of consecutive rounds swings by several points. The selector
keeps a snapshot of the best round by one validation metric (higher is better, except ``loss``),
the first such round on ties. Selection uses the validation split only, never the test split.
The snapshot holds what the server holds: plaintext layers and the ciphertexts of the encrypted
ones, so a server that never decrypts still keeps the chosen model, and a client scores it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SELECTION_METRICS = ("macro-auc", "accuracy", "macro-f1", "balanced-accuracy", "hamming-accuracy", "loss")


@dataclass
class Snapshot:
    """The chosen round's global model as the server holds it, and its validation figures."""

    round: int
    score: float
    validation: dict
    state: Any = field(repr=False)  # what the owner needs to send the model again (its own format)


class BestRoundSelector:
    """Keep the round whose validation ``metric`` is best; NaN scores (an empty split) never win."""

    def __init__(self, metric: str = "macro-auc") -> None:
        if metric not in SELECTION_METRICS:
            raise ValueError(f"selection metric {metric!r}: expected one of {', '.join(SELECTION_METRICS)}")
        self.metric = metric
        self.best: Snapshot | None = None

    def better(self, score: float) -> bool:
        if not isinstance(score, (int, float)) or math.isnan(score):
            return False
        if self.best is None:
            return True
        return score < self.best.score if self.metric == "loss" else score > self.best.score

    def observe(self, server_round: int, validation: dict, snapshot) -> bool:
        """Offer a round; ``snapshot()`` is called (and kept) only when the round is the new best."""
        score = validation.get(self.metric, math.nan)
        if not self.better(score):
            return False
        self.best = Snapshot(server_round, float(score), dict(validation), snapshot())
        return True
