"""Forward+backward cost of the quantum heads: PyTorch simulation vs PennyLane default.qubit and lightning.qubit.

For 4 qubits / 2 layers and 8 qubits / 3 layers at batch 32 and 1024, times one training step (forward, then
backward of ``sum(out * cotangent)`` to the inputs and every parameter, as in the models where the inputs come
from a trainable encoder) of two circuits:

* ``strongly_entangling``: ``common.quantum.QuantumLayer`` (amplitude embedding + StronglyEntanglingLayers), with
  ``torch`` (the batched PyTorch state-vector simulation), ``default.qubit`` (PennyLane QNode, diff_method
  "backprop") and ``lightning.qubit`` (diff_method "adjoint");
* ``learned_entanglement``: ``common.learned_entanglement.LearnedEntanglementHead`` (attention-chosen IsingZZ
  couplings), with ``torch`` and ``default.qubit`` (its QNode broadcasts over the batch; lightning's adjoint
  method would run one tape per sample, as above).

Each time is the median over repeats after one warm-up step on min(batch, 32) rows; the number of repeats
is what fits in ``--case-seconds`` (1 to 50). The repeats are spread over 5 rounds that visit the backends in
turn (so that load from other processes hits them alike), and each visit starts with 3 untimed steps when that
is cheap (so that timed steps run warm, as consecutive training steps do); Python's garbage collector is paused
inside each visit, as timeit does.

A backend whose single step would exceed ``--case-seconds`` is measured on the largest multiple of 32 rows
that fits and scaled linearly to the full batch (labelled ``extrapolated_from_batch``; ``--full`` measures every
batch in full instead, about 4 minutes in all). With the default budget this concerns lightning.qubit at batch
1024 only: it runs one tape per sample (adjoint has no parameter broadcasting) and decomposes the trainable
amplitude embedding per sample, so its time is linear in the batch (about 0.6 s per 32 samples at 4 qubits and
4-5 s at 8 qubits here; a --full run measured 22.6 s and 179 s at batch 1024, matching the scaling).

Also reports speed ratios (reference time / torch time) and the largest absolute differences from the torch
backend in outputs and input gradients on the rows both computed, and in weight gradients where both saw the
full batch (weight gradients are sums over the batch, so float32 differences grow with it).

    python -m benchmarks.quantum_head --json [--case-seconds 5] [--full] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time

import pennylane as qml
import torch

from common.learned_entanglement import LearnedEntanglementHead
from common.quantum import QuantumLayer

CONFIGS = ((4, 2), (8, 3))
BATCHES = (32, 1024)
BACKENDS = {
    "torch": {"backend": "torch"},
    "default.qubit": {"backend": "pennylane", "device": "default.qubit"},
    "lightning.qubit": {"backend": "pennylane", "device": "lightning.qubit"},
}
CIRCUITS = {
    # name: (module class, input width for n qubits, backends measured)
    "strongly_entangling": (QuantumLayer, lambda n: 2**n, ("torch", "default.qubit", "lightning.qubit")),
    "learned_entanglement": (LearnedEntanglementHead, lambda n: n, ("torch", "default.qubit")),
}
MAX_REPEATS = 50
EXTRAPOLATION_STEP = 32
ROUNDS = 5
# Untimed steps at the start of each visit: after another backend's steps the caches take ~3 steps to warm.
WARM_STEPS = 3


def _step(layer: torch.nn.Module, x: torch.Tensor, cotangent: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One forward+backward: outputs, d loss/d x, d loss/d parameters (concatenated) for loss = sum(out * cotangent)."""
    x = x.detach().requires_grad_(True)
    out = layer(x)
    grad_x, *grad_params = torch.autograd.grad((out * cotangent).sum(), (x, *layer.parameters()))
    return out.detach(), grad_x, torch.cat([g.reshape(-1) for g in grad_params])


