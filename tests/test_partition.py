"""Client partitioning: disjoint and covering, reproducible, label skew grows as alpha shrinks, errors."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.partition import (
    client_indices,
    dirichlet_partition,
    iid_partition,
    primary_labels,
    natural_partition,
    train_val_split,
)

CLASS_SHARES = np.array([0.44, 0.25, 0.24, 0.22, 0.12])  # PTB-XL superclass prevalence


def multi_hot(n: int, seed: int) -> np.ndarray:
    """Random multi-hot labels with PTB-XL-like prevalence and at least one positive per row."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 5)) < CLASS_SHARES).astype(np.float32)
    empty = labels.sum(axis=1) == 0
    labels[empty, rng.integers(0, 5, empty.sum())] = 1.0
    return labels


def assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == n and np.array_equal(np.sort(joined), np.arange(n))


def mean_client_entropy(parts: list[np.ndarray], primary: np.ndarray, n_classes: int) -> float:
    """Mean over clients of the Shannon entropy (nats) of the client's primary-label distribution."""
    entropies = []
    for part in parts:
        p = np.bincount(primary[part], minlength=n_classes) / part.size
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


def test_primary_label_is_rarest_positive() -> None:
    labels = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 0, 0]], dtype=float)
    # column sums 4, 3, 2 -> class 2 rarest, then 1, then 0
    np.testing.assert_array_equal(primary_labels(labels), [0, 1, 2, 2, 0])
    np.testing.assert_array_equal(primary_labels(np.array([3, 0, 2])), [3, 0, 2])
    with pytest.raises(ValueError, match="1 record.*position 1.*no positive"):
        primary_labels(np.array([[1, 0], [0, 0]]))


def test_iid_partition() -> None:
    parts = iid_partition(103, 10, seed=3)
    assert_disjoint_cover(parts, 103)
    assert sorted(p.size for p in parts) == [10] * 7 + [11] * 3
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 10, seed=3)))
    assert not np.array_equal(parts[0], iid_partition(103, 10, seed=4)[0])


def test_dirichlet_partition_disjoint_and_reproducible() -> None:
    labels = multi_hot(1000, seed=0)
    parts = dirichlet_partition(labels, 10, alpha=0.5, seed=1, min_size=5)
    assert_disjoint_cover(parts, 1000)
    assert min(p.size for p in parts) >= 5
    same = dirichlet_partition(labels, 10, alpha=0.5, seed=1, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same))
    other = dirichlet_partition(labels, 10, alpha=0.5, seed=2, min_size=5)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_smaller_alpha_more_label_skew() -> None:
    labels = multi_hot(2000, seed=0)
    primary = primary_labels(labels)
    global_p = np.bincount(primary) / primary.size
    global_entropy = float(-(global_p * np.log(global_p)).sum())
    entropy = {alpha: np.mean([mean_client_entropy(dirichlet_partition(labels, 10, alpha, seed=s), primary, 5)
                               for s in range(5)])
               for alpha in (0.1, 1.0, 100.0)}
    print(f"global entropy {global_entropy:.3f}; mean client entropy by alpha {entropy}")
    assert entropy[0.1] < entropy[1.0] < entropy[100.0]
    assert entropy[100.0] > 0.97 * global_entropy  # near-IID
    assert entropy[0.1] < 0.6 * global_entropy  # strongly skewed


def test_natural_partition_keeps_groups_whole_and_balances() -> None:
    sites = np.repeat([7, 3, 5, 9, 1], [50, 30, 20, 20, 10])
    parts = natural_partition(sites, 2, seed=0)
    assert_disjoint_cover(parts, sites.size)
    for part in parts:
        for site in np.unique(sites[part]):
            assert np.isin(np.flatnonzero(sites == site), part).all()  # the whole site is on this client
    # greedy largest-first: 50 | 30+20 -> tie 50/50 -> +20 on one, +10 on the other -> sizes 60 and 70
    assert sorted(p.size for p in parts) == [60, 70]
    assert all(np.array_equal(a, b) for a, b in zip(parts, natural_partition(sites, 2, seed=0)))
    with pytest.raises(ValueError, match="5 distinct groups cannot serve 6 clients"):
        natural_partition(sites, 6, seed=0)


def test_natural_partition_missing_group_is_a_group() -> None:
    sites = np.array([-1, -1, 0, 0, 0, 1])
    parts = natural_partition(sites, 3, seed=0)
    assert sorted(tuple(sites[p]) for p in parts) == [(-1, -1), (0, 0, 0), (1,)]


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha .*expected a finite concentration > 0"):
        dirichlet_partition(multi_hot(50, 0), 2, alpha, seed=0)


