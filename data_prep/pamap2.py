"""PAMAP2 physical-activity reader, from the published ``Protocol/subject1XX.dat`` files.

Source: PAMAP2 Physical Activity Monitoring (Reiss and Stricker, ISWC 2012; UCI Machine Learning
Repository). Each ``Protocol/subject1XX.dat`` is space-separated text, one row per 100 Hz tick,
54 columns: timestamp (s), activity id, heart rate (bpm), then three IMUs (hand, chest, ankle) of
17 columns each: temperature (C), 3-D acceleration at +-16 g, 3-D acceleration at +-6 g, 3-D
gyroscope (rad/s), 3-D magnetometer (uT), 4-D orientation. Missing values are ``NaN``.

Following the data set's readme:
- activity 0 (transient) is dropped; the 12 protocol activities (:data:`ACTIVITIES`) are the
  classes (multi-class); any other id in a Protocol file is an error naming the file and row;
- the orientation columns ("invalid in this data collection") and the +-6 g accelerometer
  ("saturated for some activities") are dropped: 31 channels (:data:`CHANNELS`);
- heart rate is sampled at about 9 Hz against 100 Hz for the IMUs: within a segment of one
  activity the last reading is held (the first ones are filled backwards);
- dropped IMU samples (``NaN``, wireless loss) are linearly interpolated within a segment (pandas
  ``interpolate(limit=MAX_GAP)``: the first :data:`MAX_GAP` ticks of a longer loss), and a loss of
  at most MAX_GAP ticks at a segment's edge holds the nearest reading; windows that still hold a
  ``NaN`` are dropped and counted.

Windows lie within one activity segment (never across a change), ``window-seconds`` long with a
``window-step-seconds`` step (defaults 5.12 s and 2.56 s: 512 samples, half overlap). The
natural group is the subject; train / validation / test are chosen by subject
(``val-subjects``, ``test-subjects``: ids as in the file names, e.g. ``105``; defaults below).
Per-channel standardisation uses the training subjects' windows only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.format_error import DataFormatError
from data_prep.spec import SPLIT_CODES, DatasetSpec, ReadOptions
from data_prep.windows import WindowSet, check_held_out, train_scale

IMUS = ("hand", "chest", "ankle")
IMU_COLUMNS = ("temperature", "acc16_x", "acc16_y", "acc16_z", "acc6_x", "acc6_y", "acc6_z", "gyro_x", "gyro_y",
               "gyro_z", "mag_x", "mag_y", "mag_z", "orientation_1", "orientation_2", "orientation_3",
               "orientation_4")
COLUMNS: tuple[str, ...] = ("timestamp", "activity_id", "heart_rate",
                            *(f"{imu}_{c}" for imu in IMUS for c in IMU_COLUMNS))
KEPT_IMU = ("temperature", "acc16_x", "acc16_y", "acc16_z", "gyro_x", "gyro_y", "gyro_z", "mag_x", "mag_y", "mag_z")
CHANNELS: tuple[str, ...] = ("heart_rate", *(f"{imu}_{c}" for imu in IMUS for c in KEPT_IMU))
ACTIVITIES: dict[int, str] = {1: "lying", 2: "sitting", 3: "standing", 4: "walking", 5: "running", 6: "cycling",
                              7: "nordic_walking", 12: "ascending_stairs", 13: "descending_stairs",
                              16: "vacuum_cleaning", 17: "ironing", 24: "rope_jumping"}
TRANSIENT = 0
RATE = 100
MAX_GAP = 10
DEFAULT_WINDOW_SECONDS, DEFAULT_STEP_SECONDS = 5.12, 2.56
DEFAULT_VAL_SUBJECTS, DEFAULT_TEST_SUBJECTS = ("105",), ("106",)

PAMAP2_SPEC = DatasetSpec(
    name="pamap2", title="PAMAP2 physical activity monitoring (UCI)", channels=CHANNELS, sampling_rates=(RATE,),
    window_seconds=DEFAULT_WINDOW_SECONDS, classes=tuple(ACTIVITIES.values()), task="multiclass", group="subject",
    splits={"train": "the other subjects", "val": f"val-subjects, default {', '.join(DEFAULT_VAL_SUBJECTS)}",
            "test": f"test-subjects, default {', '.join(DEFAULT_TEST_SUBJECTS)}"},
    default_subjects={"val": DEFAULT_VAL_SUBJECTS, "test": DEFAULT_TEST_SUBJECTS},
    source="UCI Machine Learning Repository, PAMAP2 Physical Activity Monitoring",
    layout="Protocol/subject101.dat ... subject109.dat (54 space-separated columns at 100 Hz)",
)


def subject_files(root: Path) -> dict[str, Path]:
    """Subject id ('101') -> its Protocol file."""
    return {p.stem.removeprefix("subject"): p for p in sorted((root / "Protocol").glob("subject*.dat"))}


def check_pamap2_folder(path: str, sampling_rate: int = RATE) -> None:
    """Fail early, phrased as what was expected, when ``path`` has no ``Protocol/subject*.dat``."""
    root = Path(path)
    if not root.is_absolute():
        raise ValueError(f"an absolute path to a PAMAP2 folder, got relative path '{path}'")
    if not root.is_dir():
        raise ValueError(f"an existing PAMAP2 folder, but '{path}' does not exist")
    if not subject_files(root):
        raise ValueError(f"a PAMAP2 folder holding Protocol/subject1XX.dat files; '{path}' has none")


def read_subject(path: Path) -> pd.DataFrame:
    """One Protocol file with its 54 columns, numbers only; the first bad row is named."""
    try:
        numbers = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.float64, na_values=["NaN"])
    except (ValueError, pd.errors.ParserError):  # read again as text only to name the bad cell
        numbers = None
    if numbers is None or numbers.shape[1] != len(COLUMNS):
        try:
            table = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, na_values=["NaN"]) \
                if numbers is None else numbers
        except pd.errors.ParserError as err:  # rows of different lengths: pandas names the line
            reason = " ".join(str(err).split())
            raise DataFormatError(f"{path}: {reason}; expected {len(COLUMNS)} space-separated columns per row") \
                from None
        if table.shape[1] != len(COLUMNS):
            raise DataFormatError(f"{path}: {table.shape[1]} columns, expected {len(COLUMNS)} (PAMAP2 Protocol format)")
        coerced = table.apply(pd.to_numeric, errors="coerce")
        row, col = map(int, np.argwhere((coerced.isna() & table.notna()).to_numpy())[0])
        raise DataFormatError(f"{path}: {COLUMNS[col]} {table.iat[row, col]!r} in row {row + 1} is not a number")
    numbers.columns = list(COLUMNS)
    table = numbers
    # pandas pads a short row with NaN; a row whose last IMU is only partly NaN is checked for its field count
    suspect = np.flatnonzero(numbers[COLUMNS[-1]].isna().to_numpy() & numbers["ankle_temperature"].notna().to_numpy())
    if suspect.size:
        lines = path.read_text().splitlines()
        for row in suspect:
            fields = len(lines[row].split())
            if fields != len(COLUMNS):
                raise DataFormatError(f"{path}: row {row + 1} has {fields} columns; expected {len(COLUMNS)} "
                                      "space-separated columns per row")
    for column in ("timestamp", "activity_id"):
        if numbers[column].isna().any():
            row = int(np.flatnonzero(numbers[column].isna().to_numpy())[0])
            raise DataFormatError(f"{path}: {column} missing in row {row + 1}")
    if (np.diff(numbers["timestamp"].to_numpy()) <= 0).any():
        row = int(np.flatnonzero(np.diff(numbers["timestamp"].to_numpy()) <= 0)[0]) + 2
        raise DataFormatError(f"{path}: timestamp does not increase at row {row}")
    unknown = ~numbers["activity_id"].isin([TRANSIENT, *ACTIVITIES])
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataFormatError(f"{path}: activity_id {table['activity_id'].iloc[row]} in row {row + 1}; expected 0 "
                              f"(transient) or a protocol activity {sorted(ACTIVITIES)}")
    return numbers


def _segments(activity: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of one non-transient activity."""
    change = np.flatnonzero(np.diff(activity) != 0) + 1
    bounds = np.concatenate([[0], change, [activity.size]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if activity[a] != TRANSIENT]


def _fill_segment(values: np.ndarray) -> np.ndarray:
    """Heart rate held forward (then backward); IMU losses interpolated or held as the module docstring says."""
    out = values.copy()
    hr = pd.Series(out[:, 0]).ffill().bfill().to_numpy()
    out[:, 0] = hr
    for c in range(1, out.shape[1]):
        column = pd.Series(out[:, c]).interpolate(method="linear", limit=MAX_GAP,
                                                  limit_area="inside").to_numpy(copy=True)
        valid = np.flatnonzero(~np.isnan(column))
        if valid.size:  # a short loss at the segment's edge holds the nearest reading
            if valid[0] <= MAX_GAP:
                column[:valid[0]] = column[valid[0]]
            if column.size - 1 - valid[-1] <= MAX_GAP:
                column[valid[-1] + 1:] = column[valid[-1]]
        out[:, c] = column
    return out


@dataclass(eq=False)
class PAMAP2Data(WindowSet):
    windows_dropped_nan: int = 0
    subjects: tuple[str, ...] = field(default_factory=tuple)


def load_pamap2(root: str | Path, options: ReadOptions, verbose: bool = True) -> PAMAP2Data:
    """Windows of every Protocol subject in ``root`` (see the module docstring)."""
    root = Path(root)
    try:
        check_pamap2_folder(str(root.resolve()))
    except ValueError as err:
        raise DataFormatError(f"expected {err}") from None
    files = subject_files(root)
    val = options.val_subjects or DEFAULT_VAL_SUBJECTS
    test = options.test_subjects or DEFAULT_TEST_SUBJECTS
    check_held_out(val, test, sorted(files), root / "Protocol")
    window = int(round((options.window_seconds or DEFAULT_WINDOW_SECONDS) * RATE))
    step = int(round((options.window_step_seconds or DEFAULT_STEP_SECONDS) * RATE))
    kept = [COLUMNS.index(c) for c in CHANNELS]
    classes = list(ACTIVITIES)
    signals, labels, groups, dropped = [], [], [], 0
    for subject, path in files.items():
        table = read_subject(path).to_numpy(dtype=np.float64)
        activity = table[:, 1].astype(np.int64)
        n_before = len(signals)
        for start, stop in _segments(activity):
            values = _fill_segment(table[start:stop, kept])
            for offset in range(0, stop - start - window + 1, step):
                block = values[offset:offset + window]
                if np.isnan(block).any():
                    dropped += 1
                    continue
                signals.append(block.T.astype(np.float32))
                labels.append(classes.index(int(activity[start])))
                groups.append(int(subject))
        if verbose:
            print(f"[data_prep.pamap2] subject {subject}: {len(signals) - n_before} windows", file=sys.stderr,
                  flush=True)
    if not signals:
        raise DataFormatError(f"{root / 'Protocol'}: no complete {window}-sample window of a protocol activity")
    group_array = np.array(groups, dtype=np.int64)
    split = np.where(np.isin(group_array, [int(s) for s in test]), SPLIT_CODES["test"],
                     np.where(np.isin(group_array, [int(s) for s in val]), SPLIT_CODES["val"], SPLIT_CODES["train"]))
    stacked = np.stack(signals)
    mean, std = train_scale(stacked, split, root / "Protocol")
    return PAMAP2Data(signals=stacked, labels=np.eye(len(classes), dtype=np.float32)[labels], groups=group_array,
                      split=split, channel_mean=mean, channel_std=std,
                      cache_path=root.resolve(), windows_dropped_nan=dropped, subjects=tuple(files))
