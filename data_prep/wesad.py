"""WESAD wearable stress and affect reader, from either published form of a subject's folder.

Source: WESAD (Schmidt et al., ICMI 2018; the data set's ``wesad_readme.pdf``). One folder per
subject ``SX`` (S2-S11, S13-S17; S1 and S12 were discarded by the authors) holding:

- ``SX.pkl``: the authors' synchronised data, a dict ``{'signal': {'chest': {...700 Hz...},
  'wrist': {'ACC': (n, 3) 32 Hz, 'BVP': (n, 1) 64 Hz, 'EDA': (n, 1) 4 Hz, 'TEMP': (n, 1) 4 Hz}},
  'label': (N,) at 700 Hz, 'subject': 'SX'}`` (a Python 2 pickle). Label ids: 0 transient,
  1 baseline, 2 stress, 3 amusement, 4 meditation, 5-7 to be ignored.
- ``SX_E4_Data/`` (or ``SX_E4_Data.zip``): the raw Empatica E4 wrist files ``ACC.csv``,
  ``BVP.csv``, ``EDA.csv``, ``TEMP.csv`` (row 1: start as a Unix time, row 2: the rate in Hz, then
  one sample per row; ACC in 1/64 g), with ``SX_quest.csv``: ``;``-separated rows
  ``# ORDER`` (condition names), ``# START`` and ``# END`` (``minutes.seconds``, e.g. ``50.3`` is
  50 min 30 s) counted from the chest device's (RespiBAN's) start.

Both routes give the same arrays: the four wrist signals as six channels (:data:`CHANNELS`),
each linearly interpolated onto one time grid at ``sampling-rate`` (32 Hz by default; 64 Hz keeps
BVP as recorded), and the three classes baseline / stress / amusement (meditation and the reading
phases are left out, as in the authors' three-class task). The chest signals are not used: a
wrist-worn device is what a deployment has. A subject with ``SX.pkl`` is read from it; otherwise
from its wrist files.

Aligning the wrist files (the wrist-only route). The E4 runs on its own clock and was started
before the RespiBAN, by 15-24 minutes in the 12 subjects we hold, so ``SX_quest.csv`` times cannot
be used as E4 times. The authors aligned the devices with a double tap visible in both devices'
accelerometers; without the chest file the tap's time on the RespiBAN clock is unknown, so it
cannot fix the offset. Instead the reader estimates it from the protocol itself: both meditations
are seated, guided and still, so the offset is the shift of the schedule that minimises the wrist
accelerometer's mean activity (mean absolute change between samples) over both meditation
periods, searched in one-second steps between 0 and the E4 recording's length minus the
protocol's end. When that minimum is not distinct (costs within :data:`AMBIGUOUS_COST_RATIO` of it
reach more than :data:`AMBIGUOUS_SPREAD_S` seconds away) the baseline, also seated, is added to the
still periods. On the 12 subjects the estimate is sharp to about 30 s for 11, and for S4 the
baseline decides. Because it is an estimate, :data:`EDGE_MARGIN_S` seconds at each edge of every
condition are left out of the windows on this route. The offsets are logged per subject.

Windows lie within one condition, ``window-seconds`` long with a ``window-step-seconds`` step
(defaults 60 s and 15 s). The natural group is the subject; train / validation / test are chosen
by subject (``val-subjects``, ``test-subjects``: ids as the folders name them, e.g. ``S2``).

Standardisation is per subject: each subject's windows are scaled by that subject's own
per-channel mean and standard deviation over all its windows, labels unused, as a wrist device
calibrates on its own wearer. Skin conductance and temperature levels differ between people far
more than the conditions move them (real S7 at baseline 4.7 uS, S2 under stress 0.9 uS). Measured
on the 12 real subjects (test S2 and S3, the hybrid model trained centrally for 20 epochs), the
training subjects' common scale gave test accuracy 0.547 (majority class 0.587) and macro-AUC
0.652; per-subject scaling 0.751 and 0.799. It reads the held-out subjects' unlabelled windows, as
a deployed device reads its wearer's; ``channel_mean`` / ``channel_std`` (training subjects) are
kept for the summaries.

The pickle route unpickles a file, which can run code: the reader only opens ``SX.pkl`` from the
folder the user names (never bytes received over the network) and its unpickler refuses any class
other than numpy arrays and dtypes.
"""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.format_error import DataFormatError
from data_prep.spec import SPLIT_CODES, DatasetSpec, ReadOptions
from data_prep.windows import WindowSet, check_held_out, train_scale

