"""The RAPL reader on a powercap tree written here: sums package domains, survives a wrap, says why not."""

from __future__ import annotations

import pytest

from common.cpu_energy import RaplMeter, package_domains, rapl_status


def write_domain(root, name, energy, span):
    domain = root / name
    domain.mkdir(parents=True)
    (domain / "energy_uj").write_text(f"{energy}\n")
    (domain / "max_energy_range_uj").write_text(f"{span}\n")
    return domain


def test_energy_sums_the_packages_not_their_subzones_and_survives_a_wrap(tmp_path):
    first = write_domain(tmp_path, "intel-rapl:0", 1_000_000, 10_000_000)
    second = write_domain(tmp_path, "intel-rapl:1", 9_999_000, 10_000_000)
    core = write_domain(tmp_path, "intel-rapl:0:0", 5, 10_000_000)  # a subzone: part of package 0
    assert package_domains(tmp_path) == [first, second]
    meter = RaplMeter(tmp_path)
    meter.start()
    (first / "energy_uj").write_text("1250000\n")  # +250,000 uJ
    (second / "energy_uj").write_text("500\n")  # wrapped: +1,000 + 500 uJ
    (core / "energy_uj").write_text("9000000\n")
    millijoules, seconds = meter.stop()
    assert millijoules == pytest.approx(251.5) and seconds >= 0


def test_status_names_what_is_missing(tmp_path):
    available, reason = rapl_status(tmp_path / "absent")
    assert not available and "does not exist" in reason
    tmp_path.joinpath("empty").mkdir()
    available, reason = rapl_status(tmp_path / "empty")
    assert not available and "no intel-rapl package domain" in reason
    with pytest.raises(RuntimeError, match="not available"):
        RaplMeter(tmp_path / "absent")
