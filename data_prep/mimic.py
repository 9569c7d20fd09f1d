"""MIMIC-III waveform reader (WFDB records of the MIMIC-III Waveform Database Matched Subset): hypotension ahead.

Source: MIMIC-III Waveform Database Matched Subset (Moody et al., PhysioNet, credentialed access,
https://physionet.org/content/mimic3wdb-matched/). One folder per patient (``p000020/``) holds its
records, each a WFDB multi-segment record named ``p000020-2183-04-28-17-47``: a master header listing
a layout header (``3544749_layout``, every channel the record ever has; length 0), gaps (``~``) and
segments (``3544749_0001`` ...; each a single-segment record in format 80 at 125 Hz with its own
channel subset), and beside it the numerics record ``p000020-2183-04-28-17-47n`` (HR, ABPSys,
ABPDias, ABPMean, SpO2 ... once a minute, format 16). The master header and its numerics share a
start (base date and time); a segment starts where the master header's running sample count puts it.
Single-segment records (main database, e.g. ``3000003_0003``) are read as records of one segment.

Records: every header in the folder tree that is neither a layout (``*_layout``), nor numerics
(names ending in ``n``), nor a segment listed by a master header in its folder. RECORDS files are not
needed. Headers and signals are read with ``wfdb``: each present segment separately, its channels
found by name. A segment whose header or signal file is absent (partial downloads) is skipped with a
warning on stderr naming it; a record with no segment left is an error naming it; a truncated signal
file is an error naming the file and the bytes expected (:mod:`data_prep.wfdb_files`).

Task (binary, :data:`CLASSES`): hypotension ahead. A window ending at time ``t`` is ``hypotension``
when the numerics ABPMean is below :data:`MAP_THRESHOLD_MMHG` (65 mmHg, the usual intra-operative and
ICU hypotension threshold) at any numerics sample in ``(t, t + HORIZON_MINUTES]``, else
``no_hypotension``. Numerics sample ``k`` lies ``k / fs`` seconds after the numerics start. ABPMean 0
(or below, or invalid) means not measured and is ignored; a window with no measured ABPMean in its
horizon cannot be labelled and is dropped and counted. A record without numerics (or whose numerics
lack ABPMean) is skipped with a warning; when no record has them the folder is refused.

Channels: :data:`DEFAULT_CHANNELS` = II and ABP: lead II is the ECG lead most often recorded in
MIMIC-III and ABP carries the pressure the label comes from; ``load_mimic(channels=...)`` takes any
other selection (e.g. II, V, PLETH, ABP). A window is kept only when every selected channel is in its
segment and has no invalid sample (NaN); windows dropped for a missing channel, a NaN or no label are
counted apart. Windows lie within one segment, ``window-seconds`` long every ``window-step-seconds``
(defaults 10 s and 5 s). MIMIC-III waveforms are 125 Hz; a segment at another rate than the requested
one (:data:`SAMPLING_RATES`) has each kept window resampled by ``scipy.signal.resample_poly``
(polyphase anti-alias filter, edges padded along a fitted line so the window's ends are not pulled to 0).

Split: by default chronological within each record: its first 70 % of windows train, the next 15 %
validation, the last 15 % test. The same patient is then in every split, and the windows at each cut
overlap their neighbours and share part of the horizon: this measures prediction later in a known
patient's stay, not on a new patient. With ``val-subjects`` and ``test-subjects`` (both, or neither)
the split is by patient instead: an id is a record's name before its first ``-`` (``p000020`` for
``p000020-2183-04-28-17-47``; a main-database record such as ``3000003_0003`` is its own id), and every
record of a named patient goes to that split, the others train. The natural group is the record.
Per-channel standardisation uses the training windows only.
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import wfdb
from scipy.signal import resample_poly

from data_prep.format_error import DataFormatError
from data_prep.spec import SPLIT_CODES, DatasetSpec, ReadOptions
from data_prep.wfdb_files import truncated_signal_file
from data_prep.windows import WindowSet, check_held_out, train_scale

RATE = 125
SAMPLING_RATES: tuple[int, ...] = (125, 100)  # 125 Hz as recorded (the default); 100 Hz resampled
DEFAULT_CHANNELS: tuple[str, ...] = ("II", "ABP")
CLASSES: tuple[str, ...] = ("no_hypotension", "hypotension")
MAP_THRESHOLD_MMHG = 65.0
HORIZON_MINUTES = 10.0
MAP_SIGNAL = "ABPMean"
DEFAULT_WINDOW_SECONDS, DEFAULT_STEP_SECONDS = 10.0, 5.0
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
LAYOUT_SUFFIX, NUMERICS_SUFFIX, GAP = "_layout", "n", "~"
NO_DATE = dt.date(1, 1, 1)  # stands in for a header's absent base date

MIMIC_SPEC = DatasetSpec(
    name="mimic", channels=DEFAULT_CHANNELS,
    title=f"MIMIC-III Waveform Database Matched Subset (PhysioNet); hypotension = numerics ABPMean below "
          f"{MAP_THRESHOLD_MMHG:g} mmHg within the next {HORIZON_MINUTES:g} min",
    sampling_rates=SAMPLING_RATES, window_seconds=DEFAULT_WINDOW_SECONDS, classes=CLASSES, task="multiclass",
    group="record",
    splits={"train": "first 70 % of each record's windows in time (or the patients not named)",
            "val": "next 15 % of each record's windows (or val-subjects)",
            "test": "last 15 % of each record's windows (or test-subjects)"},
    source="https://physionet.org/content/mimic3wdb-matched/ (credentialed access)",
    layout="patient folders pNNNNNN/ with master, layout and segment headers, .dat files and the numerics record "
           "<record>n.hea",
)


@dataclass(frozen=True)
class Segment:
    """A present segment of a record: where it lies in the record and what it holds."""

    path: Path  # header path without '.hea'
    start: int  # first sample, counted in the record from its start
    length: int  # samples
    fs: float
    channels: tuple[str, ...]


@dataclass(frozen=True)
class WaveformRecord:
    """A master (or single-segment) header: its name, start, layout channels and present segments."""

    name: str
    path: Path  # header path without '.hea'
    fs: float
    start: dt.datetime | None  # None when the header has no base time
    channels: tuple[str, ...]  # the layout's (multi-segment) or the header's own
    segments: tuple[Segment, ...]
    absent: tuple[str, ...]  # listed segments whose header or signal file is missing


def split_id(record: str) -> str:
    """The id ``val-subjects`` / ``test-subjects`` name: the patient (``p000020``), or the record itself."""
    return record.split("-")[0]


def find_records(root: Path) -> dict[str, Path]:
    """Record name -> header path without '.hea', for every waveform record in the tree (module docstring)."""
    headers = sorted(root.rglob("*.hea"))
    segments: set[Path] = set()
    candidates: list[Path] = []
    for header in headers:
        name = header.stem
        if name.endswith((LAYOUT_SUFFIX, NUMERICS_SUFFIX)):
            continue
        with open(header, encoding="latin-1") as handle:
            first = handle.readline().split()
        if first and "/" in first[0]:  # 'name/segments': a master header lists its segments below
            segments.update(header.parent / line.split()[0] for line in header.read_text(encoding="latin-1")
                            .splitlines()[1:] if line.strip() and not line.startswith("#"))
        candidates.append(header.with_suffix(""))
    records: dict[str, Path] = {}
    for path in candidates:
        if path in segments:
            continue
        if path.name in records:
            raise DataFormatError(f"{path}.hea and {records[path.name]}.hea: two records named {path.name!r}; "
                                  "expected unique record names")
        records[path.name] = path
    return records


def check_mimic_folder(path: str, sampling_rate: int = RATE) -> None:
    """Fail early, phrased as what was expected, when ``path`` holds no MIMIC-III waveform record header."""
    root = Path(path)
    if not root.is_absolute():
        raise ValueError(f"an absolute path to a MIMIC-III waveform folder, got relative path '{path}'")
    if not root.is_dir():
        raise ValueError(f"an existing MIMIC-III waveform folder, but '{path}' does not exist")
    if sampling_rate and sampling_rate not in SAMPLING_RATES:  # 0: the default rate
        raise ValueError(f"a sampling rate of {' or '.join(map(str, SAMPLING_RATES))} Hz for MIMIC-III, "
                         f"got {sampling_rate}")
    if not find_records(root):
        raise ValueError(f"a MIMIC-III waveform folder holding WFDB record headers (e.g. "
                         f"p000020/p000020-2183-04-28-17-47.hea); '{path}' has none")


def _read_header(path: Path):
    try:
        return wfdb.rdheader(str(path))
    except Exception as exc:  # wfdb raises many types for a malformed header
        raise DataFormatError(f"{path}.hea is not a valid WFDB header ({exc}); expected a WFDB record header") \
            from None


def _start(header) -> dt.datetime | None:
    if header.base_time is None:
        return None
    return dt.datetime.combine(header.base_date or NO_DATE, header.base_time)


def _absent_signal_file(path: Path, header) -> str | None:
    """The first signal file ``header`` (of ``path``) names that is absent, else None."""
    for name in dict.fromkeys(header.file_name or []):
        if not (path.parent / name).is_file():
            return name
    return None


def read_record_header(path: Path) -> WaveformRecord:
    """A record's header and its present segments; absent ones are listed, a truncated one is an error."""
    header = _read_header(path)
    if isinstance(header, wfdb.MultiRecord):
        listed = [(str(name), int(length)) for name, length in zip(header.seg_name, header.seg_len)]
        layout = listed[0][0] if listed and listed[0][1] == 0 else None  # variable layout: segment 0, length 0
        channels = tuple(_read_header(path.parent / layout).sig_name or ()) if layout else ()
    else:
        listed = [(path.name, int(header.sig_len))]
        layout, channels = None, tuple(header.sig_name or ())
    present, absent, start = [], [], 0
    for name, length in listed:
        if name == GAP or name == layout:
            start += length
            continue
        segment = path.parent / name
        own = None if not segment.with_suffix(".hea").is_file() else header if segment == path \
            else _read_header(segment)
        missing = f"{name}.hea" if own is None else _absent_signal_file(segment, own)
        if missing is not None:
            absent.append(f"{name} ({missing} absent)")
            start += length
            continue
        problem = truncated_signal_file(segment)
        if problem is not None:
            raise DataFormatError(problem)
        if int(own.sig_len) != length or float(own.fs) != float(header.fs):
            raise DataFormatError(f"{segment}.hea: {own.sig_len} samples at {own.fs} Hz, expected {length} at "
                                  f"{header.fs} Hz as listed in {path}.hea")
        present.append(Segment(segment, start, length, float(own.fs), tuple(own.sig_name or ())))
        if not layout and not channels:  # fixed layout: every segment has the first one's channels
            channels = present[-1].channels
        start += length
    return WaveformRecord(path.name, path, float(header.fs), _start(header), channels, tuple(present),
                          tuple(absent))


