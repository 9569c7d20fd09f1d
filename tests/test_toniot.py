"""TON_IoT reader: windows against an independent read of the CSV, format errors named, the real files."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep.format_error import DataFormatError
from data_prep.synth_toniot import write_synthetic_toniot
from data_prep.toniot import CATEGORIES, CHANNELS, CLASSES, DEVICE_FEATURES, DEVICES, WINDOW, device_file, load_toniot

REAL_TONIOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "toniot"
needs_real = pytest.mark.skipif(not (REAL_TONIOT / "Train_Test_IoT_Fridge.csv").is_file(),
                                reason=f"real TON_IoT files not present at {REAL_TONIOT.resolve()}")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return write_synthetic_toniot(tmp_path_factory.mktemp("toniot"), n_windows=140, seed=1)


@pytest.fixture()
def copy(synth_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth_root, tmp_path / "toniot"))


def independent_windows(path: Path, device: str) -> tuple[np.ndarray, list[str]]:
    """csv module, stable sort by time, non-overlapping windows: (n, features, WINDOW) and each window's last type."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if "ts" in rows[0]:
        rows = sorted(rows, key=lambda r: int(r["ts"]))  # sorted() is stable
    def value(feature: str, cell: str) -> float:
        return float(CATEGORIES[feature][cell.strip().lower()]) if feature in CATEGORIES else float(cell)
    n = len(rows) // WINDOW
    values = np.array([[value(f, r[f]) for f in DEVICE_FEATURES[device]] for r in rows[:n * WINDOW]])
    windows = values.reshape(n, WINDOW, -1).transpose(0, 2, 1)
    return windows, [rows[(i + 1) * WINDOW - 1]["type"].strip() for i in range(n)]


def test_windows_equal_an_independent_read(synth_root: Path) -> None:
    data = load_toniot(synth_root, verbose=False)
    assert data.devices == DEVICES and data.signals.shape[1:] == (len(CHANNELS), WINDOW)
    for g, device in enumerate(DEVICES):
        mine = data.signals[data.groups == g]
        windows, types = independent_windows(device_file(synth_root, device), device)
        channels = [CHANNELS.index(f) for f in DEVICE_FEATURES[device]]
        np.testing.assert_allclose(mine[:, channels, :], windows, rtol=1e-6)
        others = [c for c in range(len(CHANNELS)) if c not in channels]
        assert not mine[:, others, :].any()
        assert [CLASSES[i] for i in data.labels[data.groups == g].argmax(axis=1)] == types


def test_split_is_disjoint_stratified_and_standardised_on_train_only(synth_root: Path) -> None:
    data = load_toniot(synth_root, verbose=False)
    parts = [data.split_indices(s) for s in ("train", "val", "test")]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(data)))
    for g in range(len(DEVICES)):
        for c in np.unique(data.labels[data.groups == g].argmax(axis=1)):
            members = (data.groups == g) & (data.labels.argmax(axis=1) == c)
            if members.sum() >= 3:
                assert all(np.isin(np.flatnonzero(members), p).any() for p in parts)  # every split has the class
    train = data.standardised(parts[0])
    own = np.array([[c in DEVICE_FEATURES[d] for c in CHANNELS] for d in DEVICES])[data.groups[parts[0]]]
    for c in range(len(CHANNELS)):
        values = train[:, c, :][own[:, c]]
        assert abs(values.mean()) < 1e-4 and abs(values.std() - 1.0) < 1e-3
        assert not train[:, c, :][~own[:, c]].any()  # absent channels stay zero


@pytest.mark.parametrize("edit,message", [
    (lambda text: text.replace(",label,type", ",label,kind", 1), "lacks column(s) ['type']"),
    (lambda text: text.replace(",normal\r\n", ",smurf\r\n", 1), "type 'smurf' in row"),
    (lambda text: text.replace(",0,normal\r\n", ",1,normal\r\n", 1), "expected label 1 exactly for attack types"),
])
def test_bad_device_file_is_named(copy: Path, edit, message: str) -> None:
    path = device_file(copy, "Fridge")
    path.write_bytes(edit(path.read_bytes().decode("utf-8")).encode("utf-8"))
    with pytest.raises(DataFormatError, match=re.escape(message)) as info:
        load_toniot(copy, verbose=False)
    assert str(path) in str(info.value)


def set_cell(path: Path, line: int, column: int, value: str) -> None:
    """Overwrite one cell of a CRLF device file (line 0 is the header)."""
    lines = path.read_bytes().decode("utf-8").split("\r\n")
    cells = lines[line].split(",")
    cells[column] = value
    lines[line] = ",".join(cells)
    path.write_bytes("\r\n".join(lines).encode("utf-8"))


def test_unknown_category_and_non_number_are_named_with_their_row(copy: Path) -> None:
    garage = device_file(copy, "Garage_Door")
    set_cell(garage, 5, 3, "ajar")  # door_state
    with pytest.raises(DataFormatError, match=r"door_state 'ajar' in row 6; expected one of \['closed', 'open'\]"):
        load_toniot(copy, verbose=False)
    set_cell(device_file(copy, "Weather"), 3, 2, "warm")  # temperature
    garage.unlink()  # Garage_Door is read before Weather; a missing device file is allowed
    with pytest.raises(DataFormatError, match=r"temperature 'warm' in row 4 is not a finite number"):
        load_toniot(copy, verbose=False)


def test_folder_without_device_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="has none"):
        load_toniot(tmp_path, verbose=False)


@needs_real
def test_real_files() -> None:
    data = load_toniot(REAL_TONIOT, verbose=False)
    assert data.devices == DEVICES
    assert data.rows_read == {"Fridge": 59944, "GPS_Tracker": 58960, "Garage_Door": 59587, "Modbus": 51106,
                              "Motion_Light": 59488, "Thermostat": 52774, "Weather": 39260}
    assert len(data) == sum(n // WINDOW for n in data.rows_read.values()) == 11908
    windows, types = independent_windows(device_file(REAL_TONIOT, "Thermostat"), "Thermostat")
    mine = data.signals[data.groups == DEVICES.index("Thermostat")]
    np.testing.assert_allclose(mine[:, [CHANNELS.index("current_temperature"),
                                        CHANNELS.index("thermostat_status")], :], windows, rtol=1e-6)
    counts = dict(zip(CLASSES, data.labels.sum(axis=0).astype(int)))
    assert counts["normal"] == 7026 and counts["dos"] == counts["mitm"] == 0
