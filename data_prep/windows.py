"""What the windowed readers share: their arrays, the held-out subjects check and the training-only scale."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.format_error import DataFormatError
from data_prep.spec import SPLIT_CODES, split_positions


@dataclass(eq=False)
class WindowSet:
    """Windows as the partitioners, the client and the checks take them (``data_prep/registry.py``)."""

    signals: np.ndarray  # (N, channels, window) float32, as read
    labels: np.ndarray  # (N, classes) one-hot
    groups: np.ndarray  # (N,) int64 natural group (subject or record)
    split: np.ndarray  # (N,) SPLIT_CODES
    channel_mean: np.ndarray  # (channels,) over the training windows only
    channel_std: np.ndarray
    cache_path: Path

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def split_indices(self, name: str) -> np.ndarray:
        return split_positions(self.split, name)

    def standardised(self, idx: np.ndarray | list[int]) -> np.ndarray:
        raw = self.signals[np.asarray(idx, dtype=np.int64).reshape(-1)]
        return ((raw - self.channel_mean[None, :, None]) / self.channel_std[None, :, None]).astype(np.float32)


def check_held_out(val: Sequence[str], test: Sequence[str], known: Sequence[str], where: Path,
                   unit: str = "subject") -> None:
    """DataFormatError naming the run config key when an id is not in ``known`` or in both sets."""
    for key, chosen in (("val-subjects", val), ("test-subjects", test)):
        missing = sorted(set(chosen) - set(known), key=list(chosen).index)
        if missing:
            raise DataFormatError(f"run config: key '{key}' names {unit}(s) {missing} that {where} does not hold; "
                                  f"expected some of {list(known)}")
    if set(val) & set(test):
        raise DataFormatError(f"run config: {unit}s {sorted(set(val) & set(test))} are in both val-subjects and "
                              "test-subjects; expected disjoint sets")


def train_scale(signals: np.ndarray, split: np.ndarray, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (1 where constant) of the training windows."""
    train = signals[split == SPLIT_CODES["train"]]
    if not len(train):
        raise DataFormatError(f"{where}: every window is a validation or test window; expected some training "
                              "windows")
    mean = train.mean(axis=(0, 2), dtype=np.float64)
    std = train.std(axis=(0, 2), dtype=np.float64)
    std[std <= 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
