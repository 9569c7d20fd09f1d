"""The byte count a WFDB header promises equals what wfdb writes, and a short file is named with both numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from data_prep.__main__ import main as data_prep_main
from data_prep.synth_ptbxl import write_synthetic_ptbxl
from data_prep.wfdb_files import expected_dat_bytes, truncated_signal_file


@pytest.mark.parametrize("fmt,n_sig,length", [("16", 12, 1000), ("212", 3, 1001), ("80", 2, 500), ("24", 1, 7),
                                              ("32", 4, 10)])
def test_expected_bytes_equal_the_file_wfdb_writes(tmp_path: Path, fmt: str, n_sig: int, length: int) -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(0, 0.2, (length, n_sig))
    wfdb.wrsamp("rec", fs=125, units=["mV"] * n_sig, sig_name=[f"s{i}" for i in range(n_sig)], p_signal=signal,
                fmt=[fmt] * n_sig, adc_gain=[100.0] * n_sig, baseline=[0] * n_sig, write_dir=str(tmp_path))
    expected = expected_dat_bytes(wfdb.rdheader(str(tmp_path / "rec")))
    assert {name: size for name, (size, _) in expected.items()} == {"rec.dat": (tmp_path / "rec.dat").stat().st_size}
    assert truncated_signal_file(tmp_path / "rec") is None


def test_short_file_named_with_found_and_expected_bytes(tmp_path: Path) -> None:
    wfdb.wrsamp("rec", fs=100, units=["mV"] * 2, sig_name=["I", "II"], p_signal=np.zeros((50, 2)), fmt=["16"] * 2,
                adc_gain=[1000.0] * 2, baseline=[0] * 2, write_dir=str(tmp_path))
    dat = tmp_path / "rec.dat"
    dat.write_bytes(dat.read_bytes()[:77])
    assert truncated_signal_file(tmp_path / "rec") == (
        f"{dat} is truncated: 77 bytes, expected 200 (50 samples x 2 signals x 2 bytes, format 16)")
    dat.unlink()
    assert truncated_signal_file(tmp_path / "rec") == f"{dat} is missing (named in {tmp_path / 'rec'}.hea)"


def test_data_prep_cli_exits_2_naming_the_truncated_record(tmp_path: Path, capsys) -> None:
    root = write_synthetic_ptbxl(tmp_path / "ptbxl", n_records=12, seed=3)
    dat = root / "records100" / "00000" / "00004_lr.dat"
    dat.write_bytes(dat.read_bytes()[:500])
    assert data_prep_main(["ptbxl", "--src", str(root), "--out", str(tmp_path / "cache")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1] == (f"error: {dat} is truncated: 500 bytes, expected 24000 "
                       "(1000 samples x 12 signals x 2 bytes, format 16)")
