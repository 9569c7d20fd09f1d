"""A synthetic MIMIC-III matched-subset set in the published WFDB layout, for runs without a data path.

Writes one folder per patient (``p900001/`` .. ``p900008/``; the last patient has two records, two
stays), each record as in the matched subset: a master header ``p9000NN-2150-01-DD-HH-MM.hea`` (a
leading gap, six segments separated by gaps, a trailing gap as long as the label horizon), a layout
header ``<id>_layout.hea`` (II, V, ABP, PLETH), segment headers and format-80 signal files
``<id>_000K.{hea,dat}`` at 125 Hz, and the numerics record ``<record>n.hea`` + ``<id>n.dat`` (format 16,
one sample a minute: HR, ABPSys, ABPDias, ABPMean, SpO2; 0 where not measured). Headers are written
by hand in the real files' form (counter frequency, base date and time, checksums).

Physiology: each record has a mean arterial pressure (MAP) course, second by second: the patient's
baseline (70-92 mmHg) with a slow random walk, one to three hypotensive episodes (MAP drifting down
over 2-12 min to 50-62 mmHg, a plateau, a recovery) and near misses (down to 67-72 mmHg only). The ABP
waveform follows it: beats at a heart rate that rises as MAP falls, a pulse pressure that narrows with
MAP, a transducer offset per record, respiratory swing and noise; ECG leads II and V and a PLETH
curve share the beats. The numerics ABPMean is the MAP course each minute plus reading noise. Labels
(hypotension within the next 10 min) therefore follow a waveform trend that a model can learn, but
sudden drops, near misses, offsets and noise keep it far from trivial.

Exercised on purpose: segment 0002 of the third patient is listed, with its header, but has no
signal file (skipped with a warning); each record's segment 0004 lacks ABP (windows dropped for a
missing channel); a 3-s ABP dropout (invalid samples) in each segment 0005; ABPMean not measured for
20 min in patient 5 (windows without a label); channel order differs between segments.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from data_prep.cache_paths import build_once, default_cache_root
from data_prep.mimic import DEFAULT_STEP_SECONDS, DEFAULT_WINDOW_SECONDS, HORIZON_MINUTES, RATE

SYNTHETIC_FORMAT_VERSION = 1
PATIENTS = tuple(f"p9000{i:02d}" for i in range(1, 9))
RECORDS_PER_PATIENT = {"p900008": 2}
SEGMENTS = 6
LAYOUT: dict[str, tuple[float, int, str]] = {  # channel -> (gain, baseline, units), format 80
    "II": (40.0, 0, "mV"), "V": (40.0, 0, "mV"), "ABP": (1.25, -100, "mmHg"), "PLETH": (255.0, -128, "NU"),
}
NUMERICS = ("HR", "ABPSys", "ABPDias", "ABPMean", "SpO2")
NUMERICS_UNITS = {"HR": "bpm", "SpO2": "%"}
INVALID_80 = -128


def _bump(phase: np.ndarray, centre: float, width: float) -> np.ndarray:
    d = (phase - centre + 0.5) % 1.0 - 0.5  # wrapped distance in cycles
    return np.exp(-0.5 * (d / width) ** 2)


PULSE_MEAN = float((_bump(np.linspace(0, 1, 1000, endpoint=False), 0.12, 0.05)
                    + 0.35 * _bump(np.linspace(0, 1, 1000, endpoint=False), 0.40, 0.07)).mean())


def _checksum(digital: np.ndarray) -> int:
    return int((int(digital.sum()) + 32768) % 65536 - 32768)  # WFDB: 16-bit signed sum of the samples


def _time(moment: dt.datetime) -> str:
    return f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d}"


def _map_course(seconds: int, segments: list[tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    """MAP in mmHg for each second of a record (module docstring); episodes fall near waveform segments."""
    baseline = rng.uniform(70, 92)
    walk = np.cumsum(rng.normal(0, 0.08, seconds))
    walk -= np.convolve(walk, np.ones(601) / 601, mode="same")  # keep the walk slow but mean-reverting
    course = baseline + 3.0 * walk / max(walk.std(), 1e-9)
    t = np.arange(seconds)
    dips = np.zeros(seconds)
    # one of the last two segments: the later splits see both classes
    late = len(segments) - 1 - int(rng.integers(0, 2))
    anchors = [(int(rng.integers(0, late)), rng.uniform(50, 62))]
    anchors += [(late, rng.uniform(50, 62))] if rng.random() < 0.6 else []
    anchors += [(int(rng.integers(0, len(segments))), rng.uniform(67, 72)) for _ in range(rng.integers(0, 3))]
    for segment, nadir in anchors:
        first, last = segments[segment]
        fall, hold, rise = rng.uniform(120, 600), rng.uniform(60, 300), rng.uniform(60, 180)
        onset = rng.uniform(first - 300, last) - fall  # the plateau starts within 5 min before or in the segment
        depth = max(baseline - nadir, 0.0)
        dip = np.interp(t, onset + np.cumsum([0, fall, hold, rise]), [0, -depth, -depth, 0], left=0, right=0)
        dips = np.minimum(dips, dip)
    return course + dips


def _beats(map_mmhg: np.ndarray, t: np.ndarray, heart_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Beat phase (cycles) at each sample; the heart rate rises as MAP falls."""
    rate = heart_rate + 0.5 * np.clip(80 - map_mmhg, 0, None) + rng.normal(0, 1.0)
    return np.cumsum(rate / 60.0 / RATE) + rng.uniform()


