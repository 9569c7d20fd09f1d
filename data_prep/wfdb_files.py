"""Byte-level checks of WFDB signal files, so a truncated ``.dat`` is named with the bytes it lacks.

A WFDB header (PhysioNet, https://physionet.org/physiotools/wag/header-5.htm) fixes, per signal, its
storage format, the samples per frame and the record's sample count. A signal file holding
signals ``s`` therefore needs exactly

    byte_offset + ceil(sig_len * sum_s(samps_per_frame_s) * bytes_per_sample(fmt))

bytes, where format 212 packs two 12-bit samples into 3 bytes and formats 310/311 three 10-bit
samples into 4 bytes. wfdb itself reports a short file only as a failed ``reshape``.
"""

from __future__ import annotations

import math
from pathlib import Path

import wfdb

BYTES_PER_SAMPLE: dict[str, float] = {
    "8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}


def expected_dat_bytes(header: wfdb.Record) -> dict[str, tuple[int, str]]:
    """Signal file name -> (bytes it must hold, how that number arises) for a single-segment header."""
    per_file: dict[str, list] = {}
    for i, name in enumerate(header.file_name or []):
        fmt = str(header.fmt[i])
        if fmt not in BYTES_PER_SAMPLE:
            continue  # compressed (FLAC) formats have no fixed size
        frame = int(header.samps_per_frame[i]) if header.samps_per_frame else 1
        offset = int(header.byte_offset[i] or 0) if header.byte_offset else 0
        entry = per_file.setdefault(name, [0, offset, fmt])
        entry[0] += frame
    out = {}
    for name, (samples_per_frame, offset, fmt) in per_file.items():
        size = offset + math.ceil(header.sig_len * samples_per_frame * BYTES_PER_SAMPLE[fmt])
        out[name] = (size, f"{header.sig_len} samples x {samples_per_frame} signals x "
                           f"{BYTES_PER_SAMPLE[fmt]:g} bytes, format {fmt}"
                           + (f", plus a {offset}-byte offset" if offset else ""))
    return out


def truncated_signal_file(record: Path) -> str | None:
    """A sentence naming the first signal file of ``record`` (path without suffix) that is too short, else None."""
    try:
        header = wfdb.rdheader(str(record))
    except Exception as exc:  # wfdb raises many types for a malformed header
        return f"{record}.hea is not a valid WFDB header ({exc})"
    for name, (size, how) in expected_dat_bytes(header).items():
        path = record.parent / name
        if not path.is_file():
            return f"{path} is missing (named in {record}.hea)"
        found = path.stat().st_size
        if found < size:
            return f"{path} is truncated: {found} bytes, expected {size} ({how})"
    return None
