"""Where the data layer keeps its caches, and how a cache folder is built exactly once.

The default root is ``$ADEPTHEQ_CACHE`` when set, else ``~/.cache/adeptheq-fl``; it lies outside the
repository so that simulated clients, tests and CLI runs share one parsed copy of the data.

A cache folder is built by :func:`build_once`: under an exclusive ``fcntl`` lock on ``<folder>.lock``
the builder writes into a private temporary folder next to the target and renames it into place, so a
reader sees either no folder or a complete one, and N processes starting together build it once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV_VAR = "ADEPTHEQ_CACHE"
SYNTHETIC_FORMAT_VERSION = 1


def default_cache_root() -> Path:
    """``$ADEPTHEQ_CACHE`` if set and non-empty, else ``~/.cache/adeptheq-fl``."""
    configured = os.environ.get(CACHE_ENV_VAR, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "adeptheq-fl"


def synthetic_ptbxl_dir(n_records: int, seed: int, root: Path | None = None) -> Path:
    """Folder of the synthetic PTB-XL set with ``n_records`` records generated from ``seed``."""
    base = default_cache_root() if root is None else Path(root)
    return base / f"synthetic-ptbxl-n{n_records}-s{seed}-v{SYNTHETIC_FORMAT_VERSION}"


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_path`` (created if absent) for the ``with`` body."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_once(target: Path, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Make ``target`` exist by calling ``build(tmp_dir)`` once across processes; return (target, built_here).

    ``build`` fills an empty temporary folder; on success the folder is renamed to ``target`` (atomic on
    one file system). Temporary folders left by crashed builders of the same target are removed first.
    """
    target = Path(target)
    if target.is_dir():
        return target, False
    with exclusive_lock(target.with_name(target.name + ".lock")):
        if target.is_dir():  # another process finished while we waited for the lock
            return target, False
        for stale in target.parent.glob(target.name + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp_dir = target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp_dir.mkdir(parents=True)
        try:
            build(tmp_dir)
            os.rename(tmp_dir, target)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    return target, True
