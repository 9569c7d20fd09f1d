"""PTB-XL reader: labels, folds, standardisation, cache reuse, format errors, the real subset."""

from __future__ import annotations

import ast
import csv
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from data_prep.ptbxl import LEAD_NAMES, SUPERCLASSES, PTBXLFormatError, load_ptbxl
from data_prep.synth_ptbxl import write_synthetic_ptbxl

REAL_PTBXL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ptbxl"
needs_real = pytest.mark.skipif(
    not (REAL_PTBXL / "ptbxl_database.csv").is_file(),
    reason=f"real PTB-XL subset not present at {REAL_PTBXL.resolve()} (only in the project workspace)",
)


def expected_labels(root: Path) -> tuple[dict[int, np.ndarray], list[int]]:
    """Independent label computation: csv module + literal_eval; returns {ecg_id: multi-hot}, dropped ids."""
    with open(root / "scp_statements.csv", newline="") as handle:
        code_class = {row[""]: row["diagnostic_class"] for row in csv.DictReader(handle)
                      if row["diagnostic"] and float(row["diagnostic"]) == 1.0}
    labelled, dropped = {}, []
    with open(root / "ptbxl_database.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            classes = {code_class[c] for c in ast.literal_eval(row["scp_codes"]) if c in code_class}
            if classes:
                labelled[int(row["ecg_id"])] = np.array([name in classes for name in SUPERCLASSES], dtype=np.float32)
            else:
                dropped.append(int(row["ecg_id"]))
    return labelled, dropped


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_ptbxl(tmp_path_factory.mktemp("synth60"), n_records=60, seed=1)


@pytest.fixture(scope="module")
def synth_data(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_ptbxl(synth_root, 100, tmp_path_factory.mktemp("cache60"), verbose=False)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small set to copy and corrupt; seed 3 gives both training and non-training folds."""
    return write_synthetic_ptbxl(tmp_path_factory.mktemp("synth12"), n_records=12, seed=3)


@pytest.fixture()
def tiny_copy(tiny_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_root, tmp_path / "copy"))


def test_labels_folds_sites_match_csv(synth_root: Path, synth_data) -> None:
    labelled, dropped = expected_labels(synth_root)
    table = pd.read_csv(synth_root / "ptbxl_database.csv").set_index("ecg_id")
    assert synth_data.n_rows == 60
    assert synth_data.n_dropped_no_superclass == len(dropped)
    assert len(synth_data) == 60 - len(dropped) == len(labelled)
    assert sorted(synth_data.ecg_ids.tolist()) == sorted(labelled)
    expected = np.stack([labelled[int(e)] for e in synth_data.ecg_ids])
    np.testing.assert_array_equal(synth_data.labels, expected)
    np.testing.assert_array_equal(synth_data.folds, table.loc[synth_data.ecg_ids, "strat_fold"].to_numpy())
    np.testing.assert_array_equal(synth_data.sites, table.loc[synth_data.ecg_ids, "site"].to_numpy().astype(int))
    assert synth_data.signals.shape == (len(labelled), 12, 1000) and synth_data.signals.dtype == np.float32
    for name, folds in (("train", range(1, 9)), ("val", [9]), ("test", [10])):
        idx = synth_data.split_indices(name)
        assert set(synth_data.folds[idx].tolist()) <= set(folds)
        assert len(idx) == int(np.isin(synth_data.folds, list(folds)).sum())


def test_signals_equal_wfdb_records(synth_root: Path, synth_data) -> None:
    for position in (0, len(synth_data) - 1):
        eid = int(synth_data.ecg_ids[position])
        raw, _ = wfdb.rdsamp(str(synth_root / f"records100/00000/{eid:05d}_lr"))
        np.testing.assert_allclose(synth_data.signals[position], raw.T, atol=1e-6)


def test_standardisation_fitted_on_training_folds_only(synth_data) -> None:
    train = synth_data.split_indices("train")
    raw_train = np.asarray(synth_data.signals[train], dtype=np.float64)
    np.testing.assert_allclose(synth_data.lead_mean, raw_train.mean(axis=(0, 2)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(synth_data.lead_std, raw_train.std(axis=(0, 2)), rtol=1e-5)
    all_std = np.asarray(synth_data.signals, dtype=np.float64).std(axis=(0, 2))
    assert np.abs(all_std - synth_data.lead_std).max() > 1e-4  # train-only differs from all-records statistics
    z = synth_data.standardised(train)
    assert z.dtype == np.float32 and z.shape == (len(train), 12, 1000)
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1.0, atol=1e-4)
    val = synth_data.split_indices("val")[::-1]  # any order is kept
    expected = (np.asarray(synth_data.signals[val]) - synth_data.lead_mean[:, None]) / synth_data.lead_std[:, None]
    np.testing.assert_allclose(synth_data.standardised(val), expected, rtol=1e-6)


def test_split_name_validated(synth_data) -> None:
    with pytest.raises(ValueError, match="'training'"):
        synth_data.split_indices("training")


def test_cache_reused_without_reading_wfdb(synth_root: Path, synth_data, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("wfdb.rdsamp called although the cache exists")

    monkeypatch.setattr(wfdb, "rdsamp", refuse)
    again = load_ptbxl(synth_root, 100, synth_data.cache_path.parent, verbose=False)
    assert again.cache_path == synth_data.cache_path
    assert isinstance(again.signals, np.memmap) and not again.signals.flags.writeable
    np.testing.assert_array_equal(np.asarray(again.signals), np.asarray(synth_data.signals))
    np.testing.assert_array_equal(again.labels, synth_data.labels)
    np.testing.assert_array_equal(again.lead_std, synth_data.lead_std)


def test_cache_key_follows_csv_content(tiny_copy: Path, tmp_path: Path) -> None:
    first = load_ptbxl(tiny_copy, 100, tmp_path / "cache", verbose=False)
    table = pd.read_csv(tiny_copy / "ptbxl_database.csv")
    table = table[table["ecg_id"] != table["ecg_id"].iloc[0]]
    table.to_csv(tiny_copy / "ptbxl_database.csv", index=False)
    second = load_ptbxl(tiny_copy, 100, tmp_path / "cache", verbose=False)
    assert second.cache_path != first.cache_path
    assert second.n_rows == first.n_rows - 1


def _load_counting_reads(root: str, cache_dir: str, counter: str) -> str:
    original = wfdb.rdsamp

    def counting(*args, **kwargs):
        with open(counter, "a") as handle:
            handle.write("read\n")
        return original(*args, **kwargs)

    wfdb.rdsamp = counting
    return str(load_ptbxl(root, 100, Path(cache_dir), verbose=False).cache_path)


def test_concurrent_loads_parse_once(tiny_root: Path, tmp_path: Path) -> None:
    counter = tmp_path / "reads.txt"
    args = [(str(tiny_root), str(tmp_path / "cache"), str(counter))] * 4
    with multiprocessing.get_context("fork").Pool(4) as pool:
        paths = pool.starmap(_load_counting_reads, args)
    n_records = len(load_ptbxl(tiny_root, 100, tmp_path / "cache", verbose=False))
    assert len(set(paths)) == 1
    assert len(counter.read_text().splitlines()) == n_records
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


def test_500hz_matches_100hz(tmp_path: Path) -> None:
    root = write_synthetic_ptbxl(tmp_path / "hr", n_records=6, seed=2, sampling_rate=500)
    low = load_ptbxl(root, 100, tmp_path / "cache", verbose=False)
    high = load_ptbxl(root, 500, tmp_path / "cache", verbose=False)
    assert high.signals.shape == (len(low), 12, 5000)
    # the 100 Hz file is the 5-sample mean of the 500 Hz signal; both are quantised to 1 uV
    downsampled = np.asarray(high.signals).reshape(len(low), 12, 1000, 5).mean(axis=3)
    assert np.abs(downsampled - np.asarray(low.signals)).max() <= 1.01e-3


# ---------------------------------------------------------------- format errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(PTBXLFormatError, match="nowhere.*does not exist"):
        load_ptbxl(tmp_path / "nowhere", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("name", ["ptbxl_database.csv", "scp_statements.csv"])
def test_missing_csv(tiny_copy: Path, tmp_path: Path, name: str) -> None:
    (tiny_copy / name).unlink()
    with pytest.raises(PTBXLFormatError, match=name):
        load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("column", ["ecg_id", "scp_codes", "strat_fold", "filename_lr"])
def test_missing_required_column(tiny_copy: Path, tmp_path: Path, column: str) -> None:
    table = pd.read_csv(tiny_copy / "ptbxl_database.csv").drop(columns=[column])
    table.to_csv(tiny_copy / "ptbxl_database.csv", index=False)
    with pytest.raises(PTBXLFormatError, match=f"ptbxl_database.csv lacks column.*'{column}'"):
        load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache")


def test_optional_columns_not_required(tiny_copy: Path, tmp_path: Path) -> None:
    table = pd.read_csv(tiny_copy / "ptbxl_database.csv")
    table = table[["ecg_id", "scp_codes", "strat_fold", "filename_lr"]]
    table.to_csv(tiny_copy / "ptbxl_database.csv", index=False)
    data = load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache", verbose=False)
    assert len(data) > 0
    assert (data.sites == -1).all() and (data.patient_ids == -1).all()


@pytest.mark.parametrize("rate", [0, 250, 1000])
def test_bad_sampling_rate(tiny_copy: Path, tmp_path: Path, rate: int) -> None:
    with pytest.raises(PTBXLFormatError, match=f"sampling_rate {rate}.*expected one of \\(100, 500\\)"):
        load_ptbxl(tiny_copy, rate, cache_dir=tmp_path / "cache")


def test_missing_wfdb_file_named(tiny_copy: Path, tmp_path: Path) -> None:
    (tiny_copy / "records100/00000/00005_lr.dat").unlink()
    with pytest.raises(PTBXLFormatError, match="00005_lr.dat missing"):
        load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache")
    data = load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache", skip_missing_records=True, verbose=False)
    assert 5 not in data.ecg_ids.tolist() and data.n_skipped_missing == 1


def _rewrite_record(root: Path, ecg_id: int, signal: np.ndarray, names: list[str]) -> None:
    wfdb.wrsamp(f"{ecg_id:05d}_lr", fs=100, units=["mV"] * len(names), sig_name=names, p_signal=signal,
                fmt=["16"] * len(names), adc_gain=[1000.0] * len(names), baseline=[0] * len(names),
                write_dir=str(root / "records100/00000"))


def test_wrong_lead_count_named(tiny_copy: Path, tmp_path: Path) -> None:
    _rewrite_record(tiny_copy, 4, np.zeros((1000, 11)), list(LEAD_NAMES[:11]))
    with pytest.raises(PTBXLFormatError, match="00004_lr: 11 leads, expected 12"):
        load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache")


def test_wrong_length_named(tiny_copy: Path, tmp_path: Path) -> None:
    _rewrite_record(tiny_copy, 4, np.zeros((900, 12)), list(LEAD_NAMES))
    with pytest.raises(PTBXLFormatError, match="00004_lr: 900 samples, expected 1000"):
        load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache")


def test_wrong_lead_names_named(tiny_copy: Path, tmp_path: Path) -> None:
    _rewrite_record(tiny_copy, 4, np.zeros((1000, 12)), [f"X{i}" for i in range(12)])
    with pytest.raises(PTBXLFormatError, match="00004_lr: leads .*X0"):
        load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("scp_codes", "__import__('os').getcwd()", "ecg_id 1: scp_codes .* is not a dict literal"),
        ("scp_codes", "['NORM']", "ecg_id 1: scp_codes .* is not a dict"),
        ("strat_fold", 11, "ecg_id 1 has strat_fold 11, expected 1..10"),
        ("strat_fold", "x", "strat_fold 'x' in row 2 is not an integer"),
    ],
)
def test_bad_cell_named(tiny_copy: Path, tmp_path: Path, column: str, value: object, message: str) -> None:
    table = pd.read_csv(tiny_copy / "ptbxl_database.csv").astype({column: object})
    table.loc[0, column] = value
    table.to_csv(tiny_copy / "ptbxl_database.csv", index=False)
    with pytest.raises(PTBXLFormatError, match=message):
        load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache")


def test_no_training_records(tiny_copy: Path, tmp_path: Path) -> None:
    table = pd.read_csv(tiny_copy / "ptbxl_database.csv")
    table["strat_fold"] = 9
    table.to_csv(tiny_copy / "ptbxl_database.csv", index=False)
    with pytest.raises(PTBXLFormatError, match="no training-fold records"):
        load_ptbxl(tiny_copy, cache_dir=tmp_path / "cache", verbose=False)


def test_empty_filename_hr_at_500hz(tiny_copy: Path, tmp_path: Path) -> None:
    # tiny_root was written at 100 Hz only, so filename_hr is empty
    with pytest.raises(PTBXLFormatError, match="empty file-name cell"):
        load_ptbxl(tiny_copy, 500, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- the real PTB-XL subset

# PROVENANCE.md: counts over 1273 records of which 14 have no superclass, i.e. over 1259 labelled records
PROVENANCE_COUNTS = {"NORM": 613, "MI": 258, "STTC": 337, "CD": 306, "HYP": 153}


@pytest.fixture(scope="module")
def real_100(tmp_path_factory: pytest.TempPathFactory):
    return load_ptbxl(REAL_PTBXL, 100, tmp_path_factory.mktemp("real-cache"), verbose=False)


@needs_real
def test_real_subset_100hz(real_100) -> None:
    labelled, dropped = expected_labels(REAL_PTBXL)
    assert real_100.n_rows == 1119
    assert len(real_100) == len(labelled) == 1119 - len(dropped)
    assert real_100.n_dropped_no_superclass == len(dropped)
    assert real_100.signals.shape == (len(labelled), 12, 1000)
    expected = np.stack([labelled[int(e)] for e in real_100.ecg_ids])
    np.testing.assert_array_equal(real_100.labels, expected)
    assert set(np.unique(real_100.folds).tolist()) <= set(range(1, 10))
    assert real_100.split_indices("test").size == 0
    assert real_100.standardised(real_100.split_indices("test")).shape == (0, 12, 1000)
    assert real_100.split_indices("train").size + real_100.split_indices("val").size == len(real_100)
    counts = real_100.class_counts()
    for name, reference in PROVENANCE_COUNTS.items():  # class shares close to the subset's documented shares
        assert abs(counts[name] / len(real_100) - reference / 1259) < 0.03, (name, counts[name])
    z = real_100.standardised(real_100.split_indices("train"))
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1.0, atol=1e-3)
    assert np.abs(np.asarray(real_100.signals)).max() < 30.0  # mV, plausible ECG range


@needs_real
def test_real_subset_500hz_missing_files(tmp_path: Path) -> None:
    labelled, _ = expected_labels(REAL_PTBXL)
    table = pd.read_csv(REAL_PTBXL / "ptbxl_database.csv").set_index("ecg_id")
    available = [e for e in labelled if (REAL_PTBXL / f"{table.loc[e, 'filename_hr']}.hea").is_file()]
    n_missing = len(labelled) - len(available)
    assert 0 < n_missing < len(labelled)  # the subset has records500 only for some ids
    first_missing = min(set(labelled) - set(available))
    message = rf"{first_missing:05d}_hr\.hea missing \({n_missing} of {len(labelled)}"
    with pytest.raises(PTBXLFormatError, match=message):
        load_ptbxl(REAL_PTBXL, 500, tmp_path / "cache")
    data = load_ptbxl(REAL_PTBXL, 500, tmp_path / "cache", skip_missing_records=True, verbose=False)
    assert data.signals.shape == (len(available), 12, 5000)
    assert data.n_skipped_missing == n_missing
    assert sorted(data.ecg_ids.tolist()) == sorted(available)
    assert data.ecg_ids.max() <= 500  # PROVENANCE.md: records500 only for ids up to 500
