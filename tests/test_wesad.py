"""WESAD reader: the schedule, the wrist files and their alignment, the pickle, subjects, errors, the generator."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_prep.format_error import DataFormatError
from data_prep.spec import SPLIT_CODES, ReadOptions
from data_prep.synth_wesad import SUBJECTS, synthetic_offset, write_synthetic_wesad
from data_prep.wesad import (CHANNELS, CLASSES, EDGE_MARGIN_S, E4Signal, _wrist_grid, load_wesad, read_pickle,
                             read_schedule)

REAL_WESAD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wesad"
needs_real = pytest.mark.skipif(not (REAL_WESAD / "S2" / "S2_quest.csv").is_file(),
                                reason="real WESAD files (../shared/data/wesad) are not present")
SHORT = ReadOptions(window_seconds=10, window_step_seconds=5, val_subjects=("S3",), test_subjects=("S4",))


@pytest.fixture(scope="module")
def wrist_root(tmp_path_factory) -> Path:
    return write_synthetic_wesad(tmp_path_factory.mktemp("wesad") / "wrist", n_windows=300, seed=3)


@pytest.fixture(scope="module")
def pickle_root(tmp_path_factory) -> Path:
    return write_synthetic_wesad(tmp_path_factory.mktemp("wesad") / "pkl", 0, seed=1, form="pickle",
                                 subjects=("S2", "S3", "S4"), scale=0.05)


def quest(path: Path, rows: list[str], crlf: bool = False) -> Path:
    path.write_bytes(("\r\n" if crlf else "\n").join(rows).encode() + b"\n")
    return path


SCHEDULE_ROWS = ["# Subj;S9;;;;;", "# ORDER;Base;TSST;Medi 1;Fun;Medi 2;sRead;;",
                 "# START;1.48;31.45;59.02;68.11;78.45;46.49;;", "# END;21.48;42.5;66;74.43;85.4;48.11;;", ";;;;;;",
                 "# PANAS;1;2;3;;;"]


def test_schedule_reads_minutes_dot_seconds_from_either_line_ending(tmp_path: Path) -> None:
    for crlf in (False, True):
        schedule = read_schedule(quest(tmp_path / "q.csv", SCHEDULE_ROWS, crlf))
        assert schedule["Base"] == (1 * 60 + 48, 21 * 60 + 48)
        assert schedule["TSST"] == (31 * 60 + 45, 42 * 60 + 50)  # '42.5' is 42.50 with its trailing zero lost
        assert schedule["Medi 1"] == (59 * 60 + 2, 66 * 60)
        assert schedule["Fun"][1] == 74 * 60 + 43


@pytest.mark.parametrize("edit, message", [
    (lambda rows: [r for r in rows if "ORDER" not in r], r"no # ORDER row; expected the protocol schedule rows"),
    (lambda rows: [r.replace("31.45", "31.75") for r in rows], r"START time '31.75' is not minutes.seconds"),
    (lambda rows: [r.replace("Fun;", "Funny;") for r in rows], r"ORDER lacks \['Fun'\]"),
    (lambda rows: [r.replace("85.4;", "") for r in rows], r"ORDER names 6 conditions but START has 6 and END 5 times"),
])
def test_bad_schedule_is_named(tmp_path: Path, edit, message: str) -> None:
    path = quest(tmp_path / "S9_quest.csv", edit(SCHEDULE_ROWS))
    with pytest.raises(DataFormatError, match=str(path).replace(".", r"\.") + ": " + message):
        read_schedule(path)


def test_signals_are_interpolated_onto_one_grid_over_their_common_span() -> None:
    def ramp(rate: float, seconds: float, start: float) -> E4Signal:
        return E4Signal(start + np.arange(int(rate * seconds))[:, None] / rate, start, rate)

    signals = {"ACC": E4Signal(np.tile(ramp(32, 10, 100.0).values, (1, 3)), 100.0, 32.0), "BVP": ramp(64, 10, 100.5),
               "EDA": ramp(4, 12, 99.0), "TEMP": ramp(4, 10, 100.0)}
    grid, start = _wrist_grid(signals, 32)
    assert start == 100.5 and grid.shape == (len(CHANNELS), 297)  # 100.5 .. 109.75, the last TEMP sample
    expected = 100.5 + np.arange(grid.shape[1]) / 32  # every channel is a ramp of Unix time: equal to the grid's time
    np.testing.assert_allclose(grid, np.tile(expected, (len(CHANNELS), 1)), atol=1e-4)


def test_alignment_finds_the_generators_offset_and_keeps_the_margin(wrist_root: Path) -> None:
    data = load_wesad(wrist_root, ReadOptions(), verbose=False)
    for subject in SUBJECTS:
        assert abs(data.offsets[subject] - synthetic_offset(subject, 3)) <= 2, subject
    # independently: the first baseline window starts EDGE_MARGIN_S after Base's start on the E4 clock
    schedule = read_schedule(wrist_root / "S7" / "S7_quest.csv")
    acc_start = float((wrist_root / "S7" / "S7_E4_Data" / "ACC.csv").read_text().split(",")[0])
    acc = np.loadtxt(wrist_root / "S7" / "S7_E4_Data" / "ACC.csv", delimiter=",", skiprows=2)
    first = int(np.ceil((schedule["Base"][0] + data.offsets["S7"] + EDGE_MARGIN_S) * 32))
    mine = data.signals[(data.groups == 7) & (data.labels[:, CLASSES.index("baseline")] == 1)][0]
    np.testing.assert_array_equal(mine[:3], acc[first:first + mine.shape[1]].T.astype(np.float32))
    assert acc_start > 0


def test_subjects_choose_the_splits_and_train_alone_sets_the_scale(wrist_root: Path) -> None:
    data = load_wesad(wrist_root, ReadOptions(val_subjects=("S6",), test_subjects=("S13", "S14")), verbose=False)
    assert set(data.groups[data.split == SPLIT_CODES["val"]]) == {6}
    assert set(data.groups[data.split == SPLIT_CODES["test"]]) == {13, 14}
    train = data.signals[data.split_indices("train")]
    np.testing.assert_allclose(data.channel_mean, train.mean(axis=(0, 2)), rtol=1e-4, atol=1e-4)
    assert set(np.argmax(data.labels, axis=1)) == {0, 1, 2}
    # each subject is scaled by its own windows: zero mean and unit spread per channel, whatever its split
    for subject in (2, 6, 13):
        own = data.standardised(np.flatnonzero(data.groups == subject))
        np.testing.assert_allclose(own.mean(axis=(0, 2)), 0.0, atol=1e-3)
        np.testing.assert_allclose(own.std(axis=(0, 2)), 1.0, atol=1e-3)
    with pytest.raises(DataFormatError, match=r"key 'test-subjects' names subject\(s\) \['S16'\] that .* does not "
                                              r"hold; expected some of \['S2', 'S3'"):
        load_wesad(wrist_root, ReadOptions(test_subjects=("S16",)), verbose=False)
    with pytest.raises(DataFormatError, match=r"subjects \['S6'\] are in both val-subjects and test-subjects"):
        load_wesad(wrist_root, ReadOptions(val_subjects=("S6",), test_subjects=("S6",)), verbose=False)
    with pytest.raises(DataFormatError, match="key 'sampling-rate' has value 100; expected one of 32, 64"):
        load_wesad(wrist_root, ReadOptions(sampling_rate=100), verbose=False)


def test_zip_archive_reads_as_the_unzipped_folder(wrist_root: Path, tmp_path: Path) -> None:
    for subject in ("S2", "S3", "S4"):
        shutil.copytree(wrist_root / subject, tmp_path / subject)
    folder = tmp_path / "S3" / "S3_E4_Data"
    with zipfile.ZipFile(tmp_path / "S3" / "S3_E4_Data.zip", "w") as archive:
        for file in folder.iterdir():
            archive.write(file, file.name)
    unzipped = load_wesad(tmp_path, ReadOptions(val_subjects=("S2",), test_subjects=("S4",)), verbose=False)
    shutil.rmtree(folder)
    zipped = load_wesad(tmp_path, ReadOptions(val_subjects=("S2",), test_subjects=("S4",)), verbose=False)
    np.testing.assert_array_equal(unzipped.signals, zipped.signals)
    (tmp_path / "S3" / "S3_E4_Data.zip").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="S3_E4_Data.zip: not a zip archive"):
        load_wesad(tmp_path, ReadOptions(val_subjects=("S2",), test_subjects=("S4",)), verbose=False)


def test_missing_or_malformed_wrist_file_is_named(wrist_root: Path, tmp_path: Path) -> None:
    for subject in ("S2", "S3", "S4"):
        shutil.copytree(wrist_root / subject, tmp_path / subject)
    options = ReadOptions(val_subjects=("S2",), test_subjects=("S4",))
    bvp = tmp_path / "S3" / "S3_E4_Data" / "BVP.csv"
    bvp.write_text(bvp.read_text().replace("\n", "\n1.0,2.0\n", 5)[:5000])
    with pytest.raises(DataFormatError, match="BVP.csv: .*expected 1 comma-separated number"):
        load_wesad(tmp_path, options, verbose=False)
    bvp.unlink()
    with pytest.raises(DataFormatError, match=r"S3_E4_Data: no BVP.csv; expected ACC.csv, BVP.csv, EDA.csv"):
        load_wesad(tmp_path, options, verbose=False)


def test_pickle_route_keeps_the_published_labels_and_signals(pickle_root: Path) -> None:
    data = load_wesad(pickle_root, SHORT, verbose=False)
    with (pickle_root / "S2" / "S2.pkl").open("rb") as handle:
        published = pickle.load(handle, encoding="latin1")  # our own fixture: a trusted file
    assert set(published) == {"signal", "label", "subject"} and published["label"].dtype == np.int32
    label, acc = published["label"], published["signal"]["wrist"]["ACC"]
    windows = data.signals[data.groups == 2]
    classes = np.argmax(data.labels[data.groups == 2], axis=1)
    assert len(windows) > 10
    for window, cls in zip(windows, classes):
        # the window's ACC is a run of the pickle's 32 Hz ACC; every 700 Hz label under it is its class
        starts = [int(i) for i in np.flatnonzero((acc[:, :3] == window[:3, 0]).all(axis=1))
                  if np.array_equal(acc[i:i + 320].T.astype(np.float32), window[:3])]
        assert len(starts) == 1
        start = starts[0]
        span = label[start * 700 // 32:(start + 320) * 700 // 32]
        assert set(span) == {(1, 2, 3)[cls]}


def test_pickle_without_signal_or_with_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "S2"
    folder.mkdir()
    path = folder / "S2.pkl"
    path.write_bytes(pickle.dumps({"label": np.zeros(3, np.int32), "subject": "S2"}, protocol=2))
    with pytest.raises(DataFormatError, match=r"S2.pkl: holds \['label', 'subject'\]; expected a dict with keys "
                                              r"'signal', 'label' and 'subject'"):
        read_pickle(path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path.write_bytes(pickle.dumps({"signal": Payload()}, protocol=2))
    with pytest.raises(DataFormatError, match="cannot be read as the WESAD pickle .*is not a numpy array part"):
        read_pickle(path)
    assert not marker.exists()


@needs_real
def test_real_wrist_files() -> None:
    data = load_wesad(REAL_WESAD, ReadOptions(), verbose=False)
    assert data.subjects == ("S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11", "S13", "S14")
    assert data.signals.shape[1:] == (6, 1920) and len(data) == 1403
    assert dict(zip(CLASSES, data.labels.sum(axis=0).astype(int))) == {"baseline": 820, "stress": 405,
                                                                       "amusement": 178}
    # the E4 ran 15-25 min before the protocol clock; the meditations alone decide for all but S4
    assert all(900 <= v <= 1500 for v in data.offsets.values())
    # an independent check of the alignment: skin conductance, never used by it, is higher under stress than at
    # baseline for almost every subject
    eda = CHANNELS.index("eda")
    higher = [np.median(data.signals[(data.groups == g) & (data.labels[:, 1] == 1), eda])
              > np.median(data.signals[(data.groups == g) & (data.labels[:, 0] == 1), eda]) for g in set(data.groups)]
    assert sum(higher) >= 11