def read_segment(segment: Segment, channels: tuple[str, ...], physical: bool = True) -> np.ndarray:
    """(samples, channels) of one segment: physical float64 (NaN where invalid) or digital int64."""
    try:
        record = wfdb.rdrecord(str(segment.path), channel_names=list(channels), physical=physical)
    except Exception as exc:  # wfdb raises many types for malformed files
        raise DataFormatError(truncated_signal_file(segment.path)
                              or f"{segment.path}.hea/.dat could not be read as a WFDB record: {exc}") from None
    values = record.p_signal if physical else record.d_signal
    if tuple(record.sig_name) != tuple(channels) or values.shape != (segment.length, len(channels)):
        raise DataFormatError(f"{segment.path}: read channels {record.sig_name} of shape {values.shape}, expected "
                              f"{list(channels)} of {segment.length} samples")
    return values


@dataclass(frozen=True)
class Numerics:
    """A record's ABPMean readings: seconds after the waveform start, mmHg (NaN = not measured)."""

    seconds: np.ndarray
    mmhg: np.ndarray


def read_numerics(record: WaveformRecord) -> Numerics | str:
    """The record's ``<record>n`` ABPMean, or a sentence saying why the record has none to label with."""
    path = record.path.with_name(record.name + NUMERICS_SUFFIX)
    if not path.with_suffix(".hea").is_file():
        return f"no numerics record {path.name}.hea beside it"
    header = _read_header(path)
    names = list(header.sig_name or [])
    if MAP_SIGNAL not in names:
        return f"its numerics {path}.hea have no {MAP_SIGNAL} (signals {', '.join(names)})"
    missing = _absent_signal_file(path, header)
    if missing is not None:
        return f"its numerics signal file {path.parent / missing} is absent"
    for where, start in ((path, _start(header)), (record.path, record.start)):
        if start is None:
            raise DataFormatError(f"{where}.hea has no base time; expected one to align the numerics with the "
                                  "waveforms")
    if not header.fs or float(header.fs) <= 0:
        raise DataFormatError(f"{path}.hea: sampling frequency {header.fs}; expected a positive rate (1/60 Hz)")
    values = read_segment(Segment(path, 0, int(header.sig_len), float(header.fs), tuple(names)), (MAP_SIGNAL,))[:, 0]
    numerics_start = _start(header)
    if header.base_date is None or record.start.year == NO_DATE.year:  # a header without a date: the other's date
        numerics_start = dt.datetime.combine(record.start.date(), header.base_time)
    offset = (numerics_start - record.start).total_seconds()
    seconds = np.round(offset + np.arange(values.size) / float(header.fs), 6)  # header times are to the ms
    return Numerics(seconds, np.where(values > 0, values, np.nan))