CLASSES = ("baseline", "stress", "amusement")
PICKLE_LABELS = {1: "baseline", 2: "stress", 3: "amusement"}  # the readme's ids; 4 (meditation) and 5-7 not used
QUEST_CONDITIONS = {"Base": "baseline", "TSST": "stress", "Fun": "amusement"}
STILL_CONDITIONS = ("Medi 1", "Medi 2")  # seated guided meditations: the alignment's still periods
WRIST_SIGNALS: dict[str, tuple[str, ...]] = {"ACC": ("acc_x", "acc_y", "acc_z"), "BVP": ("bvp",), "EDA": ("eda",),
                                             "TEMP": ("temp",)}
CHANNELS: tuple[str, ...] = tuple(c for names in WRIST_SIGNALS.values() for c in names)
RATES = (32, 64)
DEFAULT_WINDOW_SECONDS, DEFAULT_STEP_SECONDS = 60.0, 15.0
DEFAULT_VAL_SUBJECTS, DEFAULT_TEST_SUBJECTS = ("S4", "S5"), ("S2", "S3")
EDGE_MARGIN_S = 60  # wrist-only route: seconds left out at each condition edge, above the estimate's ~30 s spread
AMBIGUOUS_COST_RATIO, AMBIGUOUS_SPREAD_S = 1.15, 120
PICKLE_RATE = 700

WESAD_SPEC = DatasetSpec(
    name="wesad", title="WESAD wearable stress and affect detection (wrist, Empatica E4)", channels=CHANNELS,
    sampling_rates=RATES, window_seconds=DEFAULT_WINDOW_SECONDS, classes=CLASSES, task="multiclass", group="subject",
    splits={"train": "the other subjects", "val": f"val-subjects, default {', '.join(DEFAULT_VAL_SUBJECTS)}",
            "test": f"test-subjects, default {', '.join(DEFAULT_TEST_SUBJECTS)}"},
    default_subjects={"val": DEFAULT_VAL_SUBJECTS, "test": DEFAULT_TEST_SUBJECTS},
    source="https://ubicomp.eti.uni-siegen.de/home/datasets/icmi18/ (WESAD.zip)",
    layout="subject folders S2 ... S17, each with SX.pkl, or SX_E4_Data/ (or SX_E4_Data.zip) and SX_quest.csv",
)


def subject_folders(root: Path) -> dict[str, Path]:
    """Subject id ('S2') -> its folder, for folders ``SX`` holding ``SX.pkl`` or ``SX_quest.csv``."""
    found = {}
    for folder in sorted(root.glob("S*"), key=lambda p: (len(p.name), p.name)):
        name = folder.name
        if folder.is_dir() and name[1:].isdigit() and ((folder / f"{name}.pkl").is_file()
                                                       or (folder / f"{name}_quest.csv").is_file()):
            found[name] = folder
    return found


def check_wesad_folder(path: str, sampling_rate: int = RATES[0]) -> None:
    """Fail early, phrased as what was expected, when ``path`` holds no WESAD subject folder."""
    root = Path(path)
    if not root.is_absolute():
        raise ValueError(f"an absolute path to a WESAD folder, got relative path '{path}'")
    if not root.is_dir():
        raise ValueError(f"an existing WESAD folder, but '{path}' does not exist")
    if not subject_folders(root):
        raise ValueError(f"a WESAD folder holding subject folders SX with SX.pkl or SX_quest.csv; '{path}' has none")


# --- the protocol schedule ---------------------------------------------------------------------

def _minutes_seconds(text: str, path: Path, row: str) -> float:
    """'50.3' -> 3030.0 s: minutes, then seconds written as two digits whose trailing zero may be lost."""
    minutes, _, seconds = text.strip().partition(".")
    seconds = (seconds + "0")[:2] if seconds else "00"
    if not minutes.isdigit() or not seconds.isdigit() or int(seconds) >= 60:
        raise DataFormatError(f"{path}: {row} time {text!r} is not minutes.seconds (e.g. 39.55)")
    return int(minutes) * 60.0 + int(seconds)


