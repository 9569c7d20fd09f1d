"""The data sets a run config may name, by their ``dataset`` key, and how each is found and read.

Every reader returns an object with ``labels`` ((N, classes) float32: multi-hot or one-hot),
``groups`` ((N,) natural group ids), ``split_indices(name)`` for 'train' / 'val' / 'test',
``standardised(idx)`` ((n, channels, T) float32) and ``cache_path``; the partitioners, the client
and the checks use only these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data_prep.mimic import MIMIC_SPEC, check_mimic_folder, load_mimic
from data_prep.pamap2 import PAMAP2_SPEC, check_pamap2_folder, load_pamap2
from data_prep.ptbxl import PTBXL_SPEC, TRAIN_FOLDS, check_ptbxl_folder, load_ptbxl, read_ptbxl_index
from data_prep.spec import DatasetSpec, ReadOptions
from data_prep.synth_mimic import ensure_synthetic_mimic
from data_prep.synth_pamap2 import ensure_synthetic_pamap2
from data_prep.synth_ptbxl import ensure_synthetic_ptbxl, synthetic_metadata
from data_prep.synth_toniot import ensure_synthetic_toniot
from data_prep.toniot import TONIOT_SPEC, check_toniot_folder, load_toniot
from data_prep.synth_wesad import ensure_synthetic_wesad
from data_prep.wesad import WESAD_SPEC, check_wesad_folder, load_wesad


@dataclass(frozen=True)
class DatasetSource:
    """A data set's spec and its reader: folder check, loader, built-in generator, training count."""

    spec: DatasetSpec
    check_folder: Callable[[str, int], None]  # (path, sampling rate); ValueError phrased as what was expected
    load: Callable[[Path, ReadOptions], object]  # (folder, options) -> the arrays described above
    synthetic: Callable[[int, int], Path]  # (records, seed) -> folder of the built-in set, written once
    training_count: Callable[[Path | None, int, int, int], int] | None = None  # tables only, when cheaper


def _ptbxl_training_count(root: Path | None, sampling_rate: int, synthetic_records: int, synthetic_seed: int) -> int:
    """Labelled training-fold rows of the tables: the folder's, or the built-in set's before it is written."""
    if root is not None:
        return int(np.isin(read_ptbxl_index(root, sampling_rate).folds, TRAIN_FOLDS).sum())
    meta = synthetic_metadata(synthetic_records, synthetic_seed)
    return sum(1 for classes, fold in zip(meta.classes, meta.folds) if classes and fold in TRAIN_FOLDS)


SOURCES: dict[str, DatasetSource] = {
    "ptbxl": DatasetSource(PTBXL_SPEC, check_ptbxl_folder,
                           lambda root, options: load_ptbxl(root, options.sampling_rate or PTBXL_SPEC.sampling_rates[0],
                                                                 verbose=True),
                           lambda n, seed: ensure_synthetic_ptbxl(n, seed=seed), _ptbxl_training_count),
    "wesad": DatasetSource(WESAD_SPEC, check_wesad_folder, lambda root, options: load_wesad(root, options),
                           lambda n, seed: ensure_synthetic_wesad(n, seed=seed)),
    "pamap2": DatasetSource(PAMAP2_SPEC, check_pamap2_folder, lambda root, options: load_pamap2(root, options),
                            lambda n, seed: ensure_synthetic_pamap2(n, seed=seed)),
    "toniot": DatasetSource(TONIOT_SPEC, check_toniot_folder, lambda root, options: load_toniot(root, verbose=True),
                            lambda n, seed: ensure_synthetic_toniot(n, seed=seed)),
    "mimic": DatasetSource(MIMIC_SPEC, check_mimic_folder, lambda root, options: load_mimic(root, options),
                           lambda n, seed: ensure_synthetic_mimic(n, seed=seed)),
}
DATASETS: dict[str, DatasetSpec] = {name: source.spec for name, source in SOURCES.items()}
DEFAULT_DATASET = PTBXL_SPEC.name  # the run config's default


def dataset_source(name: str) -> DatasetSource:
    """The reader of data set ``name``; ValueError naming the known ones otherwise."""
    if name not in SOURCES:
        raise ValueError(f"dataset {name!r}: expected one of {', '.join(SOURCES)}")
    return SOURCES[name]


def datasets_help() -> str:
    """Every data set's source, layout, task and split, for the command lines' ``--help``."""
    return "data sets (run config key dataset; data-path empty: a built-in synthetic set in the same format):\n" + \
        "\n".join(spec.describe() for spec in DATASETS.values())


def dataset_spec(name: str) -> DatasetSpec:
    return dataset_source(name).spec


def check_data_folder(name: str, path: str, sampling_rate: int) -> None:
    """Raise ValueError (phrased as what was expected) unless ``path`` has data set ``name``'s layout."""
    dataset_source(name).check_folder(path, sampling_rate)
