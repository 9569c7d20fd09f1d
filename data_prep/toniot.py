"""TON_IoT IoT-telemetry reader, from the published ``Train_Test_IoT_<Device>.csv`` files.

Source: the TON_IoT data sets, UNSW Canberra (Alsaedi et al., "TON_IoT telemetry dataset: a new
generation dataset of IoT and IIoT for data-driven intrusion detection systems", IEEE Access 2020),
folder ``Train_Test_datasets/Train_Test_IoT_dataset``. One CSV per device type, one row per sensor
reading: ``ts`` (Unix seconds; absent in the older Weather release, which has only ``date`` and
``time``), ``date`` (``25-Apr-19``), ``time`` (``19:19:40``, often padded with spaces), the
device's own readings, ``label`` (0 normal, 1 attack) and ``type`` (the attack class, or
``normal``). ``label`` must equal ``type != 'normal'``; a row where they disagree is an error.

Task: multi-class, the ``type`` of the latest reading of a window (:data:`CLASSES`, the ten
published classes; those absent from a file are simply never seen). Natural group: the device
type, so natural partitioning gives one device type per client.

Input: the readings are tabular, but each device's readings form a time series and attacks come
in time blocks (after sorting by time, 99.1-99.8 % of 32-reading windows hold one class on the
real files, except Motion_Light at 93 %), so a window of :data:`WINDOW` consecutive readings
(sorted by time, stable) through the same Conv1D extractor carries the context of the latest
reading. Windows do not overlap. Channels: the union of every device's readings
(:data:`CHANNELS`); a device fills its own and leaves the others zero, also after
standardisation. Categorical readings are encoded as 0/1 (:data:`CATEGORIES`, cells stripped and
lower-cased). Timestamps are not an input.

Split: per device and class, the windows are shuffled with a fixed seed (0) and cut 70 / 15 / 15 %
into train / val / test (validation and test get at least one window of a class with 3 or more).
Because attacks come in blocks, neighbouring windows are alike: this split measures recognition
of the published attack traffic, not of attacks from a later time. Per-channel standardisation
uses the mean and population std over the training windows of the devices that have the channel.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.format_error import DataFormatError
from data_prep.spec import SPLIT_CODES, DatasetSpec
from data_prep.windows import WindowSet

DEVICE_FEATURES: dict[str, tuple[str, ...]] = {
    "Fridge": ("fridge_temperature", "temp_condition"),
    "GPS_Tracker": ("latitude", "longitude"),
    "Garage_Door": ("door_state", "sphone_signal"),
    "Modbus": ("FC1_Read_Input_Register", "FC2_Read_Discrete_Value", "FC3_Read_Holding_Register", "FC4_Read_Coil"),
    "Motion_Light": ("motion_status", "light_status"),
    "Thermostat": ("current_temperature", "thermostat_status"),
    "Weather": ("temperature", "pressure", "humidity"),
}
DEVICES: tuple[str, ...] = tuple(DEVICE_FEATURES)
CHANNELS: tuple[str, ...] = tuple(f for features in DEVICE_FEATURES.values() for f in features)
CATEGORIES: dict[str, dict[str, int]] = {
    "temp_condition": {"low": 0, "high": 1},
    "door_state": {"closed": 0, "open": 1},
    "sphone_signal": {"0": 0, "false": 0, "1": 1, "true": 1},
    "light_status": {"off": 0, "on": 1},
}
CLASSES: tuple[str, ...] = ("normal", "backdoor", "ddos", "dos", "injection", "mitm", "password", "ransomware",
                            "scanning", "xss")
WINDOW = 32
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
SPLIT_SEED = 0
DATE_FORMAT = "%d-%b-%y %H:%M:%S"

TONIOT_SPEC = DatasetSpec(
    name="toniot", title="TON_IoT IoT telemetry (UNSW Canberra)", channels=CHANNELS, sampling_rates=(),
    window_seconds=0.0, classes=CLASSES, task="multiclass", group="device",
    splits={"train": "70 % of each device's windows per class", "val": "15 % of each device's windows per class",
            "test": "15 % of each device's windows per class"},
    window_readings=WINDOW,
    source="https://research.unsw.edu.au/projects/toniot-datasets, Train_Test_datasets/Train_Test_IoT_dataset",
    layout="any of the seven Train_Test_IoT_<Device>.csv files (Fridge, GPS_Tracker, ..., Weather)",
)


def device_file(root: Path, device: str) -> Path:
    return root / f"Train_Test_IoT_{device}.csv"


def check_toniot_folder(path: str, sampling_rate: int = 0) -> None:
    """Fail early, phrased as what was expected, when no TON_IoT device file is in ``path``."""
    root = Path(path)
    if not root.is_absolute():
        raise ValueError(f"an absolute path to a TON_IoT folder, got relative path '{path}'")
    if not root.is_dir():
        raise ValueError(f"an existing TON_IoT folder, but '{path}' does not exist")
    if not any(device_file(root, d).is_file() for d in DEVICES):
        raise ValueError(f"a TON_IoT folder holding Train_Test_IoT_<Device>.csv files (devices {', '.join(DEVICES)}); "
                         f"'{path}' has none")


@dataclass(eq=False)
class TonIoTData(WindowSet):
    """Windows of consecutive readings: raw values, one-hot targets, device groups and the fixed split."""

    # signals: zeros on channels the device lacks; groups: index into DEVICES
    devices: tuple[str, ...] = ()  # the device files found
    rows_read: dict[str, int] = field(default_factory=dict)

    def standardised(self, idx: np.ndarray | list[int]) -> np.ndarray:
        positions = np.asarray(idx, dtype=np.int64).reshape(-1)
        raw = self.signals[positions]
        own = _device_mask()[self.groups[positions]][:, :, None]  # a device's absent channels stay zero
        out = (raw - self.channel_mean[None, :, None]) / self.channel_std[None, :, None]
        return np.where(own, out, 0.0).astype(np.float32)


def _device_mask() -> np.ndarray:
    """(devices, channels) bool: which channels each device fills."""
    return np.array([[c in DEVICE_FEATURES[d] for c in CHANNELS] for d in DEVICES])


def _encode(table: pd.DataFrame, column: str, csv: Path) -> np.ndarray:
    if column in CATEGORIES:
        cells = table[column].astype(str).str.strip().str.lower()
        codes = cells.map(CATEGORIES[column])
        bad = codes.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataFormatError(f"{csv}: {column} {table[column].iloc[row]!r} in row {row + 2}; expected one of "
                                  f"{sorted(CATEGORIES[column])}")
        return codes.to_numpy(dtype=np.float64)
    values = pd.to_numeric(table[column].astype(str).str.strip(), errors="coerce")
    bad = values.isna() | ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(f"{csv}: {column} {table[column].iloc[row]!r} in row {row + 2} is not a finite number")
    return values.to_numpy(dtype=np.float64)


def _timestamps(table: pd.DataFrame, csv: Path) -> np.ndarray:
    if "ts" in table.columns:
        values = pd.to_numeric(table["ts"], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataFormatError(f"{csv}: ts {table['ts'].iloc[row]!r} in row {row + 2} is not a Unix time")
        return values.to_numpy(dtype=np.float64)
    stamps = pd.to_datetime(table["date"].astype(str).str.strip() + " " + table["time"].astype(str).str.strip(),
                            format=DATE_FORMAT, errors="coerce")
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise DataFormatError(f"{csv}: date/time {table['date'].iloc[row]!r} {table['time'].iloc[row]!r} in row "
                              f"{row + 2}; expected e.g. '25-Apr-19' '19:19:40'")
    return (stamps - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy()


def read_device(root: Path, device: str) -> tuple[np.ndarray, np.ndarray]:
    """One device file as (readings (rows, features) float64 in time order, class index per row)."""
    csv = device_file(root, device)
    table = pd.read_csv(csv, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    features = DEVICE_FEATURES[device]
    time_columns = ("ts",) if "ts" in table.columns else ("date", "time")
    missing = [c for c in (*time_columns, *features, "label", "type") if c not in table.columns]
    if missing:
        raise DataFormatError(f"{csv} lacks column(s) {missing}: expected ts (or date, time), "
                              f"{', '.join(features)}, label, type")
    if len(table) < WINDOW:
        raise DataFormatError(f"{csv}: {len(table)} rows, expected at least one window of {WINDOW} readings")
    types = table["type"].str.strip().str.lower()
    unknown = ~types.isin(CLASSES)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataFormatError(f"{csv}: type {table['type'].iloc[row]!r} in row {row + 2}; expected one of {CLASSES}")
    label = table["label"].str.strip()
    disagree = ~label.isin(("0", "1")) | ((label == "1") != (types != "normal"))
    if disagree.any():
        row = int(np.flatnonzero(disagree.to_numpy())[0])
        raise DataFormatError(f"{csv}: row {row + 2} has label {table['label'].iloc[row]!r} and type "
                              f"{table['type'].iloc[row]!r}; expected label 1 exactly for attack types, 0 for normal")
    order = np.argsort(_timestamps(table, csv), kind="stable")
    readings = np.stack([_encode(table, column, csv) for column in features], axis=1)[order]
    classes = types.map({name: i for i, name in enumerate(CLASSES)}).to_numpy(dtype=np.int64)[order]
    return readings, classes


def _split_codes(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    codes = np.zeros(classes.size, dtype=np.int64)
    for cls in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == cls))
        n = members.size
        n_val = max(1, int(round(SPLIT_FRACTIONS["val"] * n))) if n >= 3 else 0
        n_test = max(1, int(round(SPLIT_FRACTIONS["test"] * n))) if n >= 3 else 0
        codes[members[:n_val]] = SPLIT_CODES["val"]
        codes[members[n_val:n_val + n_test]] = SPLIT_CODES["test"]
    return codes


def load_toniot(root: str | Path, sampling_rate: int = 0, verbose: bool = True) -> TonIoTData:
    """Every device file in ``root`` as non-overlapping windows (see the module docstring)."""
    root = Path(root)
    try:
        check_toniot_folder(str(root.resolve()))
    except ValueError as err:
        raise DataFormatError(f"expected {err}") from None
    found = tuple(d for d in DEVICES if device_file(root, d).is_file())
    signals, labels, groups, split, rows = [], [], [], [], {}
    rng = np.random.default_rng(SPLIT_SEED)
    for device in found:
        readings, classes = read_device(root, device)
        rows[device] = int(len(classes))
        n = len(classes) // WINDOW
        block = np.zeros((n, len(CHANNELS), WINDOW), dtype=np.float32)
        channels = [CHANNELS.index(f) for f in DEVICE_FEATURES[device]]
        block[:, channels, :] = readings[:n * WINDOW].reshape(n, WINDOW, -1).transpose(0, 2, 1)
        window_class = classes[:n * WINDOW].reshape(n, WINDOW)[:, -1]  # the latest reading's class
        signals.append(block)
        labels.append(window_class)
        groups.append(np.full(n, DEVICES.index(device), dtype=np.int64))
        split.append(_split_codes(window_class, rng))
        if verbose:
            print(f"[data_prep.toniot] {device}: {len(classes)} readings -> {n} windows", file=sys.stderr, flush=True)
    data_signals = np.concatenate(signals)
    data_groups = np.concatenate(groups)
    data_split = np.concatenate(split)
    mean, std = _channel_statistics(data_signals, data_groups, data_split == SPLIT_CODES["train"])
    return TonIoTData(signals=data_signals, labels=np.eye(len(CLASSES), dtype=np.float32)[np.concatenate(labels)],
                      groups=data_groups, split=data_split, channel_mean=mean, channel_std=std, devices=found,
                      rows_read=rows, cache_path=root.resolve())


def _channel_statistics(signals: np.ndarray, groups: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std per channel over the training windows of the devices having it (std 1 if none)."""
    mask = _device_mask()
    mean = np.zeros(len(CHANNELS), dtype=np.float64)
    std = np.ones(len(CHANNELS), dtype=np.float64)
    for c in range(len(CHANNELS)):
        rows = train & mask[groups, c]
        if rows.any():
            values = signals[rows, c, :].astype(np.float64)
            mean[c] = values.mean()
            std[c] = values.std() if values.std() > 0 else 1.0
    return mean.astype(np.float32), std.astype(np.float32)