def read_schedule(path: Path) -> dict[str, tuple[float, float]]:
    """Condition name ('Base', 'TSST', 'Medi 1', ...) -> (start, end) in seconds from the RespiBAN start."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: cannot be read as text ({err}); expected the WESAD SX_quest.csv") from None
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.split(";")]
        key = cells[0].removeprefix("#").strip()
        if key in ("ORDER", "START", "END") and key not in rows:
            rows[key] = [c for c in cells[1:] if c]
    missing = [k for k in ("ORDER", "START", "END") if k not in rows]
    if missing:
        raise DataFormatError(f"{path}: no {', '.join('# ' + k for k in missing)} row; expected the protocol "
                              "schedule rows ORDER, START and END")
    order = rows["ORDER"]
    if not (len(order) == len(rows["START"]) == len(rows["END"])):
        raise DataFormatError(f"{path}: ORDER names {len(order)} conditions but START has {len(rows['START'])} and "
                              f"END {len(rows['END'])} times; expected one start and one end per condition")
    schedule = {}
    for name, start, end in zip(order, rows["START"], rows["END"]):
        begin, finish = _minutes_seconds(start, path, "START"), _minutes_seconds(end, path, "END")
        if finish <= begin:
            raise DataFormatError(f"{path}: condition {name!r} ends ({end}) before it starts ({start})")
        schedule[name] = (begin, finish)
    absent = [c for c in (*QUEST_CONDITIONS, *STILL_CONDITIONS) if c not in schedule]
    if absent:
        raise DataFormatError(f"{path}: ORDER lacks {absent}; expected the WESAD conditions Base, TSST, Fun, "
                              "Medi 1 and Medi 2")
    return schedule


# --- the wrist files ---------------------------------------------------------------------------

@dataclass(frozen=True)
class E4Signal:
    """One E4 file: its samples (n, columns), start (Unix seconds) and rate (Hz)."""

    values: np.ndarray
    start: float
    rate: float


def parse_e4_csv(text: str, name: str, columns: int) -> E4Signal:
    """An E4 CSV: start time row, rate row, then ``columns`` comma-separated numbers per row."""
    lines = text.splitlines()
    if len(lines) < 3:
        raise DataFormatError(f"{name}: {len(lines)} line(s); expected a start-time row, a rate row and samples")
    try:
        start = float(lines[0].split(",")[0])
        rate = float(lines[1].split(",")[0])
    except ValueError:
        raise DataFormatError(f"{name}: first rows {lines[0]!r}, {lines[1]!r}; expected the start as a Unix time "
                              "and the rate in Hz") from None
    if not rate > 0:
        raise DataFormatError(f"{name}: rate {rate}; expected a positive rate in Hz")
    try:
        values = np.loadtxt(io.StringIO("\n".join(lines[2:])), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataFormatError(f"{name}: {err}; expected {columns} comma-separated number(s) per row") from None
    if values.shape[1] != columns:
        raise DataFormatError(f"{name}: {values.shape[1]} column(s); expected {columns}")
    return E4Signal(values, start, rate)


def read_e4(folder: Path, subject: str) -> dict[str, E4Signal]:
    """The four raw wrist signals from ``SX_E4_Data/`` or, failing that, ``SX_E4_Data.zip``."""
    unzipped, archive = folder / f"{subject}_E4_Data", folder / f"{subject}_E4_Data.zip"
    signals = {}
    if unzipped.is_dir():
        for key, names in WRIST_SIGNALS.items():
            path = unzipped / f"{key}.csv"
            if not path.is_file():
                raise DataFormatError(f"{unzipped}: no {key}.csv; expected ACC.csv, BVP.csv, EDA.csv and TEMP.csv")
            signals[key] = parse_e4_csv(path.read_text(), str(path), len(names))
        return signals
    if not archive.is_file():
        raise DataFormatError(f"{folder}: neither {subject}.pkl nor {subject}_E4_Data/ nor {subject}_E4_Data.zip; "
                              "expected one of the published forms of a WESAD subject")
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = {Path(n).name: n for n in zipped.namelist()}
            for key, names in WRIST_SIGNALS.items():
                if f"{key}.csv" not in members:
                    raise DataFormatError(f"{archive}: no {key}.csv; expected ACC.csv, BVP.csv, EDA.csv and TEMP.csv")
                text = zipped.read(members[f"{key}.csv"]).decode("utf-8")
                signals[key] = parse_e4_csv(text, f"{archive}:{key}.csv", len(names))
    except zipfile.BadZipFile:
        raise DataFormatError(f"{archive}: not a zip archive; expected the published SX_E4_Data.zip") from None
    return signals


def accelerometer_activity(acc: np.ndarray, rate: float) -> np.ndarray:
    """Mean absolute change of the three axes between samples, per whole second (1/64 g per sample)."""
    change = np.abs(np.diff(acc, axis=0)).sum(axis=1)
    per_second = int(round(rate))
    seconds = change.size // per_second
    return change[:seconds * per_second].reshape(seconds, per_second).mean(axis=1)


@dataclass(frozen=True)
class Alignment:
    """The E4 time (s from its start) of the RespiBAN start, and which periods decided it."""

    offset: float
    still_periods: tuple[str, ...]


def align_schedule(activity: np.ndarray, schedule: dict[str, tuple[float, float]]) -> Alignment:
    """The shift of the schedule minimising mean activity in its still periods (module docstring)."""
    end = int(np.ceil(max(b for _, b in schedule.values())))
    shifts = activity.size - end
    if shifts <= 0:
        raise DataFormatError(f"the wrist recording lasts {activity.size} s, shorter than the protocol's {end} s; "
                              "expected the E4 to record the whole protocol")
    cumulative = np.concatenate([[0.0], np.cumsum(activity)])
    best = None
    for periods in (STILL_CONDITIONS, (*STILL_CONDITIONS, "Base")):
        total, length = np.zeros(shifts), 0
        for name in periods:
            a, b = int(schedule[name][0]), int(schedule[name][1])
            total += cumulative[np.arange(shifts) + b] - cumulative[np.arange(shifts) + a]
            length += b - a
        cost = total / length
        best = int(np.argmin(cost))
        near = np.flatnonzero(cost <= cost[best] * AMBIGUOUS_COST_RATIO)
        if np.abs(near - best).max() <= AMBIGUOUS_SPREAD_S:
            break
    return Alignment(float(best), periods)


def _resample(signal: E4Signal, start: float, rate: int, count: int) -> np.ndarray:
    """Linear interpolation of each column onto ``count`` ticks at ``rate`` from Unix time ``start``."""
    source = signal.start + np.arange(signal.values.shape[0]) / signal.rate
    grid = start + np.arange(count) / rate
    return np.stack([np.interp(grid, source, column) for column in signal.values.T]).astype(np.float32)


def _wrist_grid(signals: dict[str, E4Signal], rate: int) -> tuple[np.ndarray, float]:
    """(channels, T) on one grid over the span every signal covers, and the grid's start (Unix s)."""
    start = max(s.start for s in signals.values())
    stop = min(s.start + (s.values.shape[0] - 1) / s.rate for s in signals.values())  # the last samples
    count = int(np.floor((stop - start) * rate + 1e-9)) + 1
    return np.concatenate([_resample(signals[k], start, rate, count) for k in WRIST_SIGNALS]), start