def test_more_clients_than_records() -> None:
    with pytest.raises(ValueError, match="n_clients 11 exceeds the 10 records"):
        iid_partition(10, 11, seed=0)
    with pytest.raises(ValueError, match="n_clients 11 exceeds the 10 records"):
        dirichlet_partition(multi_hot(10, 0), 11, 1.0, seed=0)
    with pytest.raises(ValueError, match="n_clients 0"):
        iid_partition(10, 0, seed=0)


def test_dirichlet_gives_up_with_clear_error() -> None:
    one_class = np.zeros(100, dtype=np.int64)  # a single class: shares ~ Dir(0.001) put ~all on one client
    with pytest.raises(ValueError, match=r"alpha=0.001, 5 clients, 100 records.*min_size=5 records in 20 attempts"):
        dirichlet_partition(one_class, 5, 0.001, seed=0, min_size=5, max_attempts=20)


def test_train_val_split() -> None:
    indices = np.arange(100, 140)
    train, val = train_val_split(indices, 0.15, seed=0)
    assert (train.size, val.size) == (34, 6)
    assert np.array_equal(np.sort(np.concatenate([train, val])), indices)
    assert train_val_split(np.array([5, 6]), 0.1, seed=0)[1].size == 1  # at least one validation example
    assert train_val_split(np.array([5, 6]), 0.9, seed=0)[0].size == 1  # and at least one training example
    assert train_val_split(np.array([5]), 0.2, seed=0)[1].size == 0
    assert train_val_split(indices, 0.0, seed=0)[1].size == 0
    with pytest.raises(ValueError, match="val_fraction 1.0"):
        train_val_split(indices, 1.0, seed=0)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "natural"])
def test_client_indices_cover_training_folds_only(scheme: str) -> None:
    rng = np.random.default_rng(0)
    n = 600
    labels = multi_hot(n, seed=1)
    folds = rng.integers(1, 11, n)
    sites = rng.choice(8, n, p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05])
    pool = np.flatnonzero(folds <= 8)
    shares = [client_indices(scheme, labels, sites, pool, pid, 4, alpha=0.5, seed=3, val_fraction=0.2)
              for pid in range(4)]
    everything = np.concatenate([np.concatenate(s) for s in shares])
    assert np.array_equal(np.sort(everything), np.flatnonzero(folds <= 8))  # disjoint, covering folds 1-8 only
    for train, val in shares:
        assert val.size >= 1 and abs(val.size - 0.2 * (train.size + val.size)) <= 1
    again = client_indices(scheme, labels, sites, pool, 2, 4, alpha=0.5, seed=3, val_fraction=0.2)
    assert np.array_equal(again[0], shares[2][0]) and np.array_equal(again[1], shares[2][1])


def test_client_indices_errors() -> None:
    labels = multi_hot(40, seed=0)
    pool = np.arange(30)  # records 30-39 are validation-fold records
    with pytest.raises(ValueError, match=r"partition_id 4: expected an integer in \[0, 4\)"):
        client_indices("iid", labels, None, pool, 4, 4)
    with pytest.raises(ValueError, match="partition_id -1"):
        client_indices("iid", labels, None, pool, -1, 4)
    with pytest.raises(ValueError, match="num_partitions=20 clients need at least 2 records each, but only 30"):
        client_indices("iid", labels, None, pool, 0, 20)
    with pytest.raises(ValueError, match="scheme 'label'"):
        client_indices("label", labels, None, pool, 0, 2)
    with pytest.raises(ValueError, match="scheme 'natural' needs the per-record groups"):
        client_indices("natural", labels, None, pool, 0, 2)
    with pytest.raises(ValueError, match=r"train_pool must hold distinct integer positions in \[0, 40\)"):
        client_indices("iid", labels, None, np.array([0, 1, 40]), 0, 1)
    sites = np.array([0] * 29 + [1] * 11)  # site 1 has only one training-fold record
    with pytest.raises(ValueError, match="num_partitions=2 gives a client only 1 records"):
        client_indices("natural", labels, sites, pool, 0, 2)


def test_natural_partition_with_as_many_groups_as_clients_gives_one_group_each() -> None:
    groups = np.repeat([4, 8, 15, 16], [5, 40, 12, 3])  # e.g. subjects of very different record counts
    parts = natural_partition(groups, 4, seed=7)
    assert sorted(len(np.unique(groups[p])) for p in parts) == [1, 1, 1, 1]
    assert sorted(int(groups[p][0]) for p in parts) == [4, 8, 15, 16]