def hypotension_labels(end_seconds: np.ndarray, numerics: Numerics,
                       horizon_minutes: float = HORIZON_MINUTES) -> tuple[np.ndarray, np.ndarray]:
    """(label 0/1, labelled) per window end: measured ABPMean below the threshold in (t, t + horizon]."""
    measured = np.isfinite(numerics.mmhg)
    low = measured & (numerics.mmhg < MAP_THRESHOLD_MMHG)
    measured_before = np.concatenate([[0], np.cumsum(measured)])
    low_before = np.concatenate([[0], np.cumsum(low)])
    first = np.searchsorted(numerics.seconds, end_seconds, side="right")
    last = np.searchsorted(numerics.seconds, end_seconds + 60.0 * horizon_minutes, side="right")
    labelled = measured_before[last] - measured_before[first] > 0
    return (low_before[last] - low_before[first] > 0).astype(np.int64), labelled


def _resampled(window: np.ndarray, fs: float, rate: int, samples: int) -> np.ndarray:
    if fs == rate:
        return window
    ratio = Fraction(rate) / Fraction(fs).limit_denominator(1000)
    out = resample_poly(window, ratio.numerator, ratio.denominator, axis=-1, padtype="line")
    return out[..., :samples]


@dataclass(eq=False)
class MimicData(WindowSet):
    channels: tuple[str, ...] = ()
    records: tuple[str, ...] = ()  # every waveform record found, sorted
    segments: tuple[str, ...] = ()  # header paths of the segments windows come from
    segment_of: np.ndarray | None = None  # (N,) int64 index into segments
    window_start: np.ndarray | None = None  # (N,) int64 first sample in the record, at the record's rate
    window_end_seconds: np.ndarray | None = None  # (N,) float64 seconds after the record's start
    windows_per_record: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> windows
    skipped: tuple[str, ...] = ()  # warnings: records and segments left out, and why


