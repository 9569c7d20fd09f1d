"""Synthetic PTB-XL: on-disk format, determinism, label statistics, learnable-but-not-trivial classes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

import data_prep.synth_ptbxl as synth
from data_prep.cache_paths import CACHE_ENV_VAR
from data_prep.ptbxl import LEAD_NAMES, SUPERCLASSES
from data_prep.synth_ptbxl import (
    draw_superclasses,
    ensure_synthetic_ptbxl,
    synthesise_ecg,
    synthetic_metadata,
    write_synthetic_ptbxl,
)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_ptbxl(tmp_path_factory.mktemp("s"), n_records=10, seed=4, sampling_rate=500)


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_on_disk_layout_like_ptbxl(small_set: Path) -> None:
    database = pd.read_csv(small_set / "ptbxl_database.csv")
    real_columns = ["ecg_id", "patient_id", "site", "scp_codes", "strat_fold", "filename_lr", "filename_hr"]
    assert set(real_columns) <= set(database.columns) and len(database) == 10
    statements = pd.read_csv(small_set / "scp_statements.csv", index_col=0)
    assert {"diagnostic", "diagnostic_class", "diagnostic_subclass", "form", "rhythm"} <= set(statements.columns)
    assert set(statements.loc[statements["diagnostic"] == 1, "diagnostic_class"]) == set(SUPERCLASSES)
    header = wfdb.rdheader(str(small_set / database.loc[0, "filename_lr"]))
    assert (header.fs, header.sig_len, header.n_sig) == (100, 1000, 12)
    assert header.sig_name == list(LEAD_NAMES) and header.units == ["mV"] * 12 and header.fmt == ["16"] * 12
    assert database.loc[0, "filename_lr"] == "records100/00000/00001_lr"
    header_hr = wfdb.rdheader(str(small_set / database.loc[0, "filename_hr"]))
    assert (header_hr.fs, header_hr.sig_len) == (500, 5000)


def test_limb_leads_obey_einthoven(small_set: Path) -> None:
    signal, _ = wfdb.rdsamp(str(small_set / "records100/00000/00003_lr"))
    i, ii, iii, avr, avl, avf = signal.T[:6]
    tolerance = 2.01e-3  # two 1-uV quantisation steps
    assert np.abs(iii - (ii - i)).max() <= tolerance
    assert np.abs(avr + (i + ii) / 2).max() <= tolerance
    assert np.abs(avl - (i - iii) / 2).max() <= tolerance
    assert np.abs(avf - (ii + iii) / 2).max() <= tolerance


def test_deterministic_from_seed(small_set: Path, tmp_path: Path) -> None:
    again = write_synthetic_ptbxl(tmp_path / "again", n_records=10, seed=4, sampling_rate=500)
    assert _file_bytes(again) == _file_bytes(small_set)
    other = write_synthetic_ptbxl(tmp_path / "other", n_records=10, seed=5, sampling_rate=500)
    first = "records100/00000/00001_lr.dat"
    assert (other / first).read_bytes() != (small_set / first).read_bytes()


def test_label_statistics_like_ptbxl() -> None:
    classes = draw_superclasses(np.random.default_rng(0), 20000)
    counts = {c: sum(c in s for s in classes) / len(classes) for c in SUPERCLASSES}
    multi = sum(len(s) > 1 for s in classes) / len(classes)
    empty = sum(len(s) == 0 for s in classes) / len(classes)
    # PTB-XL: NORM most frequent, HYP rarest; ~15 % multi-label; ~1 % without a superclass
    assert max(counts, key=counts.get) == "NORM" and min(counts, key=counts.get) == "HYP"
    assert 0.12 < multi < 0.18 and 0.005 < empty < 0.02
    assert all(0.08 < share < 0.5 for share in counts.values())


def test_folds_roughly_8_1_1_and_patients_within_one_fold() -> None:
    meta = synthetic_metadata(3000, seed=7)
    shares = np.bincount(meta.folds, minlength=11)[1:] / 3000
    assert np.abs(shares - 0.1).max() < 0.02
    for patient in np.unique(meta.patient_ids)[:300]:
        assert np.unique(meta.folds[meta.patient_ids == patient]).size == 1
    assert np.unique(meta.sites).size == synth.N_SITES


def test_ensure_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    folder = ensure_synthetic_ptbxl(8, seed=1)
    assert folder == tmp_path / "synthetic-ptbxl-n8-s1-v1"
    assert len(pd.read_csv(folder / "ptbxl_database.csv")) == 8

    def refuse(*args, **kwargs):
        raise AssertionError("regenerated although the folder exists")

    monkeypatch.setattr(synth, "write_synthetic_ptbxl", refuse)
    assert ensure_synthetic_ptbxl(8, seed=1) == folder


def _ensure_counting(root: str, counter: str) -> str:
    original = synth.write_synthetic_ptbxl

    def counting(*args, **kwargs):
        with open(counter, "a") as handle:
            handle.write("generated\n")
        return original(*args, **kwargs)

    synth.write_synthetic_ptbxl = counting
    return str(ensure_synthetic_ptbxl(6, seed=2, cache_root=Path(root)))


def test_ensure_concurrent_callers_generate_once(tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        folders = pool.starmap(_ensure_counting, [(str(tmp_path / "cache"), str(counter))] * 4)
    assert len(set(folders)) == 1
    assert counter.read_text().splitlines() == ["generated"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "synthetic-ptbxl-n6-s2-v1", "synthetic-ptbxl-n6-s2-v1.lock"
    ]


# ---------------------------------------------------------------- learnable but not trivial


def _macro_auc_logistic(features: np.ndarray, targets: np.ndarray, n_train: int) -> float:
    """One-vs-rest L2 logistic regression (gradient descent) on standardised features; mean test AUC."""
    mean, std = features[:n_train].mean(axis=0), features[:n_train].std(axis=0) + 1e-8
    x = np.hstack([(features - mean) / std, np.ones((len(features), 1))])
    weights = np.zeros((x.shape[1], targets.shape[1]))
    for _ in range(1500):
        p = 1.0 / (1.0 + np.exp(-x[:n_train] @ weights))
        weights -= 0.1 * (x[:n_train].T @ (p - targets[:n_train]) / n_train + 1e-3 * weights)
    scores = x[n_train:] @ weights
    return float(np.mean([_auc(scores[:, k], targets[n_train:, k]) for k in range(targets.shape[1])]))


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC: P(score of a positive > score of a negative)."""
    ranks = np.argsort(np.argsort(score)) + 1.0
    n_pos = positive.sum()
    return float((ranks[positive == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(score) - n_pos)))


