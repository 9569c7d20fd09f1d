"""Command line: read a data set's folder (or write a synthetic one) and print a summary.

    python -m data_prep ptbxl --src DIR --out DIR [--sampling-rate 100] [--skip-missing-records]
    python -m data_prep synth --out DIR --records N [--seed S] [--sampling-rate 100]
    python -m data_prep toniot --src DIR
    python -m data_prep synth-toniot --out DIR --windows N [--seed S]
    python -m data_prep pamap2 --src DIR [--val-subjects 105] [--test-subjects 106]
    python -m data_prep synth-pamap2 --out DIR --windows N [--seed S]
    python -m data_prep mimic --src DIR [--val-subjects p000020] [--test-subjects p000878] [--sampling-rate 125]
    python -m data_prep synth-mimic --out DIR --windows N [--seed S]
    python -m data_prep wesad --src DIR [--val-subjects S4,S5] [--test-subjects S2,S3] [--sampling-rate 32]
    python -m data_prep synth-wesad --out DIR --windows N [--seed S]

Data sets, their layouts, tasks and splits: README.md, section Data.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_prep.format_error import DataFormatError
from data_prep.mimic import CLASSES as MIMIC_CLASSES, SAMPLING_RATES as MIMIC_RATES, MimicData, load_mimic
from data_prep.pamap2 import ACTIVITIES, PAMAP2Data, load_pamap2
from data_prep.registry import datasets_help
from data_prep.spec import ReadOptions
from data_prep.synth_mimic import write_synthetic_mimic
from data_prep.synth_pamap2 import write_synthetic_pamap2
from data_prep.ptbxl import SUPERCLASSES, PTBXLData, load_ptbxl, read_ptbxl_index
from data_prep.synth_ptbxl import write_synthetic_ptbxl
from data_prep.synth_toniot import write_synthetic_toniot
from data_prep.toniot import CLASSES as TONIOT_CLASSES, TonIoTData, load_toniot
from data_prep.synth_wesad import write_synthetic_wesad
from data_prep.wesad import CLASSES as WESAD_CLASSES, WESADData, load_wesad


def _label_summary(labels: np.ndarray, folds: np.ndarray) -> list[str]:
    counts = labels.sum(axis=0).astype(int)
    fold_values, fold_counts = np.unique(folds, return_counts=True)
    return [
        "per fold:      " + ", ".join(f"{int(f)}: {int(c)}" for f, c in zip(fold_values, fold_counts)),
        "classes:       " + ", ".join(f"{name} {int(c)}" for name, c in zip(SUPERCLASSES, counts)),
        f"multi-label:   {int((labels.sum(axis=1) > 1).sum())}",
    ]


def _ptbxl_summary(data: PTBXLData, seconds: float) -> str:
    lines = [
        f"cache:         {data.cache_path}",
        f"rows in csv:   {data.n_rows}",
        f"records:       {len(data)} (shape {tuple(data.signals.shape)}, {data.sampling_rate} Hz)",
        f"dropped:       {data.n_dropped_no_superclass} without a diagnostic superclass, "
        f"{data.n_skipped_missing} with missing WFDB files",
        *_label_summary(data.labels, data.folds),
        "splits:        " + ", ".join(f"{s} {len(data.split_indices(s))}" for s in ("train", "val", "test")),
        f"time:          {seconds:.1f} s",
    ]
    return "\n".join(lines)


def _toniot_summary(data: TonIoTData, seconds: float) -> str:
    counts = data.labels.sum(axis=0).astype(int)
    return "\n".join([
        f"folder:        {data.cache_path}",
        "readings:      " + ", ".join(f"{d} {n}" for d, n in data.rows_read.items()),
        f"windows:       {len(data)} (shape {tuple(data.signals.shape)})",
        "classes:       " + ", ".join(f"{name} {int(c)}" for name, c in zip(TONIOT_CLASSES, counts)),
        "splits:        " + ", ".join(f"{s} {len(data.split_indices(s))}" for s in ("train", "val", "test")),
        f"time:          {seconds:.1f} s",
    ])


def _pamap2_summary(data: PAMAP2Data, seconds: float) -> str:
    counts = data.labels.sum(axis=0).astype(int)
    return "\n".join([
        f"folder:        {data.cache_path}",
        f"subjects:      {', '.join(data.subjects)}",
        f"windows:       {len(data)} (shape {tuple(data.signals.shape)}), {data.windows_dropped_nan} dropped for gaps",
        "classes:       " + ", ".join(f"{name} {int(c)}" for name, c in zip(ACTIVITIES.values(), counts)),
        "splits:        " + ", ".join(f"{s} {len(data.split_indices(s))}" for s in ("train", "val", "test")),
        f"time:          {seconds:.1f} s",
    ])


def _wesad_summary(data: WESADData, seconds: float) -> str:
    counts = data.labels.sum(axis=0).astype(int)
    return "\n".join([
        f"folder:        {data.cache_path}",
        f"subjects:      {', '.join(data.subjects)}",
        f"windows:       {len(data)} (shape {tuple(data.signals.shape)}, {data.sampling_rate} Hz)",
        "classes:       " + ", ".join(f"{name} {int(c)}" for name, c in zip(WESAD_CLASSES, counts)),
        "splits:        " + ", ".join(f"{s} {len(data.split_indices(s))}" for s in ("train", "val", "test")),
        "E4 offsets:    " + (", ".join(f"{s} {v:.0f} s" for s, v in data.offsets.items()) or "none (pickles)"),
        f"time:          {seconds:.1f} s",
    ])


def _mimic_summary(data: MimicData, seconds: float) -> str:
    counts = data.labels.sum(axis=0).astype(int)
    return "\n".join([
        f"folder:        {data.cache_path}",
        "records:       " + ", ".join(f"{r} {n}" for r, n in data.windows_per_record.items()) + " windows",
        f"windows:       {len(data)} (shape {tuple(data.signals.shape)}, channels {', '.join(data.channels)})",
        "dropped:       " + ", ".join(f"{reason} {n}" for reason, n in data.dropped.items()),
        f"skipped:       {len(data.skipped)} warning(s) on stderr",
        "classes:       " + ", ".join(f"{name} {int(c)}" for name, c in zip(MIMIC_CLASSES, counts)),
        "splits:        " + ", ".join(f"{s} {len(data.split_indices(s))}" for s in ("train", "val", "test")),
        f"time:          {seconds:.1f} s",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=datasets_help())
    commands = parser.add_subparsers(dest="command", required=True)
    real = commands.add_parser("ptbxl", help="parse a PTB-XL folder (PhysioNet layout) into the cache")
    real.add_argument("--src", type=Path, required=True, help="folder with ptbxl_database.csv")
    real.add_argument("--out", type=Path, required=True, help="cache folder")
    real.add_argument("--sampling-rate", type=int, default=100, choices=(100, 500))
    real.add_argument("--skip-missing-records", action="store_true", help="load only records whose files exist")
    synth = commands.add_parser("synth", help="write a synthetic data set in the PTB-XL layout")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--records", type=int, required=True, help="number of records")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--sampling-rate", type=int, default=100, choices=(100, 500))
    toniot = commands.add_parser("toniot", help="read a folder of TON_IoT Train_Test_IoT_<Device>.csv files")
    toniot.add_argument("--src", type=Path, required=True, help="folder with the device CSV files")
    synth_toniot = commands.add_parser("synth-toniot", help="write a synthetic set in the TON_IoT file format")
    synth_toniot.add_argument("--out", type=Path, required=True, help="output folder")
    synth_toniot.add_argument("--windows", type=int, required=True, help="about this many 32-reading windows")
    synth_toniot.add_argument("--seed", type=int, default=0)
    pamap2 = commands.add_parser("pamap2", help="read a PAMAP2 folder (Protocol/subject1XX.dat)")
    pamap2.add_argument("--src", type=Path, required=True, help="folder holding Protocol/")
    pamap2.add_argument("--val-subjects", default="", help="comma-separated subject ids (default 105)")
    pamap2.add_argument("--test-subjects", default="", help="comma-separated subject ids (default 106)")
    synth_pamap2 = commands.add_parser("synth-pamap2", help="write a synthetic set in the PAMAP2 Protocol format")
    synth_pamap2.add_argument("--out", type=Path, required=True, help="output folder")
    synth_pamap2.add_argument("--windows", type=int, required=True, help="about this many default windows")
    synth_pamap2.add_argument("--seed", type=int, default=0)
    wesad = commands.add_parser("wesad", help="read a WESAD folder (SX/SX.pkl, or SX/SX_E4_Data with SX_quest.csv)")
    wesad.add_argument("--src", type=Path, required=True, help="folder holding the subject folders S2, S3, ...")
    wesad.add_argument("--val-subjects", default="", help="comma-separated subject ids (default S4,S5)")
    wesad.add_argument("--test-subjects", default="", help="comma-separated subject ids (default S2,S3)")
    wesad.add_argument("--sampling-rate", type=int, default=32, choices=(32, 64))
    synth_wesad = commands.add_parser("synth-wesad", help="write a synthetic set in the WESAD wrist-file format")
    synth_wesad.add_argument("--out", type=Path, required=True, help="output folder")
    synth_wesad.add_argument("--windows", type=int, required=True, help="about this many default windows")
    synth_wesad.add_argument("--seed", type=int, default=0)
    mimic = commands.add_parser("mimic", help="read a MIMIC-III waveform folder (matched-subset WFDB records)")
    mimic.add_argument("--src", type=Path, required=True, help="folder holding the patient folders p000020, ...")
    mimic.add_argument("--val-subjects", default="", help="comma-separated patient ids (default: split in time)")
    mimic.add_argument("--test-subjects", default="", help="comma-separated patient ids (default: split in time)")
    mimic.add_argument("--sampling-rate", type=int, default=MIMIC_RATES[0], choices=MIMIC_RATES)
    synth_mimic = commands.add_parser("synth-mimic",
                                      help="write a synthetic set in the MIMIC-III matched-subset layout")
    synth_mimic.add_argument("--out", type=Path, required=True, help="output folder")
    synth_mimic.add_argument("--windows", type=int, required=True, help="about this many default windows")
    synth_mimic.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    try:
        if args.command in ("pamap2", "synth-pamap2"):
            if args.command == "pamap2":
                ids = {key: tuple(v.strip() for v in getattr(args, key).split(",") if v.strip())
                       for key in ("val_subjects", "test_subjects")}
                root, options = args.src.resolve(), ReadOptions(**ids)
            else:
                root, options = write_synthetic_pamap2(args.out, args.windows, args.seed).resolve(), ReadOptions()
            print(_pamap2_summary(load_pamap2(root, options, verbose=False), time.perf_counter() - started))
        elif args.command in ("wesad", "synth-wesad"):
            if args.command == "wesad":
                ids = {key: tuple(v.strip() for v in getattr(args, key).split(",") if v.strip())
                       for key in ("val_subjects", "test_subjects")}
                root, options = args.src.resolve(), ReadOptions(sampling_rate=args.sampling_rate, **ids)
            else:
                root, options = write_synthetic_wesad(args.out, args.windows, args.seed).resolve(), ReadOptions()
            print(_wesad_summary(load_wesad(root, options, verbose=False), time.perf_counter() - started))
        elif args.command in ("mimic", "synth-mimic"):
            if args.command == "mimic":
                ids = {key: tuple(v.strip() for v in getattr(args, key).split(",") if v.strip())
                       for key in ("val_subjects", "test_subjects")}
                root, options = args.src.resolve(), ReadOptions(sampling_rate=args.sampling_rate, **ids)
            else:
                if args.windows < 1:
                    parser.error(f"--windows {args.windows}: expected a positive integer")
                root, options = write_synthetic_mimic(args.out, args.windows, args.seed).resolve(), ReadOptions()
            print(_mimic_summary(load_mimic(root, options, verbose=False), time.perf_counter() - started))
        elif args.command == "toniot":
            print(_toniot_summary(load_toniot(args.src.resolve()), time.perf_counter() - started))
        elif args.command == "synth-toniot":
            if args.windows < 7:
                parser.error(f"--windows {args.windows}: expected at least 7 (one per device)")
            print(_toniot_summary(load_toniot(write_synthetic_toniot(args.out, args.windows, args.seed).resolve(),
                                              verbose=False), time.perf_counter() - started))
        elif args.command == "ptbxl":
            data = load_ptbxl(args.src, args.sampling_rate, args.out, skip_missing_records=args.skip_missing_records)
            print(_ptbxl_summary(data, time.perf_counter() - started))
        else:
            if args.records < 1:
                parser.error(f"--records {args.records}: expected a positive integer")
            folder = write_synthetic_ptbxl(args.out, args.records, args.seed, args.sampling_rate)
            seconds = time.perf_counter() - started
            index = read_ptbxl_index(folder, 100)
            print("\n".join([
                f"folder:        {folder}",
                f"records:       {index.n_rows} written, {len(index.ecg_ids)} with a diagnostic superclass",
                *_label_summary(index.labels, index.folds),
                "sites:         " + ", ".join(f"{s}: {c}" for s, c in zip(*np.unique(index.sites, return_counts=True))),
                f"time:          {seconds:.1f} s",
            ]))
    except DataFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
