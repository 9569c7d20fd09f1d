"""A synthetic TON_IoT telemetry set in the published file format, for runs without a data path.

One ``Train_Test_IoT_<Device>.csv`` per device type with the published columns and cell formats:
a UTF-8 byte-order mark, ``ts`` (absent for Weather, as in the older release), ``date``
(``25-Apr-19``), ``time`` padded with spaces, the device's readings (categorical ones as the
strings the real files use, with their stray spaces), ``label`` and ``type``; CRLF line ends.

Traffic comes in time blocks of one class (2-6 windows of readings each, normal about half of the
blocks), as in the real files. A reading is a device-specific random walk plus noise; each attack
class shifts every numeric reading by a fixed class-and-channel offset (normal with standard
deviation 0.6 noise units) and scales its noise (0.6-1.8x), and moves each categorical reading's
probability of its '1' state. Offsets are comparable to the noise, so a window's class is
learnable from its readings but single readings overlap.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from data_prep.cache_paths import build_once, default_cache_root
from data_prep.toniot import CATEGORIES, CLASSES, DEVICE_FEATURES, WINDOW, device_file

SYNTHETIC_FORMAT_VERSION = 1
ATTACKS = ("backdoor", "ddos", "injection", "password", "ransomware", "scanning", "xss")
NORMAL_BLOCK_SHARE = 0.5
START_TS = 1556200000  # 2019-04-25, the capture period of the real files
SCALE = {"latitude": 30.0, "longitude": 30.0, "FC1_Read_Input_Register": 15000.0,
         "FC2_Read_Discrete_Value": 15000.0, "FC3_Read_Holding_Register": 15000.0, "FC4_Read_Coil": 15000.0,
         "pressure": 2.0, "humidity": 10.0}
CENTRE = {"latitude": 100.0, "longitude": 120.0, "FC1_Read_Input_Register": 32000.0,
          "FC2_Read_Discrete_Value": 32000.0, "FC3_Read_Holding_Register": 32000.0, "FC4_Read_Coil": 32000.0,
          "fridge_temperature": 7.0, "current_temperature": 27.0, "temperature": 35.0, "pressure": 0.0,
          "humidity": 50.0}
CATEGORY_TEXT = {  # the spellings the real files use for each code
    "temp_condition": {0: ["low", "low ", "low  "], 1: ["high", "high ", "high  "]},
    "door_state": {0: ["closed"], 1: ["open"]},
    "sphone_signal": {0: ["0", "false"], 1: ["1", "true"]},
    "light_status": {0: [" off"], 1: [" on"]},
}
BINARY_NUMERIC = ("motion_status", "thermostat_status")


def _class_effects(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, channels) offsets in noise units and (classes,) noise scales; normal has none."""
    rng = np.random.default_rng([seed, 7])
    n_channels = sum(len(f) for f in DEVICE_FEATURES.values())
    offsets = rng.normal(0.0, 0.6, (len(CLASSES), n_channels))
    scales = rng.uniform(0.6, 1.8, len(CLASSES))
    offsets[CLASSES.index("normal")] = 0.0
    scales[CLASSES.index("normal")] = 1.0
    return offsets, scales


def _blocks(rng: np.random.Generator, n_rows: int) -> np.ndarray:
    """Class index per reading: consecutive blocks of one class."""
    out = []
    while sum(len(b) for b in out) < n_rows:
        name = "normal" if rng.random() < NORMAL_BLOCK_SHARE else str(rng.choice(ATTACKS))
        out.append(np.full(int(rng.integers(2, 7)) * WINDOW, CLASSES.index(name)))
    return np.concatenate(out)[:n_rows]


def write_device(out_dir: Path, device: str, n_rows: int, seed: int) -> Path:
    rng = np.random.default_rng([seed, list(DEVICE_FEATURES).index(device)])
    offsets, scales = _class_effects(seed)
    channel0 = [c for d in DEVICE_FEATURES for c in DEVICE_FEATURES[d]].index(DEVICE_FEATURES[device][0])
    classes = _blocks(rng, n_rows)
    step = np.where(classes == CLASSES.index("normal"), 5, rng.integers(1, 3, n_rows))
    ts = START_TS + list(DEVICE_FEATURES).index(device) * 3600 + np.cumsum(step)
    columns: dict[str, list[str]] = {}
    for k, feature in enumerate(DEVICE_FEATURES[device]):
        shift = offsets[classes, channel0 + k]
        noise = rng.normal(0.0, 1.0, n_rows) * scales[classes]
        if feature in CATEGORIES or feature in BINARY_NUMERIC:
            p_one = 1.0 / (1.0 + np.exp(-(2.0 * shift - 0.3)))
            codes = (rng.random(n_rows) < p_one).astype(int)
            if feature in CATEGORIES:
                columns[feature] = [str(rng.choice(CATEGORY_TEXT[feature][c])) for c in codes]
            else:
                columns[feature] = [str(c) for c in codes]
            continue
        walk = np.cumsum(rng.normal(0.0, 0.05, n_rows))
        values = CENTRE.get(feature, 0.0) + SCALE.get(feature, 1.0) * (walk + shift + 0.5 * noise)
        if feature.startswith("FC"):
            columns[feature] = [str(int(v)) for v in np.clip(np.round(values), 0, 65535)]
        else:
            columns[feature] = [repr(round(float(v), 8)) for v in values]
    stamps = [dt.datetime.fromtimestamp(int(t), dt.timezone.utc) for t in ts]
    header = (["ts"] if device != "Weather" else []) + ["date", "time", *DEVICE_FEATURES[device], "label", "type"]
    lines = [",".join(header)]
    for i in range(n_rows):
        cells = [str(int(ts[i]))] if device != "Weather" else []
        cells += [stamps[i].strftime("%d-%b-%y"), stamps[i].strftime(" %H:%M:%S ").replace(" 0", " ", 1)]
        cells += [columns[f][i] for f in DEVICE_FEATURES[device]]
        cells += ["0" if classes[i] == CLASSES.index("normal") else "1", CLASSES[classes[i]]]
        lines.append(",".join(cells))
    path = device_file(out_dir, device)
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def write_synthetic_toniot(out_dir: Path, n_windows: int = 1000, seed: int = 0) -> Path:
    """Write about ``n_windows`` windows' worth of readings, spread over every device type."""
    if n_windows < len(DEVICE_FEATURES):
        raise ValueError(f"n_windows {n_windows}: expected at least {len(DEVICE_FEATURES)} (one per device)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = int(np.ceil(n_windows / len(DEVICE_FEATURES))) * WINDOW
    for device in DEVICE_FEATURES:
        write_device(out_dir, device, rows, seed)
    return out_dir


def ensure_synthetic_toniot(n_windows: int, seed: int = 0, cache_root: Path | None = None) -> Path:
    """The synthetic set for (``n_windows``, ``seed``), written once under a file lock into the cache root."""
    base = default_cache_root() if cache_root is None else Path(cache_root)
    target = base / f"synthetic-toniot-n{n_windows}-s{seed}-v{SYNTHETIC_FORMAT_VERSION}"
    folder, _ = build_once(target, lambda tmp: write_synthetic_toniot(tmp, n_windows, seed))
    return folder