def test_classes_learnable_but_not_from_mean_and_std() -> None:
    rng = np.random.default_rng(11)
    classes = [c for c in draw_superclasses(rng, 520) if c][:500]
    signals = np.stack([synthesise_ecg(c, np.random.default_rng([11, i]), 100, site=i % 6)[0]
                        for i, c in enumerate(classes)])
    targets = np.array([[name in c for name in SUPERCLASSES] for c in classes], dtype=float)
    simple = np.concatenate([signals.mean(axis=2), signals.std(axis=2)], axis=1)
    centred = signals - np.median(signals, axis=2, keepdims=True)
    slope = np.diff(signals, axis=2)

    def quantiles(a: np.ndarray) -> np.ndarray:  # per-lead 2/10/50/90/98 % quantiles, flattened
        return np.quantile(a, [0.02, 0.1, 0.5, 0.9, 0.98], axis=2).transpose(1, 0, 2).reshape(len(a), -1)

    rich = np.concatenate([simple, quantiles(centred), quantiles(slope), np.abs(slope).mean(axis=2)], axis=1)
    auc_simple = _macro_auc_logistic(simple, targets, 380)
    auc_rich = _macro_auc_logistic(rich, targets, 380)
    amplitude = np.abs(centred).mean(axis=(1, 2))  # one global amplitude feature
    auc_amplitude = [max(_auc(amplitude, targets[:, k]), 1 - _auc(amplitude, targets[:, k])) for k in range(5)]
    print(f"macro AUC: mean/std features {auc_simple:.3f}, richer features {auc_rich:.3f}; "
          f"amplitude-only per class {np.round(auc_amplitude, 3)}")
    assert 0.6 < auc_simple < 0.88  # mean/std per lead carries some signal, far from perfect
    assert auc_rich > auc_simple + 0.06  # waveform shape (slopes, quantiles) carries more
    assert max(auc_amplitude) < 0.8  # no class is separable by overall amplitude alone