@dataclass(frozen=True)
class SubjectRecording:
    """One subject's wrist channels on one grid and its labelled intervals (seconds on that grid)."""

    channels: np.ndarray  # (6, T) float32
    intervals: list[tuple[str, float, float]]  # (class, start, end)
    route: str
    alignment: Alignment | None = None


def read_wrist_subject(folder: Path, subject: str, rate: int) -> SubjectRecording:
    """The wrist-only route: E4 files aligned to ``SX_quest.csv`` as the module docstring says."""
    schedule = read_schedule(folder / f"{subject}_quest.csv")
    signals = read_e4(folder, subject)
    acc = signals["ACC"]
    try:
        alignment = align_schedule(accelerometer_activity(acc.values, acc.rate), schedule)
    except DataFormatError as err:
        raise DataFormatError(f"{folder}: {err}") from None
    channels, grid_start = _wrist_grid(signals, rate)
    shift = acc.start + alignment.offset - grid_start  # grid seconds of the RespiBAN start
    intervals = [(QUEST_CONDITIONS[name], a + shift + EDGE_MARGIN_S, b + shift - EDGE_MARGIN_S)
                 for name, (a, b) in schedule.items() if name in QUEST_CONDITIONS]
    return SubjectRecording(channels, intervals, "wrist files", alignment)


