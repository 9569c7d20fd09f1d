"""Forward+backward cost of the quantum head: PyTorch simulation vs PennyLane default.qubit and lightning.qubit.

For 4 qubits / 2 layers and 8 qubits / 3 layers at batch 32 and 1024, times one training step of
``common.quantum.QuantumLayer`` (forward, then backward of ``sum(out * cotangent)`` to the inputs and weights,
as in the hybrid model where the inputs come from a trainable encoder) for three backends:

* ``torch``: the batched PyTorch state-vector simulation (backprop);
* ``default.qubit``: PennyLane QNode, diff_method="backprop";
* ``lightning.qubit``: PennyLane QNode, diff_method="adjoint".

Each time is the median over repeats after one warm-up step on min(batch, 32) rows; the number of repeats
is what fits in ``--case-seconds`` (1 to 50). lightning.qubit runs one tape per sample (adjoint has no
parameter broadcasting) and decomposes the trainable amplitude embedding per sample, so its time is linear in
the batch; where one step would exceed ``--case-seconds`` it is measured on the largest multiple of 32 rows
that fits and scaled linearly to the full batch (labelled ``extrapolated_from_batch``; ``--full`` measures
every batch in full instead). Also reports speed ratios (reference time / torch time) and the largest absolute
differences from the torch backend in outputs and input gradients on the rows both computed, and in weight
gradients where both saw the full batch.

    python -m benchmarks.quantum_head --json [--case-seconds 5] [--full]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import pennylane as qml
import torch

from common.quantum import QuantumLayer

CONFIGS = ((4, 2), (8, 3))
BATCHES = (32, 1024)
BACKENDS = {
    "torch": {"backend": "torch"},
    "default.qubit": {"backend": "pennylane", "device": "default.qubit"},
    "lightning.qubit": {"backend": "pennylane", "device": "lightning.qubit"},
}
MAX_REPEATS = 50
MIN_REPEATS = 3
EXTRAPOLATION_STEP = 32


def _step(layer: QuantumLayer, x: torch.Tensor, cotangent: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One forward+backward: returns outputs, d loss/d x, d loss/d weights for loss = sum(out * cotangent)."""
    x = x.detach().requires_grad_(True)
    out = layer(x)
    grad_x, grad_w = torch.autograd.grad((out * cotangent).sum(), (x, layer.weights))
    return out.detach(), grad_x, grad_w


def _timed_step(layer: QuantumLayer, x: torch.Tensor, cotangent: torch.Tensor) -> tuple[float, tuple]:
    start = time.perf_counter()
    result = _step(layer, x, cotangent)
    return time.perf_counter() - start, result


def measure(layer: QuantumLayer, x: torch.Tensor, cotangent: torch.Tensor, case_seconds: float, full: bool) -> dict:
    """Median step time at full batch, or on a sub-batch scaled linearly when one step exceeds case_seconds."""
    batch = x.shape[0]
    probe_rows = min(batch, EXTRAPOLATION_STEP)
    probe_seconds, _ = _timed_step(layer, x[:probe_rows], cotangent[:probe_rows])  # warm-up: pays one-off costs
    rows = batch
    if not full and probe_seconds * batch / probe_rows > case_seconds:
        fitting = int(case_seconds / probe_seconds * probe_rows) // EXTRAPOLATION_STEP * EXTRAPOLATION_STEP
        rows = min(batch, max(probe_rows, fitting))
    estimate = probe_seconds * rows / probe_rows
    repeats = max(1, min(MAX_REPEATS, int(case_seconds / max(estimate, 1e-9))))
    times = []
    for _ in range(repeats):
        seconds, result = _timed_step(layer, x[:rows], cotangent[:rows])
        times.append(seconds)
    entry = {"seconds": statistics.median(times) * batch / rows, "repeats": repeats, "rows": rows, "result": result}
    if rows != batch:
        entry["extrapolated_from_batch"] = rows
    return entry


def _max_abs_diff(reference: tuple, other: tuple, rows: int, same_batch: bool) -> dict[str, float]:
    """Largest |difference| of outputs and input gradients on the first ``rows`` rows; weight grads need all rows."""
    diffs = {
        "output": (reference[0][:rows].double() - other[0][:rows].double()).abs().max().item(),
        "grad_input": (reference[1][:rows].double() - other[1][:rows].double()).abs().max().item(),
    }
    if same_batch:
        diffs["grad_weights"] = (reference[2].double() - other[2].double()).abs().max().item()
    return diffs


