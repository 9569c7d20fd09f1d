"""Energy the CPU packages spend on a piece of work, from the kernel's RAPL powercap interface.

``E = sum over package domains d of (c_d(after) - c_d(before)) mod R_d`` in microjoules, where ``c_d`` is the
domain's ``energy_uj`` counter under ``/sys/class/powercap/intel-rapl:N`` (the top-level, per-socket package
domains; their subzones ``intel-rapl:N:M``, cores and uncore, are parts of the package and are not added again)
and ``R_d`` its ``max_energy_range_uj``, at which the counter wraps (at most once per interval is assumed: a
package at 100 W wraps a 2^32 uJ range in about 43 s, so intervals must stay shorter than one range). The
figure is the whole package's energy over the interval, other processes included: measure on an idle machine.
Without the interface (no RAPL driver, a container or VM that hides it, or ``energy_uj`` readable by root only
since Linux 5.10), :func:`rapl_status` says why and nothing fails.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")
_PACKAGE = re.compile(r"^intel-rapl:\d+$")


def package_domains(root: Path = POWERCAP) -> list[Path]:
    """The top-level package domains under ``root``, sorted."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _PACKAGE.match(p.name))


def rapl_status(root: Path = POWERCAP) -> tuple[bool, str]:
    """(available, reason): whether package energy can be read here, and if not, why."""
    if not root.is_dir():
        return False, f"{root} does not exist: the kernel (or the container or VM) exposes no powercap interface"
    domains = package_domains(root)
    if not domains:
        return False, f"{root} has no intel-rapl package domain (no RAPL driver, or a CPU without RAPL)"
    for domain in domains:
        try:
            int((domain / "energy_uj").read_text())
        except PermissionError:
            return False, f"{domain / 'energy_uj'} is readable by root only (Linux >= 5.10 restricts it)"
        except (OSError, ValueError) as err:
            return False, f"{domain / 'energy_uj'} could not be read: {err}"
    return True, f"RAPL, {len(domains)} package domain(s)"


class RaplMeter:
    """``meter.start()``, work, ``meter.stop()`` -> (millijoules, seconds) over the package domains."""

    def __init__(self, root: Path = POWERCAP) -> None:
        available, reason = rapl_status(root)
        if not available:
            raise RuntimeError(f"RAPL energy is not available: {reason}")
        self.domains = package_domains(root)
        self.ranges = [int((d / "max_energy_range_uj").read_text()) for d in self.domains]

    def _counters(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self.domains]

    def start(self) -> None:
        self._t0, self._c0 = time.perf_counter(), self._counters()

    def stop(self) -> tuple[float, float]:
        counters, seconds = self._counters(), time.perf_counter() - self._t0
        microjoules = sum((after - before) % span for before, after, span in zip(self._c0, counters, self.ranges))
        return microjoules / 1000.0, seconds