def _timed_step(layer: torch.nn.Module, x: torch.Tensor, cotangent: torch.Tensor) -> tuple[float, tuple]:
    start = time.perf_counter()
    result = _step(layer, x, cotangent)
    return time.perf_counter() - start, result


def plan(layer: torch.nn.Module, x: torch.Tensor, cotangent: torch.Tensor, case_seconds: float, full: bool) -> dict:
    """Warm-up step on min(batch, 32) rows; then the rows to time (full batch, or a multiple of 32 when one full
    step would exceed case_seconds) and the number of repeats that fits in case_seconds (1 to MAX_REPEATS)."""
    batch = x.shape[0]
    probe_rows = min(batch, EXTRAPOLATION_STEP)
    probe_seconds, _ = _timed_step(layer, x[:probe_rows], cotangent[:probe_rows])
    rows = batch
    if not full and probe_seconds * batch / probe_rows > case_seconds:
        fitting = int(case_seconds / probe_seconds * probe_rows) // EXTRAPOLATION_STEP * EXTRAPOLATION_STEP
        rows = min(batch, max(probe_rows, fitting))
    estimate = probe_seconds * rows / probe_rows
    repeats = max(1, min(MAX_REPEATS, int(case_seconds / max(estimate, 1e-9))))
    return {"rows": rows, "repeats": repeats, "times": [], "result": None}


def measure_in_rounds(layers: dict[str, torch.nn.Module], x: torch.Tensor, cotangent: torch.Tensor,
                      case_seconds: float, full: bool) -> dict[str, dict]:
    """Median step time per backend. The repeats are spread over ROUNDS rounds that visit every backend in turn,
    so that load from other processes hits all of them alike; each visit starts with WARM_STEPS untimed steps
    (when cheap) so that the timed steps run warm, as consecutive training steps do. A time measured on fewer
    rows than the batch is scaled linearly to the batch."""
    plans = {name: plan(layer, x, cotangent, case_seconds, full) for name, layer in layers.items()}
    for round_index in range(ROUNDS):
        for name, entry in plans.items():
            chunk = math.ceil(entry["repeats"] / ROUNDS)
            count = min(chunk, entry["repeats"] - len(entry["times"]))
            if count <= 0:
                continue
            rows = entry["rows"]
            gc.collect()
            gc.disable()  # as timeit does: no collection of another backend's garbage inside a timed step
            try:
                if entry["repeats"] >= ROUNDS:
                    for _ in range(WARM_STEPS):
                        _step(layers[name], x[:rows], cotangent[:rows])
                for _ in range(count):
                    seconds, entry["result"] = _timed_step(layers[name], x[:rows], cotangent[:rows])
                    entry["times"].append(seconds)
            finally:
                gc.enable()
    batch = x.shape[0]
    for entry in plans.values():
        entry["seconds"] = statistics.median(entry["times"]) * batch / entry["rows"]
    return plans


def _max_abs_diff(reference: tuple, other: tuple, rows: int, same_batch: bool) -> dict[str, float]:
    """Largest |difference| of outputs and input gradients on the first ``rows`` rows; weight grads need all rows."""
    diffs = {
        "output": (reference[0][:rows].double() - other[0][:rows].double()).abs().max().item(),
        "grad_input": (reference[1][:rows].double() - other[1][:rows].double()).abs().max().item(),
    }
    if same_batch:
        diffs["grad_parameters"] = (reference[2].double() - other[2].double()).abs().max().item()
    return diffs


