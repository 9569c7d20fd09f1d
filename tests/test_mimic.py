"""MIMIC-III waveform reader: PhysioNet rdsamp references, skipped segments, labels, splits, windows, generator."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from data_prep.format_error import DataFormatError
from data_prep.mimic import (
    CLASSES,
    MAP_THRESHOLD_MMHG,
    SPLIT_FRACTIONS,
    find_records,
    load_mimic,
    read_record_header,
    read_segment,
)
from data_prep.registry import dataset_spec
from data_prep.spec import SPLIT_CODES, ReadOptions
from data_prep.synth_mimic import write_synthetic_mimic

REAL_MIMIC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mimic-waveform"
needs_real = pytest.mark.skipif(not (REAL_MIMIC / "p000020").is_dir(),
                                reason=f"real MIMIC-III samples not found at {REAL_MIMIC}")
RATE = ReadOptions(sampling_rate=125)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return write_synthetic_mimic(tmp_path_factory.mktemp("mimic"), n_windows=300, seed=0)


@pytest.fixture()
def copy(generated: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(generated, tmp_path / "copy"))


@needs_real
def test_reads_reproduce_physionet_rdsamp() -> None:
    # record-1d is `rdsamp -r 3000003_0003 -f 1 -t 8 -s 1 -p`: channel V (index 1), samples 125..999, mV, 8 decimals
    record = read_record_header(REAL_MIMIC / "3000003_0003")
    assert [s.path.name for s in record.segments] == ["3000003_0003"] and record.channels == ("II", "V")
    values = read_segment(record.segments[0], ("V",))[125:1000, 0]
    np.testing.assert_array_equal(np.round(values, 8), np.loadtxt(REAL_MIMIC / "reference-rdsamp" / "record-1d"))
    # record-multi-variable-d is p000878 samples 3550..7499 (3950 rows), digital, of layout channels 0 and 1: PLETH
    # and II. Samples 3550-3749 lie in the leading gap; segment 0001 (3750-5749) has PLETH only; 0002 (5750-7499)
    # has II and PLETH in that order. rdsamp prints -128, format 80's invalid value, where a channel is absent.
    record = read_record_header(REAL_MIMIC / "p000878" / "p000878-2137-10-26-16-57")
    assert record.channels == ("PLETH", "II", "V", "ABP") and [s.start for s in record.segments] == [3750, 5750]
    wanted, first, last = ("PLETH", "II"), 3550, 7500
    assembled = np.full((last - first, 2), -128, dtype=np.int64)
    for segment in record.segments:
        present = [c for c in wanted if c in segment.channels]
        digital = read_segment(segment, tuple(present), physical=False)
        for c, name in enumerate(present):
            lo, hi = max(first, segment.start), min(last, segment.start + segment.length)
            assembled[lo - first:hi - first, wanted.index(name)] = digital[lo - segment.start:hi - segment.start, c]
    reference = np.loadtxt(REAL_MIMIC / "reference-rdsamp" / "record-multi-variable-d", dtype=np.int64)
    np.testing.assert_array_equal(assembled, reference)


@needs_real
def test_real_folder_skips_what_cannot_be_read_or_labelled(capsys) -> None:
    assert set(find_records(REAL_MIMIC)) == {"3000003_0003", "p000020-2183-04-28-17-47", "p000878-2137-10-26-16-57"}
    data = load_mimic(REAL_MIMIC, RATE, verbose=False)
    err = capsys.readouterr().err
    assert re.search(r"p000020-2183-04-28-17-47: segment\(s\) 3544749_0005 \(3544749_0005.dat absent\), "
                     r"3544749_0008 \(3544749_0008.dat absent\) skipped", err)
    assert "3000003_0003 skipped: no numerics record 3000003_0003n.hea" in err
    assert "p000878-2137-10-26-16-57 skipped: no numerics record" in err
    # segment 0001 (3811 samples) gives 5 windows of 1250 every 625, 0007 (30000) 47; 0006 lacks ABP: 23
    assert data.dropped == {"channel missing": 23, "invalid sample": 0, "no ABPMean in horizon": 13}
    assert data.windows_per_record == {"p000020-2183-04-28-17-47": 39}
    assert data.labels[:, 0].all()  # ABPMean stays >= 65 mmHg in every labelled horizon of these samples
    first = data.segment_of == data.segments.index(str(REAL_MIMIC / "p000020" / "3544749_0007"))
    raw = wfdb.rdrecord(str(REAL_MIMIC / "p000020" / "3544749_0007"), channel_names=["II", "ABP"]).p_signal
    np.testing.assert_allclose(data.signals[first][0], raw[:1250].T.astype(np.float32))
    assert data.window_start[first][0] == 93 + 3811 + 124 + 8 + 380 + 7098177 + 15000


def test_spec_states_the_task() -> None:
    spec = dataset_spec("mimic")
    assert spec.classes == CLASSES == ("no_hypotension", "hypotension") and spec.group == "record"
    assert spec.channels == ("II", "ABP") and spec.window_samples(125) == 1250 and spec.sampling_rates[0] == 125


def test_labels_equal_an_independent_reading_of_the_numerics(generated: Path) -> None:
    data = load_mimic(generated, RATE, verbose=False)
    for group, name in enumerate(data.records):
        path = find_records(generated)[name]
        numerics = wfdb.rdrecord(str(path) + "n", channel_names=["ABPMean"]).p_signal[:, 0]
        lines = [(path.parent / f"{path.name}{suffix}.hea").read_text().split()[4] for suffix in ("", "n")]
        assert lines[0] == lines[1]  # the generator gives numerics and waveforms one start, as MIMIC-III does
        for i in np.flatnonzero(data.groups == group):
            t = data.window_end_seconds[i]
            horizon = [v for k, v in enumerate(numerics) if t < 60 * k <= t + 600 and v > 0]
            assert horizon and data.labels[i, 1] == float(min(horizon) < MAP_THRESHOLD_MMHG)
    assert data.labels.sum(axis=0).min() > 50  # both classes


def test_windows_never_cross_segments_and_hold_the_segment_samples(generated: Path) -> None:
    data = load_mimic(generated, RATE, verbose=False)
    headers = {str(p): read_record_header(p) for p in find_records(generated).values()}
    segments = {str(s.path): s for record in headers.values() for s in record.segments}
    for index in np.random.default_rng(0).choice(len(data), 40, replace=False):
        segment = segments[data.segments[data.segment_of[index]]]
        offset = data.window_start[index] - segment.start
        assert 0 <= offset and offset + 1250 <= segment.length
        np.testing.assert_allclose(data.signals[index], read_segment(segment, ("II", "ABP"))[offset:offset + 1250].T,
                                   rtol=1e-6)
        assert data.window_end_seconds[index] == (data.window_start[index] + 1250) / 125


def test_generator_round_trip_and_train_only_statistics(generated: Path, capsys) -> None:
    data = load_mimic(generated, RATE, verbose=False)
    assert "record " in capsys.readouterr().err and "3900002_0002 (3900002_0002.dat absent) skipped" in data.skipped[0]
    assert data.signals.shape[1:] == (2, 1250) and len(data.records) == 9
    assert all(n > 0 for n in data.dropped.values())  # ABP-less segments, a flush, unmeasured ABPMean
    train = data.signals[data.split_indices("train")].astype(np.float64)
    np.testing.assert_allclose(data.channel_mean, train.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(data.channel_std, train.std(axis=(0, 2)), rtol=1e-5)
    assert abs(data.signals[:, 1].mean() - data.channel_mean[1]) > 1e-3  # val/test windows would change it
    for group in np.unique(data.groups):  # chronological: train, then val, then test, 70 / 15 / 15 %
        codes = data.split[data.groups == group]
        assert (np.diff(codes) >= 0).all() and (codes == 0).sum() == round(SPLIT_FRACTIONS["train"] * codes.size)
    resampled = load_mimic(generated, ReadOptions(sampling_rate=100), verbose=False)
    assert resampled.signals.shape == (len(data), 2, 1000)
    np.testing.assert_allclose(resampled.signals[:, 1].mean(axis=1), data.signals[:, 1].mean(axis=1), atol=1.0)


def test_split_by_patient_and_unknown_ids_are_named(generated: Path) -> None:
    data = load_mimic(generated, ReadOptions(sampling_rate=125, val_subjects=("p900002",),
                                             test_subjects=("p900008",)), verbose=False)
    patients = np.array([data.records[g].split("-")[0] for g in data.groups])
    assert set(patients[data.split == SPLIT_CODES["val"]]) == {"p900002"}
    assert set(patients[data.split == SPLIT_CODES["test"]]) == {"p900008"}  # both of its records
    assert len({data.records[g] for g in data.groups[data.split == SPLIT_CODES["test"]]}) == 2
    known = [f"p9000{i:02d}" for i in range(1, 9)]
    with pytest.raises(DataFormatError, match=re.escape(f"key 'test-subjects' names patient(s) ['p000020'] that "
                                                        f"{generated} does not hold; expected some of {known}")):
        load_mimic(generated, ReadOptions(val_subjects=("p900002",), test_subjects=("p000020",)), verbose=False)
    with pytest.raises(DataFormatError, match="key 'val-subjects' names patients but 'test-subjects' is empty"):
        load_mimic(generated, ReadOptions(val_subjects=("p900002",)), verbose=False)


def test_record_without_segments_truncated_file_and_missing_numerics_are_named(copy: Path) -> None:
    folder = copy / "p900001"
    for dat in folder.glob("3900000_000*.dat"):
        dat.unlink()
    record = next(folder.glob("p900001-*[0-9].hea")).with_suffix("")
    with pytest.raises(DataFormatError, match=re.escape(f"record {record}: none of its listed segments is present "
                                                        "(3900000_0001 (3900000_0001.dat absent)")):
        load_mimic(copy, RATE, verbose=False)
    shutil.rmtree(folder)
    dat = copy / "p900002" / "3900001_0003.dat"
    intact = dat.read_bytes()
    dat.write_bytes(intact[:-10])
    with pytest.raises(DataFormatError, match=re.escape(f"{dat} is truncated: {len(intact) - 10} bytes, expected "
                                                        f"{len(intact)} (")):
        load_mimic(copy, RATE, verbose=False)
    dat.write_bytes(intact)
    for numerics in copy.rglob("*n.hea"):
        numerics.unlink()
    with pytest.raises(DataFormatError, match=re.escape(f"{copy}: no waveform record has a numerics record with "
                                                        "ABPMean; expected <record>n.hea beside the records")):
        load_mimic(copy, RATE, verbose=False)


def test_a_linear_model_on_the_abp_level_beats_chance(generated: Path) -> None:
    data = load_mimic(write_synthetic_mimic(generated.parent / "larger", n_windows=1000, seed=0), RATE,
                      verbose=False)
    level = data.signals[:, 1].mean(axis=1).astype(np.float64)  # mean arterial pressure of the window
    y = data.labels[:, 1]
    train, held_out = data.split_indices("train"), np.r_[data.split_indices("val"), data.split_indices("test")]
    x = np.c_[(level - level[train].mean()) / level[train].std(), np.ones(len(y))]
    w = np.zeros(2)
    for _ in range(2000):  # logistic regression by gradient descent
        w -= 0.5 * x[train].T @ (1 / (1 + np.exp(-x[train] @ w)) - y[train]) / len(train)
    predicted = x[held_out] @ w > 0
    truth = y[held_out] == 1
    balanced = 0.5 * (predicted[truth].mean() + (~predicted[~truth]).mean())
    assert 0.7 < balanced < 0.98  # learnable, not trivial


def test_cli_summarises_a_generated_set(tmp_path: Path, capsys) -> None:
    from data_prep.__main__ import main

    assert main(["synth-mimic", "--out", str(tmp_path / "s"), "--windows", "200"]) == 0
    out = capsys.readouterr().out
    assert "classes:       no_hypotension" in out and "splits:        train" in out
    assert main(["mimic", "--src", str(tmp_path / "s"), "--val-subjects", "p900001", "--test-subjects", "p1"]) == 2
    assert "names patient(s) ['p1']" in capsys.readouterr().err.splitlines()[-1]