def run_case(n_qubits: int, n_layers: int, batch: int, case_seconds: float, full: bool, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2**n_qubits, generator=generator)
    cotangent = torch.randn(batch, n_qubits, generator=generator)
    weights = 2 * math.pi * torch.rand(n_layers, n_qubits, 3, generator=generator)
    entries = {}
    for name, kwargs in BACKENDS.items():
        layer = QuantumLayer(n_qubits, n_layers, **kwargs)
        layer.load_state_dict({"weights": weights})
        entries[name] = measure(layer, x, cotangent, case_seconds, full)
    torch_entry = entries["torch"]
    case = {
        "n_qubits": n_qubits,
        "n_layers": n_layers,
        "batch": batch,
        "seconds": {name: entry["seconds"] for name, entry in entries.items()},
        "repeats": {name: entry["repeats"] for name, entry in entries.items()},
        "speedup_of_torch": {
            name: entry["seconds"] / torch_entry["seconds"] for name, entry in entries.items() if name != "torch"
        },
        "max_abs_diff_vs_torch": {},
    }
    extrapolated = {name: e["extrapolated_from_batch"] for name, e in entries.items() if "extrapolated_from_batch" in e}
    if extrapolated:
        case["extrapolated_from_batch"] = extrapolated
    for name, entry in entries.items():
        if name == "torch":
            continue
        rows = entry["rows"]
        case["max_abs_diff_vs_torch"][name] = _max_abs_diff(
            torch_entry["result"], entry["result"], rows, same_batch=rows == batch
        )
    return case


def run(case_seconds: float, full: bool, seed: int) -> dict:
    start = time.perf_counter()
    cases = [
        run_case(n_qubits, n_layers, batch, case_seconds, full, seed)
        for n_qubits, n_layers in CONFIGS
        for batch in BATCHES
    ]
    overall: dict[str, float] = {}
    for case in cases:
        for diffs in case["max_abs_diff_vs_torch"].values():
            for key, value in diffs.items():
                overall[key] = max(overall.get(key, 0.0), value)
    return {
        "benchmark": "quantum_head_forward_backward",
        "loss": "sum(out * cotangent), gradients w.r.t. inputs and weights",
        "timing": "median seconds per step after one warm-up step on min(batch, 32) rows",
        "torch_version": torch.__version__,
        "pennylane_version": qml.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "case_seconds": case_seconds,
        "full": full,
        "cases": cases,
        "max_abs_diff_vs_torch": overall,
        "total_seconds": time.perf_counter() - start,
    }


def print_table(report: dict) -> None:
    names = list(BACKENDS)
    header = f"{'qubits':>6} {'layers':>6} {'batch':>6} " + " ".join(f"{name + ' ms':>20}" for name in names)
    print(header + f" {'default/torch':>14} {'lightning/torch':>16}")
    for case in report["cases"]:
        cells = []
        for name in names:
            cell = f"{case['seconds'][name] * 1e3:.3f}"
            if name in case.get("extrapolated_from_batch", {}):
                cell += f" (x{case['batch'] // case['extrapolated_from_batch'][name]})"
            cells.append(f"{cell:>20}")
        ratios = case["speedup_of_torch"]
        print(
            f"{case['n_qubits']:>6} {case['n_layers']:>6} {case['batch']:>6} " + " ".join(cells)
            + f" {ratios['default.qubit']:>14.1f} {ratios['lightning.qubit']:>16.1f}"
        )
    print("(xK): measured on batch/K samples and scaled linearly")
    print("max |difference| vs torch:", json.dumps(report["max_abs_diff_vs_torch"]))
    print(f"total {report['total_seconds']:.1f} s, torch threads {report['torch_threads']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--case-seconds", type=float, default=5.0,
                        help="time budget for the repeats of one backend and case (at least one repeat)")
    parser.add_argument("--full", action="store_true", help="measure every batch in full, never extrapolate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not math.isfinite(args.case_seconds) or args.case_seconds <= 0:
        parser.error(f"--case-seconds must be a finite number > 0, got {args.case_seconds}")
    report = run(args.case_seconds, args.full, args.seed)
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
