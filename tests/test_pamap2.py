"""PAMAP2 reader on hand-made Protocol files: gaps, windows, subjects and format errors, and the generator."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from data_prep.format_error import DataFormatError
from data_prep.pamap2 import ACTIVITIES, CHANNELS, COLUMNS, load_pamap2, read_subject
from data_prep.spec import ReadOptions
from data_prep.synth_pamap2 import write_synthetic_pamap2

SMALL = ReadOptions(window_seconds=2.0, window_step_seconds=1.0, val_subjects=("102",), test_subjects=("103",))


def protocol_rows(segments: list[tuple[int, int]], start: float = 0.0) -> np.ndarray:
    """(activity, ticks) runs; every IMU column holds the tick index, heart rate is set every 10th tick."""
    activity = np.concatenate([np.full(n, a) for a, n in segments])
    n = activity.size
    rows = np.tile(np.arange(n, dtype=np.float64)[:, None], (1, len(COLUMNS)))
    rows[:, 0] = start + np.arange(n) / 100
    rows[:, 1] = activity
    rows[:, 2] = np.nan
    rows[::10, 2] = 60 + np.arange(n)[::10] // 10
    return rows


def write(folder: Path, subject: str, rows: np.ndarray) -> Path:
    path = folder / "Protocol" / f"subject{subject}.dat"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(" ".join("NaN" if np.isnan(v) else f"{v:.6g}" for v in row) for row in rows) + "\n")
    return path


@pytest.fixture()
def three_subjects(tmp_path: Path) -> Path:
    for subject in ("101", "102", "103"):
        write(tmp_path, subject, protocol_rows([(0, 50), (4, 450), (0, 30), (1, 300)]))
    return tmp_path


def test_windows_stay_in_one_activity_and_gaps_are_filled_as_documented(tmp_path: Path) -> None:
    rows = protocol_rows([(0, 50), (4, 450), (0, 30), (1, 300)])
    hand_x = COLUMNS.index("hand_acc16_x")
    rows[120:123, hand_x] = np.nan  # a 3-tick loss: interpolated
    rows[400:420, hand_x] = np.nan  # a 20-tick loss: windows over it are dropped
    write(tmp_path, "101", rows)
    for subject in ("102", "103"):
        write(tmp_path, subject, protocol_rows([(4, 250), (1, 250)]))
    data = load_pamap2(tmp_path, SMALL, verbose=False)
    mine = data.signals[data.groups == 101]
    # walking ticks 50..499 -> windows of 200 every 100 starting at 50, 150, 250 (350 would end at 550);
    # those starting at 250 cover 400-419 and are dropped; lying ticks 530..829 -> starts 530, 630
    assert data.windows_dropped_nan == 1
    assert [ACTIVITIES[list(ACTIVITIES)[i]] for i in data.labels[data.groups == 101].argmax(axis=1)] == \
        ["walking", "walking", "lying", "lying"]
    starts = [50, 150, 530, 630]
    x = CHANNELS.index("hand_acc16_x")
    for window, start in zip(mine, starts):
        np.testing.assert_allclose(window[x], np.arange(start, start + 200))  # tick index, gaps interpolated
        hr = window[CHANNELS.index("heart_rate")]
        ticks = np.arange(start, start + 200)
        segment_start = 50 if start < 500 else 530
        last_reading = np.maximum((ticks // 10) * 10, ((segment_start + 9) // 10) * 10)  # held, first back-filled
        np.testing.assert_allclose(hr, 60 + last_reading // 10)
    assert data.signals.shape[1:] == (31, 200)


def test_subjects_choose_the_splits_and_unknown_ones_are_named(three_subjects: Path) -> None:
    data = load_pamap2(three_subjects, SMALL, verbose=False)
    assert set(data.groups[data.split_indices("train")]) == {101}
    assert set(data.groups[data.split_indices("val")]) == {102}
    assert set(data.groups[data.split_indices("test")]) == {103}
    train = data.standardised(data.split_indices("train"))
    assert np.allclose(train.mean(axis=(0, 2)), 0, atol=1e-4)
    with pytest.raises(DataFormatError, match=re.escape("key 'test-subjects' names subject(s) ['107'] that")):
        load_pamap2(three_subjects, ReadOptions(val_subjects=("102",), test_subjects=("107",)), verbose=False)
    with pytest.raises(DataFormatError, match=re.escape("subjects ['102'] are in both val-subjects and test-subjects")):
        load_pamap2(three_subjects, ReadOptions(val_subjects=("102",), test_subjects=("102",)), verbose=False)


@pytest.mark.parametrize("edit,message", [
    (lambda rows: rows.__setitem__((10, 1), 8), "activity_id 8.0 in row 11; expected 0 (transient) or a protocol"),
    (lambda rows: rows.__setitem__((10, 0), 0.0), "timestamp does not increase at row 11"),
])
def test_bad_rows_are_named(tmp_path: Path, edit, message: str) -> None:
    rows = protocol_rows([(4, 300)])
    edit(rows)
    path = write(tmp_path, "101", rows)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: {message}")):
        read_subject(path)


def test_non_number_and_short_row_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "101", protocol_rows([(4, 300)]))
    lines = path.read_text().splitlines()
    cells = lines[4].split(" ")
    cells[5] = "abc"
    lines[4] = " ".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: hand_acc16_y 'abc' in row 5 is not a number")):
        read_subject(path)
    lines[4] = " ".join(cells[:5] + ["1"] + cells[6:-1])  # numbers again, one column short
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: row 5 has 53 columns; expected 54")):
        read_subject(path)
    lines[4] = " ".join(cells[:5] + ["1"] + cells[6:] + ["9"])  # one column too many
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=f"{re.escape(str(path))}: .*line 5, saw 55; expected 54 space-sep"):
        read_subject(path)


def test_generator_writes_the_protocol_format_with_every_activity(tmp_path: Path) -> None:
    root = write_synthetic_pamap2(tmp_path / "pamap2", n_windows=120, seed=0)
    files = sorted((root / "Protocol").glob("subject*.dat"))
    assert [f.stem for f in files] == [f"subject{s}" for s in range(101, 110)]
    first = files[0].read_text().splitlines()
    assert all(len(line.split(" ")) == 54 for line in first[:50]) and any("NaN" in line for line in first[:50])
    data = load_pamap2(root, ReadOptions(), verbose=False)
    assert data.signals.shape[1:] == (31, 512)
    for split in ("train", "val", "test"):
        assert data.labels[data.split_indices(split)].sum(axis=0).min() >= 1  # every activity in every split


def test_cli_summarises_and_names_an_unknown_subject(tmp_path: Path, capsys) -> None:
    from data_prep.__main__ import main

    for subject in ("101", "102", "103"):  # default windows (512 ticks every 256): 3 walking + 1 lying each
        write(tmp_path, subject, protocol_rows([(4, 1100), (0, 20), (1, 700)]))
    assert main(["pamap2", "--src", str(tmp_path), "--val-subjects", "102", "--test-subjects", "103"]) == 0
    assert "splits:        train 4, val 4, test 4" in capsys.readouterr().out
    assert main(["pamap2", "--src", str(tmp_path), "--val-subjects", "102", "--test-subjects", "110"]) == 2
    assert "names subject(s) ['110']" in capsys.readouterr().err.splitlines()[-1]
