"""Splitting records over federated clients, reproducible from a seed.

Every function returns, per client, sorted int64 positions into the array it was given. All clients
compute the same full partition from the same seed and keep their own share, so no coordination is
needed. :func:`client_indices` partitions only a data set's training records; its validation and test
splits stay global.

Primary label (used for the Dirichlet label skew of multi-label records): the positive class with the
fewest positives over the whole given label matrix (ties broken by the lower class index). Rare
diagnoses thereby drive the skew instead of being hidden behind the frequent NORM/MI labels.
"""

from __future__ import annotations

import numpy as np

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "natural")
DEFAULT_MIN_SIZE = 2
MAX_DIRICHLET_ATTEMPTS = 1000


def _check_clients(n_records: int, n_clients: int) -> None:
    if not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise ValueError(f"n_clients {n_clients!r}: expected a positive integer")
    if n_clients > n_records:
        raise ValueError(f"n_clients {n_clients} exceeds the {n_records} records available: expected <= {n_records}")


def primary_labels(labels: np.ndarray) -> np.ndarray:
    """(N,) class per record: the label itself for (N,) integer labels; for (N, C) multi-hot, the rarest positive.

    "Rarest" is measured over the given matrix (column sums); ties go to the lower index. A record with no
    positive class is an error.
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.size and (labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError("1-D labels must be non-negative integers")
        return labels.astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"labels of shape {labels.shape}: expected (N,) integers or (N, C) multi-hot")
    positive = labels > 0
    empty = ~positive.any(axis=1)
    if empty.any():
        first = int(np.flatnonzero(empty)[0])
        raise ValueError(f"{int(empty.sum())} record(s) (first at position {first}) have no positive label")
    frequency = positive.sum(axis=0)
    rank = np.argsort(np.argsort(frequency, kind="stable"), kind="stable")  # 0 = rarest class
    masked_rank = np.where(positive, rank[None, :], labels.shape[1])
    return np.argmin(masked_rank, axis=1).astype(np.int64)


def iid_partition(n: int, n_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into ``n_clients`` near-equal parts (sizes differ by <= 1)."""
    _check_clients(n, n_clients)
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, n_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    seed: int,
    min_size: int = DEFAULT_MIN_SIZE,
    max_attempts: int = MAX_DIRICHLET_ATTEMPTS,
) -> list[np.ndarray]:
    """Label-skewed partition: for each class k, client shares ``p_k ~ Dirichlet(alpha * 1_n_clients)``.

    The records of primary class k (see :func:`primary_labels`) are shuffled and cut at the cumulative
    shares ``p_k``. As in Li et al. (NIID-Bench, 2022), a client already holding >= N / n_clients records
    gets share 0 for the classes still to be dealt (shares renormalised), which keeps sizes from
    exploding at small alpha. Small alpha -> each class concentrated on few clients; large alpha ->
    near-IID. The draw is repeated (same generator, so still reproducible) until every client has at
    least ``min_size`` records; after ``max_attempts`` draws a ValueError names the numbers.
    """
    primary = primary_labels(labels)
    n = primary.size
    _check_clients(n, n_clients)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha {alpha!r}: expected a finite concentration > 0")
    if min_size < 0 or min_size * n_clients > n:
        raise ValueError(f"min_size {min_size} x {n_clients} clients exceeds the {n} records available")
    rng = np.random.default_rng(seed)
    classes = np.unique(primary)
    cap = n / n_clients
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        sizes = np.zeros(n_clients, dtype=np.int64)
        for k in classes:
            members = rng.permutation(np.flatnonzero(primary == k))
            shares = rng.dirichlet(np.full(n_clients, float(alpha)))
            shares = np.where(sizes < cap, shares, 0.0)
            shares = shares / shares.sum() if shares.sum() > 0 else np.full(n_clients, 1.0 / n_clients)
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(np.int64)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
                sizes[client] += chunk.size
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    raise ValueError(
        f"Dirichlet partition (alpha={alpha}, {n_clients} clients, {n} records, {classes.size} classes) gave some "
        f"client fewer than min_size={min_size} records in {max_attempts} attempts: raise alpha or use fewer clients"
    )


