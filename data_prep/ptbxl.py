"""PTB-XL reader for the PhysioNet layout, with a parse-once cache.

Layout read (https://physionet.org/content/ptb-xl/): ``ptbxl_database.csv`` (one row per ECG),
``scp_statements.csv`` (one row per SCP code, first column = code) and WFDB records
``records100/NNNNN/NNNNN_lr.{hea,dat}`` (100 Hz) or ``records500/NNNNN/NNNNN_hr.{hea,dat}`` (500 Hz),
12 leads, 10 s.

Labels follow the PTB-XL benchmark (Strodthoff et al. 2021, ``aggregate_diagnostic``): every code of a
record's ``scp_codes`` dict, whatever its likelihood (0 included), that has ``diagnostic == 1`` in
``scp_statements.csv`` contributes its ``diagnostic_class``; the target is the multi-hot vector over
:data:`SUPERCLASSES`. Records with no diagnostic superclass are dropped and counted.

Splits: ``strat_fold`` 1-8 train, 9 validation, 10 test. Per-lead standardisation
``x' = (x - mean_l) / std_l`` uses the mean and population std (ddof=0) of lead ``l`` over all time
steps of all training-fold records, and is applied to every split.

Missing WFDB files: by default a referenced record whose ``.hea``/``.dat`` is absent (or whose file-name
cell is empty) is an error naming the file. ``skip_missing_records=True`` loads only the records whose
files exist and reports how many were skipped (the PTB-XL subset in this project has ``records500``
only for some ids).

Cache: ``<cache_dir>/ptbxl-<sr>hz-<key>/`` with ``signals.npy`` (float32 (N, 12, T), opened with
``mmap_mode='r'``), ``meta.npz`` (arrays, no pickles) and ``info.json``. ``<key>`` hashes the resolved
source folder, size and mtime of both CSV files, the sampling rate, the missing-file policy and the cache
format version; edits to WFDB files alone do not change the key (delete the cache folder then).
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from data_prep.cache_paths import build_once, default_cache_root
from data_prep.format_error import DataFormatError
from data_prep.spec import DatasetSpec
from data_prep.wfdb_files import truncated_signal_file

SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")
LEAD_NAMES: tuple[str, ...] = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
SAMPLING_RATES: tuple[int, ...] = (100, 500)
RECORD_SECONDS = 10
TRAIN_FOLDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
VAL_FOLDS: tuple[int, ...] = (9,)
TEST_FOLDS: tuple[int, ...] = (10,)
SPLIT_FOLDS: dict[str, tuple[int, ...]] = {"train": TRAIN_FOLDS, "val": VAL_FOLDS, "test": TEST_FOLDS}
CACHE_FORMAT_VERSION = 1
PROGRESS_EVERY = 500

DATABASE_CSV = "ptbxl_database.csv"
STATEMENTS_CSV = "scp_statements.csv"
FILENAME_COLUMN: dict[int, str] = {100: "filename_lr", 500: "filename_hr"}

PTBXL_SPEC = DatasetSpec(
    name="ptbxl", title="PTB-XL 12-lead ECG (PhysioNet)", channels=LEAD_NAMES, sampling_rates=SAMPLING_RATES,
    window_seconds=RECORD_SECONDS, classes=SUPERCLASSES, task="multilabel", group="site",
    splits={"train": "strat_fold 1-8", "val": "strat_fold 9", "test": "strat_fold 10"},
    source="https://physionet.org/content/ptb-xl/ (open access)",
    layout="ptbxl_database.csv, scp_statements.csv and records100/ (or records500/) as PhysioNet ships them",
)


def check_ptbxl_folder(path: str, sampling_rate: int) -> None:
    """Fail early, phrased as what was expected, when a folder is not in the PhysioNet PTB-XL layout."""
    root = Path(path)
    if not root.is_absolute():
        raise ValueError(f"an absolute path to a PTB-XL folder, got relative path '{path}'")
    if not root.is_dir():
        raise ValueError(f"an existing PTB-XL folder, but '{path}' does not exist")
    missing = [name for name in (DATABASE_CSV, STATEMENTS_CSV) if not (root / name).is_file()]
    records = f"records{sampling_rate}"
    if not (root / records).is_dir():
        missing.append(f"{records}/")
    if missing:
        raise ValueError(f"a PTB-XL folder holding {DATABASE_CSV}, {STATEMENTS_CSV} and {records}/; "
                         f"'{path}' lacks {', '.join(missing)}")


class PTBXLFormatError(DataFormatError):
    """The PTB-XL folder does not have the layout or content the reader expects."""


@dataclass(eq=False)
class PTBXLIndex:
    """The labelled rows of ``ptbxl_database.csv`` (before any WFDB file is read)."""

    ecg_ids: np.ndarray  # (N,) int64
    patient_ids: np.ndarray  # (N,) int64, -1 where missing
    sites: np.ndarray  # (N,) int64, -1 where missing
    folds: np.ndarray  # (N,) int64 in 1..10
    labels: np.ndarray  # (N, 5) float32 multi-hot over SUPERCLASSES
    filenames: list[str]  # record path relative to the root, '' where the cell is empty
    n_rows: int  # rows in the CSV
    dropped_ecg_ids: np.ndarray  # ecg_ids dropped for having no diagnostic superclass


@dataclass(eq=False)
class PTBXLData:
    """Parsed PTB-XL records: raw signals (possibly a read-only memmap), targets and metadata."""

    signals: np.ndarray  # (N, 12, T) float32, mV, raw
    labels: np.ndarray  # (N, 5) float32 multi-hot over SUPERCLASSES
    folds: np.ndarray  # (N,) int64 strat_fold
    sites: np.ndarray  # (N,) int64, -1 where missing
    patient_ids: np.ndarray  # (N,) int64, -1 where missing
    ecg_ids: np.ndarray  # (N,) int64
    lead_mean: np.ndarray  # (12,) float32, training folds only
    lead_std: np.ndarray  # (12,) float32, training folds only
    sampling_rate: int
    cache_path: Path
    n_rows: int  # rows in ptbxl_database.csv
    n_dropped_no_superclass: int
    n_skipped_missing: int  # records skipped because their WFDB files are absent

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def groups(self) -> np.ndarray:
        """The natural group of each record (``PTBXL_SPEC.group``): its recording site."""
        return self.sites

    def split_indices(self, name: str) -> np.ndarray:
        """Sorted positions of the records in split ``name`` ('train': folds 1-8, 'val': 9, 'test': 10)."""
        if name not in SPLIT_FOLDS:
            raise ValueError(f"split name {name!r}: expected one of {sorted(SPLIT_FOLDS)}")
        return np.flatnonzero(np.isin(self.folds, SPLIT_FOLDS[name])).astype(np.int64)

    def standardised(self, idx: np.ndarray | list[int]) -> np.ndarray:
        """Records ``idx`` (in the given order) as float32 (len(idx), 12, T), ``(x - lead_mean) / lead_std``."""
        positions = np.asarray(idx, dtype=np.int64).reshape(-1)
        raw = np.asarray(self.signals[positions], dtype=np.float32)
        return (raw - self.lead_mean[None, :, None]) / self.lead_std[None, :, None]

    def class_counts(self) -> dict[str, int]:
        """Number of records carrying each superclass (multi-label, so they sum to >= N)."""
        return {name: int(count) for name, count in zip(SUPERCLASSES, self.labels.sum(axis=0).astype(np.int64))}

    def fold_counts(self) -> dict[int, int]:
        """Number of records per ``strat_fold`` present."""
        values, counts = np.unique(self.folds, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


def superclass_map(statements_csv: Path) -> dict[str, str]:
    """Map SCP code -> diagnostic superclass for rows of ``scp_statements.csv`` with ``diagnostic == 1``."""
    if not statements_csv.is_file():
        raise PTBXLFormatError(f"{statements_csv} is missing: expected the PTB-XL SCP statement table")
    table = pd.read_csv(statements_csv, index_col=0)
    missing = [c for c in ("diagnostic", "diagnostic_class") if c not in table.columns]
    if missing:
        raise PTBXLFormatError(f"{statements_csv} lacks column(s) {missing}: expected diagnostic, diagnostic_class")
    diagnostic = pd.to_numeric(table["diagnostic"], errors="coerce") == 1
    mapping: dict[str, str] = {}
    for code, superclass in table.loc[diagnostic, "diagnostic_class"].items():
        if superclass not in SUPERCLASSES:
            raise PTBXLFormatError(
                f"{statements_csv}: code {code!r} has diagnostic_class {superclass!r}, expected one of {SUPERCLASSES}"
            )
        mapping[str(code)] = str(superclass)
    return mapping


def parse_scp_codes(text: object, where: str) -> dict[str, float]:
    """Parse one ``scp_codes`` cell, a Python dict literal such as ``"{'NORM': 100.0, 'SR': 0.0}"``."""
    if not isinstance(text, str):
        raise PTBXLFormatError(f"{where}: scp_codes is {text!r}, expected a dict literal like \"{{'NORM': 100.0}}\"")
    try:
        codes = ast.literal_eval(text)  # literal_eval evaluates literals only, never code
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise PTBXLFormatError(f"{where}: scp_codes {text!r} is not a dict literal ({exc})") from None
    if not isinstance(codes, dict) or not all(isinstance(k, str) for k in codes):
        raise PTBXLFormatError(f"{where}: scp_codes {text!r} is not a dict with string keys")
    return codes


def multi_hot(codes: dict[str, float], code_to_class: dict[str, str]) -> np.ndarray:
    """(5,) float32 multi-hot over SUPERCLASSES of the diagnostic codes present (any likelihood counts)."""
    target = np.zeros(len(SUPERCLASSES), dtype=np.float32)
    for code in codes:
        superclass = code_to_class.get(code)
        if superclass is not None:
            target[SUPERCLASSES.index(superclass)] = 1.0
    return target


def _int_column(table: pd.DataFrame, column: str, csv: Path) -> np.ndarray:
    """Integer column with missing cells as -1; a non-numeric or fractional cell is an error."""
    if column not in table.columns:
        return np.full(len(table), -1, dtype=np.int64)
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() & table[column].notna()
    frac = values.notna() & (values.fillna(0) % 1 != 0)
    if bad.any() or frac.any():
        row = int(np.flatnonzero((bad | frac).to_numpy())[0])
        raise PTBXLFormatError(f"{csv}: {column} {table[column].iloc[row]!r} in row {row + 2} is not an integer")
    return values.fillna(-1).to_numpy().astype(np.int64)


def check_sampling_rate(sampling_rate: int) -> None:
    """Raise unless ``sampling_rate`` is 100 or 500 (the two PTB-XL versions)."""
    if sampling_rate not in SAMPLING_RATES:
        raise PTBXLFormatError(f"sampling_rate {sampling_rate!r}: expected one of {SAMPLING_RATES} (Hz)")


def read_ptbxl_index(root: str | Path, sampling_rate: int = 100) -> PTBXLIndex:
    """Read and validate both CSV files; keep rows with at least one diagnostic superclass."""
    check_sampling_rate(sampling_rate)
    root = Path(root)
    if not root.is_dir():
        raise PTBXLFormatError(f"PTB-XL folder {root} does not exist: expected a folder holding {DATABASE_CSV}")
    database_csv = root / DATABASE_CSV
    if not database_csv.is_file():
        raise PTBXLFormatError(f"{database_csv} is missing: expected the PTB-XL record table")
    code_to_class = superclass_map(root / STATEMENTS_CSV)
    table = pd.read_csv(database_csv)
    file_column = FILENAME_COLUMN[sampling_rate]
    missing = [c for c in ("ecg_id", "scp_codes", "strat_fold", file_column) if c not in table.columns]
    if missing:
        raise PTBXLFormatError(
            f"{database_csv} lacks column(s) {missing}: expected ecg_id, scp_codes, strat_fold, {file_column}"
        )
    ecg_ids = _int_column(table, "ecg_id", database_csv)
    if (ecg_ids < 0).any() or len(np.unique(ecg_ids)) != len(ecg_ids):
        raise PTBXLFormatError(f"{database_csv}: ecg_id must be present, non-negative and unique")
    folds = _int_column(table, "strat_fold", database_csv)
    bad_fold = ~np.isin(folds, np.arange(1, 11))
    if bad_fold.any():
        row = int(np.flatnonzero(bad_fold)[0])
        raise PTBXLFormatError(f"{database_csv}: ecg_id {ecg_ids[row]} has strat_fold {folds[row]}, expected 1..10")
    labels = np.stack(
        [multi_hot(parse_scp_codes(text, f"{database_csv} ecg_id {eid}"), code_to_class)
         for eid, text in zip(ecg_ids, table["scp_codes"])]
    ) if len(table) else np.zeros((0, len(SUPERCLASSES)), dtype=np.float32)
    keep = labels.sum(axis=1) > 0
    filenames = [name if isinstance(name, str) else "" for name in table[file_column]]
    return PTBXLIndex(
        ecg_ids=ecg_ids[keep],
        patient_ids=_int_column(table, "patient_id", database_csv)[keep],
        sites=_int_column(table, "site", database_csv)[keep],
        folds=folds[keep],
        labels=labels[keep],
        filenames=[name for name, k in zip(filenames, keep) if k],
        n_rows=len(table),
        dropped_ecg_ids=ecg_ids[~keep],
    )


def _record_files(root: Path, filename: str) -> list[Path]:
    return [root / f"{filename}.hea", root / f"{filename}.dat"]


def _missing_record(root: Path, filename: str) -> str | None:
    """Description of what is missing for one record, or None when both WFDB files exist."""
    if not filename.strip():
        return "empty file-name cell"
    for path in _record_files(root, filename):
        if not path.is_file():
            return str(path)
    return None


def read_record(root: Path, filename: str, sampling_rate: int) -> np.ndarray:
    """One WFDB record as float32 (12, T) in mV, checked for fs, lead names/count, length and finiteness."""
    expected_len = sampling_rate * RECORD_SECONDS
    where = root / filename
    try:
        signal, fields = wfdb.rdsamp(str(where))
    except Exception as exc:  # wfdb raises many types for malformed files
        # the byte count is checked only on failure: reading the header twice doubles the parse time
        raise PTBXLFormatError(truncated_signal_file(where)
                               or f"{where}.hea/.dat could not be read as a WFDB record: {exc}") from exc
    if signal.ndim != 2 or signal.shape[1] != len(LEAD_NAMES):
        raise PTBXLFormatError(f"{where}: {signal.shape[1] if signal.ndim == 2 else signal.shape} leads, expected 12")
    if signal.shape[0] != expected_len:
        raise PTBXLFormatError(
            truncated_signal_file(where) or
            f"{where}: {signal.shape[0]} samples, expected {expected_len} ({RECORD_SECONDS} s at {sampling_rate} Hz)"
        )
    if float(fields.get("fs", -1)) != float(sampling_rate):
        raise PTBXLFormatError(f"{where}: fs {fields.get('fs')} Hz, expected {sampling_rate} Hz")
    names = tuple(str(n).upper() for n in fields.get("sig_name", []))
    if names != LEAD_NAMES:
        raise PTBXLFormatError(f"{where}: leads {names}, expected {LEAD_NAMES}")
    if not np.isfinite(signal).all():
        raise PTBXLFormatError(f"{where}: {int((~np.isfinite(signal)).sum())} non-finite samples, expected none")
    return np.ascontiguousarray(signal.T, dtype=np.float32)


def lead_statistics(signals: np.ndarray, idx: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-lead mean and population std over all time steps of records ``idx`` (two passes, float64)."""
    if len(idx) == 0:
        raise PTBXLFormatError("no training-fold records (strat_fold 1-8): cannot fit the per-lead standardisation")
    n_values = len(idx) * signals.shape[2]
    total = np.zeros(signals.shape[1])
    for start in range(0, len(idx), chunk):
        total += np.asarray(signals[idx[start:start + chunk]], dtype=np.float64).sum(axis=(0, 2))
    mean = total / n_values
    squares = np.zeros(signals.shape[1])
    for start in range(0, len(idx), chunk):
        block = np.asarray(signals[idx[start:start + chunk]], dtype=np.float64) - mean[None, :, None]
        squares += (block * block).sum(axis=(0, 2))
    std = np.sqrt(squares / n_values)
    if (std <= 0).any():
        constant = [LEAD_NAMES[i] for i in np.flatnonzero(std <= 0)]
        raise PTBXLFormatError(f"lead(s) {constant} constant over the training folds: expected varying signals")
    return mean.astype(np.float32), std.astype(np.float32)