def _chosen_ids(options: ReadOptions, records: dict[str, Path], root: Path) -> tuple[set[str], set[str]]:
    val, test = set(options.val_subjects), set(options.test_subjects)
    if bool(val) != bool(test):
        given, empty = ("val-subjects", "test-subjects") if val else ("test-subjects", "val-subjects")
        raise DataFormatError(f"run config: key '{given}' names patients but '{empty}' is empty; expected both "
                              "(split by patient) or neither (chronological split within each record)")
    check_held_out(options.val_subjects, options.test_subjects, sorted({split_id(name) for name in records}), root,
                   unit="patient")
    return val, test


def _chronological_split(n: int) -> np.ndarray:
    codes = np.full(n, SPLIT_CODES["train"], dtype=np.int64)
    codes[round(SPLIT_FRACTIONS["train"] * n):] = SPLIT_CODES["val"]
    codes[round((SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["val"]) * n):] = SPLIT_CODES["test"]
    return codes


def load_mimic(root: str | Path, options: ReadOptions, verbose: bool = True,
               channels: tuple[str, ...] = DEFAULT_CHANNELS) -> MimicData:
    """Labelled windows of every record with numerics under ``root`` (see the module docstring)."""
    root = Path(root)
    try:
        check_mimic_folder(str(root.resolve()), options.sampling_rate)
    except ValueError as err:
        raise DataFormatError(f"expected {err}") from None
    channels = tuple(channels)
    if not channels or len(set(channels)) != len(channels):
        raise DataFormatError(f"channels {list(channels)}: expected distinct channel names, e.g. "
                              f"{list(DEFAULT_CHANNELS)}")
    records = find_records(root)
    val_ids, test_ids = _chosen_ids(options, records, root)
    window_seconds = options.window_seconds or DEFAULT_WINDOW_SECONDS
    step_seconds = options.window_step_seconds or DEFAULT_STEP_SECONDS
    rate = options.sampling_rate or RATE
    samples = round(window_seconds * rate)
    names = tuple(records)
    signals, labels, groups, split, segment_of, starts, ends = [], [], [], [], [], [], []
    segment_paths: list[str] = []
    dropped = {"channel missing": 0, "invalid sample": 0, "no ABPMean in horizon": 0}
    skipped: list[str] = []
    per_record: dict[str, int] = {}
    labelled_records = 0

    def warn(message: str) -> None:
        skipped.append(message)
        print(f"[data_prep.mimic] warning: {message}", file=sys.stderr, flush=True)

    for group, (name, path) in enumerate(records.items()):
        record = read_record_header(path)
        numerics = read_numerics(record)
        if isinstance(numerics, str):
            warn(f"record {path} skipped: {numerics}; its windows cannot be labelled")
            continue
        labelled_records += 1
        if record.absent:
            warn(f"record {path}: segment(s) {', '.join(record.absent)} skipped")
        if not record.segments:
            raise DataFormatError(f"record {path}: none of its listed segments is present "
                                  f"({', '.join(record.absent)}); expected at least one")
        n_before = len(labels)
        window = round(window_seconds * record.fs)
        step = round(step_seconds * record.fs)
        for segment in record.segments:
            offsets = np.arange(0, segment.length - window + 1, step, dtype=np.int64)
            if not offsets.size:
                continue
            if not set(channels) <= set(segment.channels):
                dropped["channel missing"] += int(offsets.size)
                continue
            end_seconds = (segment.start + offsets + window) / record.fs
            label, labelled = hypotension_labels(end_seconds, numerics)
            dropped["no ABPMean in horizon"] += int((~labelled).sum())
            if not labelled.any():
                continue
            values = read_segment(segment, channels).T  # (channels, samples)
            segment_paths.append(str(segment.path))
            for offset, end, cls in zip(offsets[labelled], end_seconds[labelled], label[labelled]):
                block = values[:, offset:offset + window]
                if np.isnan(block).any():
                    dropped["invalid sample"] += 1
                    continue
                signals.append(_resampled(block, record.fs, rate, samples).astype(np.float32))
                labels.append(int(cls))
                groups.append(group)
                segment_of.append(len(segment_paths) - 1)
                starts.append(segment.start + int(offset))
                ends.append(float(end))
        count = len(labels) - n_before
        per_record[name] = count
        if split_id(name) in val_ids or split_id(name) in test_ids:
            split.append(np.full(count, SPLIT_CODES["val" if split_id(name) in val_ids else "test"], dtype=np.int64))
        elif val_ids:
            split.append(np.full(count, SPLIT_CODES["train"], dtype=np.int64))
        else:
            split.append(_chronological_split(count))
        if verbose:
            print(f"[data_prep.mimic] record {name}: {count} windows, {sum(labels[n_before:])} hypotension",
                  file=sys.stderr, flush=True)
    if not labelled_records:
        raise DataFormatError(f"{root}: no waveform record has a numerics record with {MAP_SIGNAL}; expected "
                              f"<record>{NUMERICS_SUFFIX}.hea beside the records (MIMIC-III matched subset)")
    if not signals:
        raise DataFormatError(f"{root}: no labelled {window_seconds:g}-s window with channels {', '.join(channels)} "
                              f"(dropped: {dropped}); expected segments holding them and ABPMean readings")
    split_codes = np.concatenate(split)
    stacked = np.stack(signals)
    mean, std = train_scale(stacked, split_codes, root)
    return MimicData(signals=stacked, labels=np.eye(len(CLASSES), dtype=np.float32)[labels],
                     groups=np.array(groups, dtype=np.int64), split=split_codes, channel_mean=mean, channel_std=std,
                     cache_path=root.resolve(), channels=channels, records=names, segments=tuple(segment_paths),
                     segment_of=np.array(segment_of, dtype=np.int64), window_start=np.array(starts, dtype=np.int64),
                     window_end_seconds=np.array(ends, dtype=np.float64), windows_per_record=per_record,
                     dropped=dropped, skipped=tuple(skipped))