def natural_partition(groups: np.ndarray, n_clients: int, seed: int) -> list[np.ndarray]:
    """Whole natural groups (site, subject, device or record) per client, balanced by record count.

    Greedy longest-processing-time balancing: groups sorted by size (ties in a seeded random order)
    go to the client with the fewest records so far; the first ``n_clients`` groups seed one client
    each, so every client gets at least one group, and with as many groups as clients each client
    gets exactly one. Which client id receives which share is shuffled with ``seed``. A missing
    group (-1) counts as one more group. Fewer distinct groups than clients is an error.
    """
    groups = np.asarray(groups).reshape(-1)
    _check_clients(groups.size, n_clients)
    group_ids, counts = np.unique(groups, return_counts=True)
    if group_ids.size < n_clients:
        raise ValueError(
            f"{group_ids.size} distinct groups cannot serve {n_clients} clients: expected >= {n_clients} groups"
        )
    rng = np.random.default_rng(seed)
    tie_break = rng.permutation(group_ids.size)
    order = np.lexsort((tie_break, -counts))  # largest group first
    client_order = rng.permutation(n_clients)
    sizes = np.zeros(n_clients, dtype=np.int64)
    members: list[list[int]] = [[] for _ in range(n_clients)]
    for position in order:
        smallest = client_order[np.argmin(sizes[client_order])]
        members[smallest].append(group_ids[position])
        sizes[smallest] += counts[position]
    return [np.flatnonzero(np.isin(groups, share)).astype(np.int64) for share in members]


def train_val_split(indices: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (train, val), both sorted; ``round(val_fraction * n)`` go to val.

    With ``val_fraction > 0`` and at least 2 indices, val gets at least 1 and train keeps at least 1.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction!r}: expected 0 <= val_fraction < 1")
    n = indices.size
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    shuffled = np.random.default_rng(seed).permutation(indices)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


def client_indices(
    scheme: str,
    labels: np.ndarray,
    groups: np.ndarray | None,
    train_pool: np.ndarray,
    partition_id: int,
    num_partitions: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    val_fraction: float = 0.15,
    min_size: int = DEFAULT_MIN_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions into the full data set for client ``partition_id`` of ``num_partitions``.

    ``train_pool`` holds the positions of the training records (``split_indices("train")`` of the data
    set); only these are partitioned, with ``scheme`` ('iid', 'dirichlet' with ``alpha`` over
    :func:`primary_labels` of ``labels[train_pool]``, or 'natural' over ``groups[train_pool]``, the
    data set's natural unit of a record). The client's
    share is then split by :func:`train_val_split` with a seed derived from (seed, partition_id). Every
    client must receive at least ``min_size`` records.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"partitioning scheme {scheme!r}: expected one of {SCHEMES}")
    if not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
        raise ValueError(f"num_partitions {num_partitions!r}: expected a positive integer")
    if not isinstance(partition_id, (int, np.integer)) or not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id {partition_id!r}: expected an integer in [0, {num_partitions})")
    labels = np.asarray(labels)
    pool = np.asarray(train_pool).reshape(-1)
    if pool.size and (not np.issubdtype(pool.dtype, np.integer) or pool.min() < 0 or pool.max() >= labels.shape[0]
                      or np.unique(pool).size != pool.size):
        raise ValueError(f"train_pool must hold distinct integer positions in [0, {labels.shape[0]})")
    pool = pool.astype(np.int64)
    if num_partitions * min_size > pool.size:
        raise ValueError(
            f"num_partitions={num_partitions} clients need at least {min_size} records each, but only {pool.size} "
            f"training-fold records are available (at most {pool.size // max(min_size, 1)} clients)"
        )
    if scheme == "iid":
        parts = iid_partition(pool.size, num_partitions, seed)
    elif scheme == "dirichlet":
        parts = dirichlet_partition(labels[pool], num_partitions, alpha, seed, min_size=min_size)
    else:
        if groups is None:
            raise ValueError("scheme 'natural' needs the per-record groups array")
        groups = np.asarray(groups).reshape(-1)
        if groups.size != labels.shape[0]:
            raise ValueError(f"groups has {groups.size} entries but labels {labels.shape[0]} rows: expected equal")
        parts = natural_partition(groups[pool], num_partitions, seed)
        smallest = min(part.size for part in parts)
        if smallest < min_size:
            raise ValueError(
                f"natural partition of {pool.size} training-fold records over num_partitions={num_partitions} gives a "
                f"client only {smallest} records (< min_size={min_size}): use fewer clients or another scheme"
            )
    own = np.sort(pool[parts[partition_id]])
    split_seed = int(np.random.SeedSequence([seed, partition_id]).generate_state(1)[0])
    return train_val_split(own, val_fraction, seed=split_seed)
