"""One description per data set: what the model, the loss, the metrics and the checks read.

A reader in ``data_prep/`` owns its data set's facts (files, columns, folds, class names) and
exposes them once as a :class:`DatasetSpec`; no module outside ``data_prep/`` names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Task = Literal["multilabel", "multiclass"]
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}  # per-record split of readers without folds
Group = Literal["site", "subject", "device", "record"]


@dataclass(frozen=True)
class DatasetSpec:
    """A data set as the rest of the system sees it.

    ``task``: ``multilabel`` targets are multi-hot float vectors (loss: binary cross-entropy per
    class); ``multiclass`` targets are one-hot vectors of exactly one class (loss: cross-entropy).
    ``group``: the natural unit of a record (a hospital site, a subject, a device or the record
    itself) that natural partitioning gives whole to one client. ``splits`` says, per split name,
    how its records are chosen, in words a person checks against the published protocol.
    """

    name: str
    title: str
    channels: tuple[str, ...]
    sampling_rates: tuple[int, ...]  # waveforms: the rates the reader offers; empty for tabular readings
    window_seconds: float  # waveforms: the window length in seconds
    classes: tuple[str, ...]
    task: Task
    group: Group
    splits: dict[str, str]  # 'train' / 'val' / 'test' -> how they are chosen
    window_readings: int = 0  # tabular readings: consecutive readings per window
    default_subjects: dict[str, tuple[str, ...]] = field(default_factory=dict)  # subject-wise: 'val' / 'test' ids
    source: str = ""  # where a user gets the files
    layout: str = ""  # what ``data-path`` must hold

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def window_samples(self, sampling_rate: int) -> int:
        """Time steps of one input window: seconds x rate for waveforms, else the readings per window."""
        if self.sampling_rates:
            return int(round(self.window_seconds * sampling_rate))
        return self.window_readings

    def describe(self) -> str:
        """A few lines for ``--help``: source, layout, task and split."""
        kind = "multi-label" if self.task == "multilabel" else "multi-class"
        return "\n".join([
            f"{self.name}: {self.title}",
            f"  get:    {self.source}",
            f"  layout: data-path holds {self.layout}",
            f"  task:   {kind} over {', '.join(self.classes)}; natural group: {self.group}",
            "  split:  " + "; ".join(f"{k} = {v}" for k, v in self.splits.items()),
        ])

    def split_label(self, split: str) -> str:
        """'validation (strat_fold 9)': the split's name with how it is chosen, for logs and plots."""
        name = {"val": "validation"}.get(split, split)
        return f"{name} ({self.splits[split]})" if split in self.splits else name


@dataclass(frozen=True)
class ReadOptions:
    """The run config's choices a reader may need; each reader uses those that apply to it.

    A zero rate, empty subject tuples and zero window lengths mean the data set's documented defaults.
    """

    sampling_rate: int = 0
    val_subjects: tuple[str, ...] = ()
    test_subjects: tuple[str, ...] = ()
    window_seconds: float = 0.0
    window_step_seconds: float = 0.0


def split_positions(split: np.ndarray, name: str) -> np.ndarray:
    """Sorted positions of the records whose split code (:data:`SPLIT_CODES`) is split ``name``."""
    if name not in SPLIT_CODES:
        raise ValueError(f"split name {name!r}: expected one of {sorted(SPLIT_CODES)}")
    return np.flatnonzero(split == SPLIT_CODES[name]).astype(np.int64)