def run_case(circuit: str, n_qubits: int, n_layers: int, batch: int, case_seconds: float, full: bool,
             seed: int) -> dict:
    module, width, backends = CIRCUITS[circuit]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width(n_qubits), generator=generator)
    cotangent = torch.randn(batch, n_qubits, generator=generator)
    layers = {}
    for name in backends:
        layers[name] = module(n_qubits, n_layers, **BACKENDS[name])
        if name == "torch":
            with torch.no_grad():  # general angles, not the near-identity start
                layers[name].weights.copy_(2 * math.pi * torch.rand(layers[name].weights.shape, generator=generator))
        else:
            layers[name].load_state_dict(layers["torch"].state_dict())
    entries = measure_in_rounds(layers, x, cotangent, case_seconds, full)
    torch_entry = entries["torch"]
    case = {
        "circuit": circuit,
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
    extrapolated = {name: e["rows"] for name, e in entries.items() if e["rows"] != batch}
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
        run_case(circuit, n_qubits, n_layers, batch, case_seconds, full, seed)
        for circuit in CIRCUITS
        for n_qubits, n_layers in CONFIGS
        for batch in BATCHES
    ]

    def find(circuit: str, n_qubits: int, n_layers: int, batch: int) -> dict:
        return next(c for c in cases if (c["circuit"], c["n_qubits"], c["n_layers"], c["batch"])
                    == (circuit, n_qubits, n_layers, batch))

    headline = find("strongly_entangling", 4, 2, 32)
    overall: dict[str, float] = {}
    for case in cases:
        for diffs in case["max_abs_diff_vs_torch"].values():
            for key, value in diffs.items():
                overall[key] = max(overall.get(key, 0.0), value)
    return {
        "benchmark": "quantum_head_forward_backward",
        "loss": "sum(out * cotangent), gradients w.r.t. inputs and every parameter",
        "speedup_of_torch": "reference seconds / torch seconds",
        "timing": "median seconds per step over 5 rounds that visit every backend in turn, warm steps, gc paused",
        "torch_version": torch.__version__,
        "pennylane_version": qml.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "case_seconds": case_seconds,
        "full": full,
        "speedup_of_torch_vs_default_qubit_4q_2l_batch32": headline["speedup_of_torch"]["default.qubit"],
        # The target: at least 20x at 8 qubits, 3 layers, batch 1024, for both circuits.
        "speedup_of_torch_vs_default_qubit_8q_3l_batch1024": {
            circuit: find(circuit, 8, 3, 1024)["speedup_of_torch"]["default.qubit"] for circuit in CIRCUITS},
        "cases": cases,
        "max_abs_diff_vs_torch": overall,
        "total_seconds": time.perf_counter() - start,
    }


def print_table(report: dict) -> None:
    names = list(BACKENDS)
    header = f"{'circuit':>20} {'qubits':>6} {'layers':>6} {'batch':>6} " + " ".join(f"{n + ' ms':>24}" for n in names)
    print(header + f" {'default/torch':>14} {'lightning/torch':>16}")
    for case in report["cases"]:
        cells = []
        for name in names:
            cell = f"{case['seconds'][name] * 1e3:.3f}" if name in case["seconds"] else "-"
            if name in case.get("extrapolated_from_batch", {}):
                cell += f" ({case['extrapolated_from_batch'][name]} rows)"
            cells.append(f"{cell:>24}")
        ratios = case["speedup_of_torch"]
        lightning = f"{ratios['lightning.qubit']:.1f}" if "lightning.qubit" in ratios else "-"
        print(
            f"{case['circuit']:>20} {case['n_qubits']:>6} {case['n_layers']:>6} {case['batch']:>6} " + " ".join(cells)
            + f" {ratios['default.qubit']:>14.1f} {lightning:>16}"
        )
    print("(N rows): measured on the first N samples of the batch and scaled linearly")
    print("max |difference| vs torch:", json.dumps(report["max_abs_diff_vs_torch"]))
    print(f"total {report['total_seconds']:.1f} s, torch threads {report['torch_threads']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--case-seconds", type=float, default=5.0,
                        help="time budget for the repeats of one backend and case (at least one repeat)")
    parser.add_argument("--full", action="store_true", help="measure every batch in full, never extrapolate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    args = parser.parse_args(argv)
    if not math.isfinite(args.case_seconds) or args.case_seconds <= 0:
        parser.error(f"--case-seconds must be a finite number > 0, got {args.case_seconds}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.case_seconds, args.full, args.seed)
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
