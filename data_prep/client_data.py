"""The arrays one client trains and validates on, from the run config and its node config.

The data folder is the node config's ``data-path`` (a real device), else the run config's
``data-path`` (simulation on real PTB-XL), else the built-in synthetic set generated once
into the cache. The same PTB-XL loader reads all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import ConfigError, NodeConfig, RunConfig
from data_prep.partition import client_indices
from data_prep.ptbxl import TRAIN_FOLDS, PTBXLData, load_ptbxl, read_ptbxl_index
from data_prep.synth_ptbxl import ensure_synthetic_ptbxl, synthetic_metadata

SYNTHETIC_DATA_SEED = 0  # the built-in set is fixed; the run seed drives partitions and models
MIN_TRAIN_RECORDS_PER_CLIENT = 10

_LOADED: dict[tuple[str, int], PTBXLData] = {}
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
    return ensure_synthetic_ptbxl(cfg.synthetic_records, seed=SYNTHETIC_DATA_SEED)


def load_dataset(cfg: RunConfig, node: NodeConfig | None = None) -> PTBXLData:
    """PTB-XL records (parsed once per process; the WFDB files once per cache)."""
    root = data_root(cfg, node)
    key = (str(root.resolve()), cfg.sampling_rate)
    if key not in _LOADED:
        _LOADED[key] = load_ptbxl(root, cfg.sampling_rate, verbose=True)  # progress only while parsing WFDB once
    return _LOADED[key]


def client_arrays(cfg: RunConfig, node: NodeConfig) -> ClientArrays:
    """This client's share of the training folds, split into local train and validation."""
    data = load_dataset(cfg, node)
    key = (str(data.cache_path), cfg.partitioning, cfg.dirichlet_alpha, cfg.seed, cfg.val_fraction,
           node.partition_id, node.num_partitions)
    if key not in _INDICES:  # a partition is fixed for the run: compute it once per process, not every round
        _INDICES[key] = client_indices(
            cfg.partitioning, data.labels, data.sites, data.split_indices("train"),
            partition_id=node.partition_id, num_partitions=node.num_partitions,
            alpha=cfg.dirichlet_alpha, seed=cfg.seed, val_fraction=cfg.val_fraction,
        )
    train_idx, val_idx = _INDICES[key]
    return ClientArrays(
        x_train=data.standardised(train_idx), y_train=data.labels[train_idx],
        x_val=data.standardised(val_idx), y_val=data.labels[val_idx],
    )


def split_arrays(cfg: RunConfig, node: NodeConfig | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole PTB-XL split ('val' = fold 9, 'test' = fold 10), every record once."""
    data = load_dataset(cfg, node)
    idx = data.split_indices(split)
    return data.standardised(idx), data.labels[idx]


def training_record_count(cfg: RunConfig, parse_records: bool = False) -> int:
    """Labelled records in the training folds of the run config's data.

    ``parse_records=True`` loads every record (building the cache, so a bad file stops here);
    otherwise only the tables are read (the synthetic set's from its generator, without writing it).
    """
    if parse_records:
        return len(load_dataset(cfg).split_indices("train"))
    if cfg.data_path:
        return int(np.isin(read_ptbxl_index(cfg.data_path, cfg.sampling_rate).folds, TRAIN_FOLDS).sum())
    meta = synthetic_metadata(cfg.synthetic_records, SYNTHETIC_DATA_SEED)
    return sum(1 for classes, fold in zip(meta.classes, meta.folds) if classes and fold in TRAIN_FOLDS)


def check_federation_size(cfg: RunConfig, num_nodes: int, parse_records: bool = False) -> None:
    """Refuse a federation whose clients would get fewer than MIN_TRAIN_RECORDS_PER_CLIENT records each."""
    available = training_record_count(cfg, parse_records)
    if num_nodes * MIN_TRAIN_RECORDS_PER_CLIENT > available:
        source = f"data-path '{cfg.data_path}'" if cfg.data_path else f"synthetic-records {cfg.synthetic_records}"
        folds = f"folds {TRAIN_FOLDS[0]}-{TRAIN_FOLDS[-1]}"
        raise ConfigError(
            f"run config: {num_nodes} clients need at least {MIN_TRAIN_RECORDS_PER_CLIENT} training records each, "
            f"but {source} gives {available} records in {folds}; expected fewer clients or more data")