# --- the synchronised pickle -------------------------------------------------------------------

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and builtins; any other class is refused, so no code runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"class {module}.{name} is not a numpy array part")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """``SX.pkl`` as the published dict; one message naming what is missing or malformed."""
    try:
        with path.open("rb") as handle:
            content = _ArraysOnlyUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DataFormatError(f"{path}: cannot be read as the WESAD pickle ({err}); expected a dict of numpy "
                              "arrays") from None
    if not isinstance(content, dict) or "signal" not in content or "label" not in content:
        keys = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise DataFormatError(f"{path}: holds {keys}; expected a dict with keys 'signal', 'label' and 'subject'")
    wrist = content["signal"].get("wrist") if isinstance(content["signal"], dict) else None
    if not isinstance(wrist, dict):
        raise DataFormatError(f"{path}: 'signal' has no 'wrist' dict; expected signal -> wrist -> ACC, BVP, EDA, "
                              "TEMP")
    for key, names in WRIST_SIGNALS.items():
        values = wrist.get(key)
        if not isinstance(values, np.ndarray) or values.ndim != 2 or values.shape[1] != len(names):
            shape = getattr(values, "shape", None)
            raise DataFormatError(f"{path}: signal/wrist/{key} has shape {shape}; expected (n, {len(names)})")
    label = content["label"]
    if not isinstance(label, np.ndarray) or label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
        raise DataFormatError(f"{path}: 'label' is {getattr(label, 'dtype', type(label).__name__)} of shape "
                              f"{getattr(label, 'shape', None)}; expected a 1-D integer array at 700 Hz")
    return content


def read_pickle_subject(folder: Path, subject: str, rate: int) -> SubjectRecording:
    """The synchronised route: wrist signals from ``SX.pkl``, intervals from its 700 Hz labels."""
    path = folder / f"{subject}.pkl"
    content = read_pickle(path)
    native = {"ACC": 32.0, "BVP": 64.0, "EDA": 4.0, "TEMP": 4.0}  # the readme's wrist rates
    signals = {k: E4Signal(np.asarray(content["signal"]["wrist"][k], dtype=np.float64), 0.0, native[k])
               for k in WRIST_SIGNALS}
    channels, _ = _wrist_grid(signals, rate)
    label = content["label"]
    change = np.flatnonzero(np.diff(label) != 0) + 1
    bounds = np.concatenate([[0], change, [label.size]])
    intervals = [(PICKLE_LABELS[int(label[a])], a / PICKLE_RATE, b / PICKLE_RATE)
                 for a, b in zip(bounds[:-1], bounds[1:]) if int(label[a]) in PICKLE_LABELS]
    return SubjectRecording(channels, intervals, "synchronised pickle")


def read_subject(folder: Path, subject: str, rate: int) -> SubjectRecording:
    """``SX.pkl`` when the folder has it, else the wrist files with the schedule."""
    if (folder / f"{subject}.pkl").is_file():
        return read_pickle_subject(folder, subject, rate)
    return read_wrist_subject(folder, subject, rate)


# --- windows -----------------------------------------------------------------------------------

@dataclass(eq=False)
class WESADData(WindowSet):
    sampling_rate: int = RATES[0]
    subjects: tuple[str, ...] = ()
    offsets: dict[str, float] = field(default_factory=dict)  # wrist route: E4 seconds of the RespiBAN start
    subject_mean: dict[int, np.ndarray] = field(default_factory=dict)  # group -> (channels,) over its windows
    subject_std: dict[int, np.ndarray] = field(default_factory=dict)

    def standardised(self, idx: np.ndarray | list[int]) -> np.ndarray:
        """Each window scaled by its own subject's channel statistics (module docstring)."""
        positions = np.asarray(idx, dtype=np.int64).reshape(-1)
        groups = self.groups[positions]
        mean = np.stack([self.subject_mean[int(g)] for g in groups]) if positions.size else self.channel_mean[None]
        std = np.stack([self.subject_std[int(g)] for g in groups]) if positions.size else self.channel_std[None]
        return ((self.signals[positions] - mean[:, :, None]) / std[:, :, None]).astype(np.float32)