def _pulse_shape(phase: np.ndarray) -> np.ndarray:
    """Arterial pulse (systolic peak, dicrotic wave) with zero mean over a beat."""
    shape = _bump(phase, 0.12, 0.05) + 0.35 * _bump(phase, 0.40, 0.07)
    return shape - PULSE_MEAN


def _signals(map_mmhg: np.ndarray, t: np.ndarray, patient: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    phase = _beats(map_mmhg, t, patient["heart_rate"], rng) % 1.0
    pulse = _pulse_shape(phase)
    pulse_pressure = patient["pulse_pressure"] * np.clip((map_mmhg - 35) / 45, 0.3, 1.4)
    abp = (map_mmhg + patient["offset"] + pulse_pressure * pulse + 2.0 * np.sin(2 * np.pi * 0.25 * t)
           + rng.normal(0, 1.5, t.size))
    ecg = (0.15 * _bump(phase, 0.85, 0.02) - 0.1 * _bump(phase, 0.97, 0.006) + _bump(phase, 0.0, 0.008)
           - 0.2 * _bump(phase, 0.03, 0.008) + 0.3 * _bump(phase, 0.25, 0.04))
    wander = 0.1 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6))
    return {
        "II": patient["ecg_gain"] * ecg + wander + rng.normal(0, 0.04, t.size),
        "V": -0.7 * patient["ecg_gain"] * ecg + wander + rng.normal(0, 0.05, t.size),
        "ABP": abp,
        "PLETH": 0.45 + 0.3 * _bump(phase, 0.3, 0.12) * np.clip(map_mmhg / 80, 0.4, 1.2) + rng.normal(0, 0.01, t.size),
    }


def _write_segment(folder: Path, name: str, start: dt.datetime, values: dict[str, np.ndarray],
                   write_dat: bool) -> None:
    names = list(values)
    digital = np.empty((next(iter(values.values())).size, len(names)), dtype=np.int64)
    for c, channel in enumerate(names):
        gain, baseline, _ = LAYOUT[channel]
        physical = values[channel]
        column = np.clip(np.round(physical * gain + baseline), INVALID_80 + 1, 127)
        digital[:, c] = np.where(np.isnan(physical), INVALID_80, np.nan_to_num(column)).astype(np.int64)
    lines = [f"{name} {len(names)} {RATE} {digital.shape[0]} {_time(start)}"]
    for c, channel in enumerate(names):
        gain, baseline, units = LAYOUT[channel]
        lines.append(f"{name}.dat 80 {gain:g}({baseline})/{units} 8 0 {digital[0, c]} {_checksum(digital[:, c])} 0 "
                     f"{channel}")
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    if write_dat:  # format 80: one offset-binary byte per sample, frames interleaved
        (folder / f"{name}.dat").write_bytes((digital + 128).astype(np.uint8).tobytes())


def _write_numerics(folder: Path, record: str, base: str, start: dt.datetime, minutes: np.ndarray,
                    columns: dict[str, np.ndarray]) -> None:
    digital = np.stack([np.round(columns[n] * 10).astype(np.int64) for n in NUMERICS], axis=1)
    lines = [f"{record}n {len(NUMERICS)} 0.0166666666667/{RATE} {minutes.size} {_time(start)} {start:%d/%m/%Y}"]
    for c, name in enumerate(NUMERICS):
        lines.append(f"{base}n.dat 16 10/{NUMERICS_UNITS.get(name, 'mmHg')} 16 0 {digital[0, c]} "
                     f"{_checksum(digital[:, c])} 0 {name}")
    (folder / f"{record}n.hea").write_text("\n".join(lines) + "\n")
    (folder / f"{base}n.dat").write_bytes(digital.astype("<i2").tobytes())


