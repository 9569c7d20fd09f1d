"""The arrays one client trains and validates on, from the run config and its node config.

The data folder is the node config's ``data-path`` (a real device), else the run config's
``data-path`` (simulation on real data), else the data set's built-in synthetic set generated
once into the cache. The data set's own reader (``data_prep.registry``) reads all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import ConfigError, NodeConfig, RunConfig
from data_prep.partition import client_indices
from data_prep.registry import dataset_source
from data_prep.spec import ReadOptions

SYNTHETIC_DATA_SEED = 0  # the built-in set is fixed; the run seed drives partitions and models
MIN_TRAIN_RECORDS_PER_CLIENT = 10

_LOADED: dict[tuple, object] = {}
_INDICES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


@dataclass
class ClientArrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def data_root(cfg: RunConfig, node: NodeConfig | None = None) -> Path:
    if node is not None and node.data_path:
        return Path(node.data_path)
    if cfg.data_path:
        return Path(cfg.data_path)
    return dataset_source(cfg.dataset).synthetic(cfg.synthetic_records, SYNTHETIC_DATA_SEED)


def read_options(cfg: RunConfig) -> ReadOptions:
    return ReadOptions(sampling_rate=cfg.sampling_rate, val_subjects=cfg.val_subject_ids,
                       test_subjects=cfg.test_subject_ids, window_seconds=cfg.window_seconds,
                       window_step_seconds=cfg.window_step_seconds)


def load_dataset(cfg: RunConfig, node: NodeConfig | None = None):
    """The run's data set, read once per process (PTB-XL's WFDB files once per cache)."""
    root = data_root(cfg, node)
    options = read_options(cfg)
    key = (cfg.dataset, str(root.resolve()), options)
    if key not in _LOADED:
        _LOADED[key] = dataset_source(cfg.dataset).load(root, options)
    return _LOADED[key]


def client_arrays(cfg: RunConfig, node: NodeConfig) -> ClientArrays:
    """This client's share of the training folds, split into local train and validation."""
    data = load_dataset(cfg, node)
    key = (str(data.cache_path), cfg.partitioning, cfg.dirichlet_alpha, cfg.seed, cfg.val_fraction,
           node.partition_id, node.num_partitions)
    if key not in _INDICES:  # a partition is fixed for the run: compute it once per process, not every round
        _INDICES[key] = client_indices(
            cfg.partitioning, data.labels, data.groups, data.split_indices("train"),
            partition_id=node.partition_id, num_partitions=node.num_partitions,
            alpha=cfg.dirichlet_alpha, seed=cfg.seed, val_fraction=cfg.val_fraction,
        )
    train_idx, val_idx = _INDICES[key]
    return ClientArrays(
        x_train=data.standardised(train_idx), y_train=data.labels[train_idx],
        x_val=data.standardised(val_idx), y_val=data.labels[val_idx],
    )


def split_arrays(cfg: RunConfig, node: NodeConfig | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole held-out split ('val' or 'test', as the data set's spec defines them), every record once."""
    data = load_dataset(cfg, node)
    idx = data.split_indices(split)
    return data.standardised(idx), data.labels[idx]


def training_record_count(cfg: RunConfig, parse_records: bool = False) -> int:
    """Records in the training split of the run config's data.

    ``parse_records=True`` loads every record (building the cache, so a bad file stops here);
    otherwise the data set's tables are read when its reader can count from them.
    """
    source = dataset_source(cfg.dataset)
    if parse_records or source.training_count is None:
        return len(load_dataset(cfg).split_indices("train"))
    return source.training_count(Path(cfg.data_path) if cfg.data_path else None, cfg.sampling_rate,
                                 cfg.synthetic_records, SYNTHETIC_DATA_SEED)


def check_federation_size(cfg: RunConfig, num_nodes: int, parse_records: bool = False) -> None:
    """Refuse a federation whose clients would get fewer than MIN_TRAIN_RECORDS_PER_CLIENT records each."""
    available = training_record_count(cfg, parse_records)
    if num_nodes * MIN_TRAIN_RECORDS_PER_CLIENT > available:
        source = f"data-path '{cfg.data_path}'" if cfg.data_path else f"synthetic-records {cfg.synthetic_records}"
        raise ConfigError(
            f"run config: {num_nodes} clients need at least {MIN_TRAIN_RECORDS_PER_CLIENT} training records each, "
            f"but {source} gives {available} training records ({dataset_source(cfg.dataset).spec.splits['train']}); "
            "expected fewer clients or more data")