def condition_windows(recording: SubjectRecording, rate: int, window: int, step: int) -> tuple[list, list]:
    """Windows of ``window`` ticks every ``step`` ticks, each wholly inside one labelled interval."""
    signals, labels = [], []
    total = recording.channels.shape[1]
    for name, start, end in recording.intervals:
        first, last = max(0, int(np.ceil(start * rate))), min(total, int(np.floor(end * rate)))
        for offset in range(first, last - window + 1, step):
            signals.append(recording.channels[:, offset:offset + window])
            labels.append(CLASSES.index(name))
    return signals, labels


def load_wesad(root: str | Path, options: ReadOptions, verbose: bool = True) -> WESADData:
    """Windows of every subject folder in ``root`` (see the module docstring)."""
    root = Path(root)
    try:
        check_wesad_folder(str(root.resolve()))
    except ValueError as err:
        raise DataFormatError(f"expected {err}") from None
    rate = options.sampling_rate if options.sampling_rate in RATES else RATES[0]
    if options.sampling_rate not in (0, *RATES):
        raise DataFormatError(f"run config: key 'sampling-rate' has value {options.sampling_rate}; expected one of "
                              f"{', '.join(map(str, RATES))} (Hz) for dataset 'wesad'")
    folders = subject_folders(root)
    val = options.val_subjects or DEFAULT_VAL_SUBJECTS
    test = options.test_subjects or DEFAULT_TEST_SUBJECTS
    check_held_out(val, test, list(folders), root)
    window = int(round((options.window_seconds or DEFAULT_WINDOW_SECONDS) * rate))
    step = int(round((options.window_step_seconds or DEFAULT_STEP_SECONDS) * rate))
    signals, labels, groups, offsets = [], [], [], {}
    for subject, folder in folders.items():
        recording = read_subject(folder, subject, rate)
        windows, classes = condition_windows(recording, rate, window, step)
        if not windows:
            raise DataFormatError(f"{folder}: no complete {window / rate:g} s window inside a baseline, stress or "
                                  "amusement condition; expected the WESAD protocol")
        signals += windows
        labels += classes
        groups += [int(subject[1:])] * len(windows)
        note = ""
        if recording.alignment is not None:
            offsets[subject] = recording.alignment.offset
            note = (f", E4 started {recording.alignment.offset:.0f} s before the protocol clock "
                    f"(still periods: {', '.join(recording.alignment.still_periods)})")
        if verbose:
            counts = ", ".join(f"{CLASSES[c]} {classes.count(c)}" for c in range(len(CLASSES)))
            print(f"[data_prep.wesad] {subject} ({recording.route}): {len(windows)} windows ({counts}){note}",
                  file=sys.stderr, flush=True)
    group_array = np.array(groups, dtype=np.int64)
    split = np.where(np.isin(group_array, [int(s[1:]) for s in test]), SPLIT_CODES["test"],
                     np.where(np.isin(group_array, [int(s[1:]) for s in val]), SPLIT_CODES["val"],
                              SPLIT_CODES["train"]))
    stacked = np.stack(signals).astype(np.float32)
    mean, std = train_scale(stacked, split, root)
    subject_mean, subject_std = {}, {}
    for group in np.unique(group_array):
        own = stacked[group_array == group]
        subject_mean[int(group)] = own.mean(axis=(0, 2), dtype=np.float64).astype(np.float32)
        spread = own.std(axis=(0, 2), dtype=np.float64)
        subject_std[int(group)] = np.where(spread > 0, spread, 1.0).astype(np.float32)
    return WESADData(signals=stacked, labels=np.eye(len(CLASSES), dtype=np.float32)[labels], groups=group_array,
                     split=split, channel_mean=mean, channel_std=std, cache_path=root.resolve(), sampling_rate=rate,
                     subjects=tuple(folders), offsets=offsets, subject_mean=subject_mean, subject_std=subject_std)