def _write_record(folder: Path, record: str, base: str, start: dt.datetime, waveform_seconds: float,
                  patient: dict, drop_dat: int | None, unmeasured: bool, rng: np.random.Generator) -> None:
    segment_seconds = max(DEFAULT_WINDOW_SECONDS + 5, waveform_seconds / SEGMENTS)
    total_seconds = max(3600.0, 2.0 * SEGMENTS * segment_seconds)
    gaps = (rng.dirichlet(np.ones(SEGMENTS)) * (total_seconds - SEGMENTS * segment_seconds) * RATE).astype(int) + 1
    lengths = (segment_seconds * RATE * rng.uniform(0.9, 1.1, SEGMENTS)).astype(int)
    starts = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tail = int((HORIZON_MINUTES + 1) * 60 * RATE)
    map_course = _map_course(int(total_seconds + tail / RATE) + 61,
                             [(a / RATE, (a + n) / RATE) for a, n in zip(starts, lengths)], rng)
    entries, position = [(f"{base}_layout", 0)], 0
    for k, (gap, length) in enumerate(zip(gaps, lengths)):
        entries += [("~", int(gap)), (f"{base}_{k + 1:04d}", int(length))]
        position += gap
        t = (position + np.arange(length)) / RATE
        values = _signals(np.interp(t, np.arange(map_course.size), map_course), t, patient, rng)
        kept = ["II", "V", "PLETH"] if k == 3 else ["II", "ABP", "V", "PLETH"]  # segment 0004 lacks ABP
        order = list(rng.permutation(kept))
        if k == 4:  # a 3-s flush of the arterial line: invalid samples
            values["ABP"][length // 2:length // 2 + 3 * RATE] = np.nan
        _write_segment(folder, f"{base}_{k + 1:04d}", start + dt.timedelta(seconds=position / RATE),
                       {c: values[c] for c in order}, write_dat=k != drop_dat)
        position += length
    entries.append(("~", tail))
    position += tail
    layout = [f"{base}_layout {len(LAYOUT)} {RATE} 0 {_time(start)}"]
    layout += [f"~ 0 {gain:g}({baseline})/{units} 8 0 {baseline} 0 0 {name}"
               for name, (gain, baseline, units) in LAYOUT.items()]
    (folder / f"{base}_layout.hea").write_text("\n".join(layout) + "\n")
    master = [f"{record}/{len(entries)} {len(LAYOUT)} {RATE} {position} {_time(start)} {start:%d/%m/%Y}"]
    master += [f"{name} {length}" for name, length in entries]
    (folder / f"{record}.hea").write_text("\n".join(master) + "\n")
    minutes = np.arange(int(np.ceil(position / RATE / 60)))
    mean = map_course[minutes * 60] + rng.normal(0, 1.0, minutes.size)
    pulse = patient["pulse_pressure"] * np.clip((mean - 35) / 45, 0.3, 1.4)
    measured = rng.random(minutes.size) > 0.05
    if unmeasured:  # the arterial line is off for 20 minutes
        measured[minutes.size // 3:minutes.size // 3 + 20] = False
    columns = {"HR": patient["heart_rate"] + 0.5 * np.clip(80 - mean, 0, None), "ABPSys": mean + 2 * pulse / 3,
               "ABPDias": mean - pulse / 3, "ABPMean": mean, "SpO2": 97 + rng.normal(0, 0.7, minutes.size)}
    columns = {n: np.where(measured, v, 0.0) if n.startswith("ABP") else v for n, v in columns.items()}
    _write_numerics(folder, record, base, start, minutes, columns)


def write_synthetic_mimic(out_dir: Path, n_windows: int = 1000, seed: int = 0) -> Path:
    """About ``n_windows`` default windows (before drops) over 8 patients' 9 records, in the matched-subset layout."""
    stays = [(p, s) for p in PATIENTS for s in range(RECORDS_PER_PATIENT.get(p, 1))]
    waveform_seconds = (n_windows / len(stays)) * DEFAULT_STEP_SECONDS + SEGMENTS * DEFAULT_WINDOW_SECONDS
    for number, (patient_id, stay) in enumerate(stays):
        rng = np.random.default_rng([seed, number])
        patient_rng = np.random.default_rng([seed, PATIENTS.index(patient_id), 99])
        patient = {"heart_rate": patient_rng.uniform(60, 95), "pulse_pressure": patient_rng.uniform(40, 55),
                   "offset": patient_rng.normal(0, 3), "ecg_gain": patient_rng.uniform(0.7, 1.6)}
        start = dt.datetime(2150, 1, 1 + 3 * number + 2 * stay, int(rng.integers(0, 24)), int(rng.integers(0, 60)),
                            int(rng.integers(0, 60)), int(rng.integers(0, 1000)) * 1000)
        record = f"{patient_id}-{start:%Y-%m-%d-%H-%M}"
        folder = Path(out_dir) / patient_id
        folder.mkdir(parents=True, exist_ok=True)
        _write_record(folder, record, f"39{number:05d}", start, waveform_seconds, patient,
                      drop_dat=1 if number == 2 else None, unmeasured=number == 4, rng=rng)
    return Path(out_dir)


def ensure_synthetic_mimic(n_windows: int, seed: int = 0, cache_root: Path | None = None) -> Path:
    base = default_cache_root() if cache_root is None else Path(cache_root)
    target = base / f"synthetic-mimic-n{n_windows}-s{seed}-v{SYNTHETIC_FORMAT_VERSION}"
    folder, _ = build_once(target, lambda tmp: write_synthetic_mimic(tmp, n_windows, seed))
    return folder