def cache_key(root: Path, sampling_rate: int, skip_missing_records: bool) -> str:
    """Hex digest identifying the source folder, its CSV files' size/mtime and the parse options."""
    parts: dict[str, object] = {
        "root": str(root.resolve()),
        "sampling_rate": sampling_rate,
        "skip_missing_records": skip_missing_records,
        "version": CACHE_FORMAT_VERSION,
    }
    for name in (DATABASE_CSV, STATEMENTS_CSV):
        stat = (root / name).stat()
        parts[name] = [stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _progress(message: str, verbose: bool) -> None:
    if verbose:
        print(f"[data_prep.ptbxl] {message}", file=sys.stderr, flush=True)


def _build_cache(
    root: Path, index: PTBXLIndex, sampling_rate: int, skip_missing_records: bool, out: Path, verbose: bool
) -> None:
    """Parse every labelled record of ``index`` into ``out`` (signals.npy, meta.npz, info.json)."""
    missing = [(eid, _missing_record(root, name)) for eid, name in zip(index.ecg_ids, index.filenames)]
    missing = [(eid, what) for eid, what in missing if what is not None]
    if missing and not skip_missing_records:
        eid, what = missing[0]
        raise PTBXLFormatError(
            f"ecg_id {eid}: WFDB record file {what} missing ({len(missing)} of {len(index.ecg_ids)} labelled records "
            f"lack {FILENAME_COLUMN[sampling_rate]} files at {sampling_rate} Hz); pass skip_missing_records=True "
            "(CLI: --skip-missing-records) to load only the available records"
        )
    missing_ids = {eid for eid, _ in missing}
    keep = np.array([eid not in missing_ids for eid in index.ecg_ids], dtype=bool)
    positions = np.flatnonzero(keep)
    n_samples = sampling_rate * RECORD_SECONDS
    signals = np.lib.format.open_memmap(
        out / "signals.npy", mode="w+", dtype=np.float32, shape=(len(positions), len(LEAD_NAMES), n_samples)
    )
    started = time.perf_counter()
    _progress(f"parsing {len(positions)} records at {sampling_rate} Hz from {root}", verbose)
    for row, position in enumerate(positions):
        signals[row] = read_record(root, index.filenames[position], sampling_rate)
        if (row + 1) % PROGRESS_EVERY == 0 or row + 1 == len(positions):
            _progress(f"parsed {row + 1}/{len(positions)} records ({time.perf_counter() - started:.1f} s)", verbose)
    folds = index.folds[keep]
    mean, std = lead_statistics(signals, np.flatnonzero(np.isin(folds, TRAIN_FOLDS)))
    signals.flush()
    del signals
    np.savez(
        out / "meta.npz",
        ecg_ids=index.ecg_ids[keep], labels=index.labels[keep], folds=folds, sites=index.sites[keep],
        patient_ids=index.patient_ids[keep], lead_mean=mean, lead_std=std,
    )
    info = {
        "source": str(root.resolve()), "sampling_rate": sampling_rate, "n_rows": index.n_rows,
        "n_records": int(keep.sum()), "dropped_no_superclass": index.dropped_ecg_ids.tolist(),
        "skipped_missing": sorted(int(e) for e in missing_ids), "superclasses": list(SUPERCLASSES),
        "leads": list(LEAD_NAMES), "version": CACHE_FORMAT_VERSION,
    }
    (out / "info.json").write_text(json.dumps(info, indent=1))


def _open_cache(folder: Path, sampling_rate: int) -> PTBXLData:
    signals = np.load(folder / "signals.npy", mmap_mode="r")
    with np.load(folder / "meta.npz", allow_pickle=False) as meta:
        arrays = {key: meta[key] for key in meta.files}
    info = json.loads((folder / "info.json").read_text())
    n = arrays["labels"].shape[0]
    if signals.shape != (n, len(LEAD_NAMES), sampling_rate * RECORD_SECONDS):
        raise PTBXLFormatError(f"cache {folder} is inconsistent (signals {signals.shape}, {n} labels): delete it")
    return PTBXLData(
        signals=signals, labels=arrays["labels"], folds=arrays["folds"], sites=arrays["sites"],
        patient_ids=arrays["patient_ids"], ecg_ids=arrays["ecg_ids"], lead_mean=arrays["lead_mean"],
        lead_std=arrays["lead_std"], sampling_rate=sampling_rate, cache_path=folder, n_rows=int(info["n_rows"]),
        n_dropped_no_superclass=len(info["dropped_no_superclass"]), n_skipped_missing=len(info["skipped_missing"]),
    )


def load_ptbxl(
    root: str | Path,
    sampling_rate: int = 100,
    cache_dir: Path | None = None,
    *,
    skip_missing_records: bool = False,
    verbose: bool = True,
) -> PTBXLData:
    """Load PTB-XL from ``root``, parsing the WFDB files once into ``cache_dir`` (default: cache root).

    Concurrent callers (e.g. simulated clients) share one build: the first parses under a file lock,
    the others wait and then open the finished cache read-only.
    """
    check_sampling_rate(sampling_rate)
    root = Path(root)
    if not root.is_dir():
        raise PTBXLFormatError(f"PTB-XL folder {root} does not exist: expected a folder holding {DATABASE_CSV}")
    for name in (DATABASE_CSV, STATEMENTS_CSV):
        if not (root / name).is_file():
            raise PTBXLFormatError(f"{root / name} is missing: expected {DATABASE_CSV} and {STATEMENTS_CSV} in {root}")
    base = default_cache_root() if cache_dir is None else Path(cache_dir)
    folder = base / f"ptbxl-{sampling_rate}hz-{cache_key(root, sampling_rate, skip_missing_records)}"

    def build(tmp: Path) -> None:  # the CSVs are parsed and validated only when the cache is built
        _build_cache(root, read_ptbxl_index(root, sampling_rate), sampling_rate, skip_missing_records, tmp, verbose)

    build_once(folder, build)
    return _open_cache(folder, sampling_rate)
