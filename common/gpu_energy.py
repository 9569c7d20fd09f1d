"""Energy a GPU spends on a piece of work, from NVIDIA's management library (NVML, ``nvidia-ml-py``).

``E = counter(after) - counter(before)`` in millijoules, where the counter is
``nvmlDeviceGetTotalEnergyConsumption`` (energy since the driver loaded; Volta and later GPUs). On
GPUs without that counter, power (``nvmlDeviceGetPowerUsage``, milliwatts) is sampled every
:data:`SAMPLE_SECONDS` in a thread and integrated with the trapezoid rule. The figure is the whole
board's energy over the interval, so other work on the GPU counts too: measure on an otherwise idle
GPU. Without the library, a GPU or NVML, :func:`nvml_status` says why and nothing fails.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

SAMPLE_SECONDS = 0.01


def nvml_status() -> tuple[bool, str]:
    """(available, reason): whether energy can be read here, and if not, why."""
    try:
        import pynvml
    except ImportError:
        return False, "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, _DriverNotLoaded ...: no NVIDIA driver here
        return False, f"NVML did not start ({err}): no NVIDIA GPU or driver"
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return False, "NVML found no GPU"
        return True, "NVML"
    finally:
        pynvml.nvmlShutdown()


@dataclass
class EnergyReading:
    millijoules: float
    seconds: float
    method: str  # "energy counter" or "power sampling"


class GpuEnergyMeter:
    """``with meter: work()`` then ``meter.reading``; or start()/stop() around batches, summing up."""

    def __init__(self, index: int = 0) -> None:
        import pynvml
        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self.method = "energy counter"
        except pynvml.NVMLError:
            self.method = "power sampling"
        self.total_mj, self.total_seconds = 0.0, 0.0
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.perf_counter(), self._nvml.nvmlDeviceGetPowerUsage(self._handle)))
            time.sleep(SAMPLE_SECONDS)

    def start(self) -> None:
        self._t0 = time.perf_counter()
        if self.method == "energy counter":
            self._e0 = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        else:
            self._samples, self._stop = [], threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def stop(self) -> EnergyReading:
        seconds = time.perf_counter() - self._t0
        if self.method == "energy counter":
            mj = float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._e0)
        else:
            self._stop.set()
            self._thread.join()
            times = [t for t, _ in self._samples]
            watts_mw = [p for _, p in self._samples]
            mj = sum((t1 - t0) * (p0 + p1) / 2 for t0, t1, p0, p1 in  # mW x s = mJ
                     zip(times, times[1:], watts_mw, watts_mw[1:])) if len(times) > 1 else 0.0
        self.total_mj += mj
        self.total_seconds += seconds
        return EnergyReading(mj, seconds, self.method)

    def close(self) -> None:
        self._nvml.nvmlShutdown()
