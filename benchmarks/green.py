"""Green-AI figures of every model choice: size, inference latency, energy and spikes, against the note's targets.

For each choice (classical, hybrid, gated, green and the green model's ablations, built as ``build_model`` builds
them for the data set) this measures, in one run:

* parameters, and bytes as stored (float32 state dict) and as deployed (one-bit convolution weights counted as
  bits, plus their per-channel scales; every other value 32 bits);
* inference latency on the CPU per sample (batch 1) and per batch of 64, the median over repeats after warm-up
  (``torch.no_grad``, eval mode); on a GPU too when there is one (CUDA synchronised around each call);
* energy per sample: on the CPU from RAPL (``common.cpu_energy``) when the kernel exposes it, on a GPU from NVML
  (``common.gpu_energy``), each over repeated inferences of at least ``--energy-seconds``; otherwise "not
  available" and the reason;
* spikes per sample (the spiking models: every spike of every stage and step, on the windows measured).

The windows are the data set's validation records (``--data-path``, else its built-in set). With ``--runs DIR``
(a ``benchmarks.compare`` output folder) each choice loads the final model of its arm's first seed when present,
so the spike counts are those of a trained model; otherwise the models are freshly initialised (latency does not
depend on the weights). The design note's targets: fewer than 50,000 parameters, under 10 ms per inference
(batch 1, CPU here; the note does not name the device) and under 0.5 mJ per sample; the table says which choice
meets which, ``n/a`` where a figure could not be measured.

    python -m benchmarks.green --json [--data-path DIR] [--runs DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from common.config import RunConfig
from common.cpu_energy import RaplMeter, rapl_status
from common.gpu_energy import GpuEnergyMeter, nvml_status
from common.model import build_model, count_parameters

# choice: (run config keys, the benchmarks.compare arm whose trained model it is)
CHOICES = {
    "classical": ({"model": "classical"}, "fedavg-classical"),
    "hybrid": ({"model": "hybrid"}, "fedavg"),
    "gated": ({"model": "gated"}, "fedavg-gated"),
    "green": ({"model": "green"}, "fedavg-green"),
    "green-no-spikes": ({"model": "green", "green_spiking": False}, "green-no-spikes"),
    "green-real-weights": ({"model": "green", "green_binary": False}, "green-real-weights"),
    "green-fixed-entanglement": ({"model": "green", "green_entanglement": "fixed"}, "green-fixed-entanglement"),
    "green-classical-path": ({"model": "green", "green_paths": "classical"}, "green-classical-path"),
    "green-quantum-path": ({"model": "green", "green_paths": "quantum"}, "green-quantum-path"),
}
TARGETS = {"parameters": 50_000, "ms_per_inference": 10.0, "mj_per_sample": 0.5}
BATCH = 64
WARM_UP = 3


def stored_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def deployed_bytes(model: torch.nn.Module) -> float:
    bits = model.deployed_bits() if hasattr(model, "deployed_bits") else 32 * count_parameters(model)
    return bits / 8


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(model: torch.nn.Module, x: torch.Tensor, device: str, budget: float) -> float:
    """Median wall time of one forward pass, over repeats filling ``budget`` seconds (5 to 200)."""
    with torch.no_grad():
        for _ in range(WARM_UP):
            model(x)
        _synchronise(device)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < 5 or (len(times) < 200 and time.perf_counter() - started < budget):
            t0 = time.perf_counter()
            model(x)
            _synchronise(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def energy_per_sample(model: torch.nn.Module, x: torch.Tensor, device: str, meter, seconds: float) -> float:
    """Millijoules per sample over repeated forward passes lasting at least ``seconds``."""
    passes = 0
    with torch.no_grad():
        _synchronise(device)
        meter.start()
        started = time.perf_counter()
        while passes < 3 or time.perf_counter() - started < seconds:
            model(x)
            passes += 1
        _synchronise(device)
        reading = meter.stop()
    millijoules = reading[0] if isinstance(reading, tuple) else reading.millijoules
    return millijoules / (passes * x.shape[0])


def load_trained(model: torch.nn.Module, runs: Path | None, arm: str, seed: int) -> str:
    """Load ``runs/runs/<arm>-seed<seed>/final_model_plain.pt`` into ``model`` if present; say what was used."""
    if runs is None:
        return "initial"
    path = runs / "runs" / f"{arm}-seed{seed}" / "final_model_plain.pt"
    if not path.is_file():
        return f"initial ({path} not found)"
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code from the file
    missing = set(model.state_dict()) - set(state)
    if missing:
        return f"initial ({path} lacks {sorted(missing)[:2]}: encrypted layers stay ciphertexts)"
    model.load_state_dict(state)
    return str(path)


def measure(choice: str, windows: torch.Tensor, args: argparse.Namespace, meters: dict) -> dict:
    keys, arm = CHOICES[choice]
    cfg = RunConfig(dataset=args.dataset, **keys)
    model = build_model(cfg).eval()
    weights = load_trained(model, args.runs, arm, args.seed)
    parameters = count_parameters(model)
    row: dict = {"choice": choice, "run_config": keys, "weights": weights, "parameters": parameters,
                 "bytes_stored": stored_bytes(model), "bytes_deployed": deployed_bytes(model)}
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        model.to(device)
        one, batch = windows[:1].to(device), windows[:BATCH].to(device)
        seconds_one = median_seconds(model, one, device, args.case_seconds)
        seconds_batch = median_seconds(model, batch, device, args.case_seconds)
        figures = {"ms_per_sample_batch1": 1e3 * seconds_one, "ms_per_batch64": 1e3 * seconds_batch,
                   "ms_per_sample_batch64": 1e3 * seconds_batch / batch.shape[0], "mj_per_sample_batch1": None,
                   "mj_per_sample_batch64": None}
        meter = meters.get(device)
        if meter is not None:
            figures["mj_per_sample_batch1"] = energy_per_sample(model, one, device, meter, args.energy_seconds)
            figures["mj_per_sample_batch64"] = energy_per_sample(model, batch, device, meter, args.energy_seconds)
        row[device] = figures
    model.to("cpu")
    with torch.no_grad():
        model(windows[:BATCH])
    row["spikes_per_sample"] = getattr(model, "spikes_per_sample", None) if cfg.model == "green" else None
    energies = [row[d]["mj_per_sample_batch1"] for d in ("cpu", "cuda") if d in row
                and row[d]["mj_per_sample_batch1"] is not None]
    row["targets"] = {
        "parameters_under_50k": parameters < TARGETS["parameters"],
        "under_10ms_per_inference_cpu": row["cpu"]["ms_per_sample_batch1"] < TARGETS["ms_per_inference"],
        "under_0.5mj_per_sample": (min(energies) < TARGETS["mj_per_sample"]) if energies else None,
    }
    return row


def validation_windows(args: argparse.Namespace) -> torch.Tensor:
    from data_prep.client_data import split_arrays

    cfg = RunConfig(dataset=args.dataset, data_path=args.data_path)
    x, _ = split_arrays(cfg, None, "val")
    if len(x) < BATCH:
        raise SystemExit(f"error: the validation split holds {len(x)} records; expected at least {BATCH}")
    return torch.as_tensor(x[:BATCH])


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    windows = validation_windows(args)
    rapl_ok, rapl_reason = rapl_status()
    nvml_ok, nvml_reason = nvml_status()
    meters = {}
    if rapl_ok:
        meters["cpu"] = RaplMeter()
    if nvml_ok and torch.cuda.is_available():
        meters["cuda"] = GpuEnergyMeter()
    rows = []
    for choice in args.choices:
        rows.append(measure(choice, windows, args, meters))
        print(f"[green] {choice}: {rows[-1]['parameters']:,} parameters, "
              f"{rows[-1]['cpu']['ms_per_sample_batch1']:.2f} ms per inference on the CPU", file=sys.stderr, flush=True)
    if "cuda" in meters:
        meters["cuda"].close()
    return {
        "benchmark": "green_ai_figures",
        "dataset": args.dataset, "windows": list(windows.shape), "data_path": args.data_path or "built-in",
        "targets": TARGETS,
        "energy_cpu": rapl_reason if rapl_ok else f"not available: {rapl_reason}",
        "energy_gpu": (nvml_reason if "cuda" in meters else
                       f"not available: {nvml_reason if not nvml_ok else 'torch sees no CUDA device'}"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "choices": rows, "total_seconds": time.perf_counter() - started,
    }


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    gpu = report["gpu"]
    lines = [f"Windows {report['windows']} of {report['dataset']} ({report['data_path']}); CPU energy: "
             f"{report['energy_cpu']}; GPU energy: {report['energy_gpu']}.", "",
             "| choice | parameters | stored | deployed | CPU ms / inference | CPU ms / batch of 64 | "
             "CPU mJ / sample | "
             + (f"{gpu} ms / inference | GPU ms / batch of 64 | GPU mJ / sample | " if gpu else "")
             + "spikes / sample | weights | < 50k params | < 10 ms | < 0.5 mJ |",
             "|" + "---|" * (15 if gpu else 12)]
    yes = {True: "yes", False: "no", None: "n/a"}
    for row in report["choices"]:
        cells = [row["choice"], f"{row['parameters']:,}", f"{row['bytes_stored'] / 1e3:.1f} kB",
                 f"{row['bytes_deployed'] / 1e3:.1f} kB", _fmt(row["cpu"]["ms_per_sample_batch1"]),
                 _fmt(row["cpu"]["ms_per_batch64"]), _fmt(row["cpu"]["mj_per_sample_batch1"], 3)]
        if gpu:
            cells += [_fmt(row["cuda"]["ms_per_sample_batch1"]), _fmt(row["cuda"]["ms_per_batch64"]),
                      _fmt(row["cuda"]["mj_per_sample_batch1"], 3)]
        spikes = row["spikes_per_sample"]
        cells += ["-" if spikes is None else f"{spikes:,.0f}",
                  "initial" if row["weights"].startswith("initial") else "trained",
                  *(yes[v] for v in row["targets"].values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--dataset", default="ptbxl")
    parser.add_argument("--data-path", default="", help="the data set's folder; empty: its built-in set")
    parser.add_argument("--runs", type=Path, default=None, help="a benchmarks.compare --out folder: trained models")
    parser.add_argument("--seed", type=int, default=0, help="with --runs: the seed whose models are loaded")
    parser.add_argument("--choices", default=",".join(CHOICES), help=f"comma-separated, from {', '.join(CHOICES)}")
    parser.add_argument("--case-seconds", type=float, default=2.0, help="time budget of each latency median")
    parser.add_argument("--energy-seconds", type=float, default=2.0, help="shortest energy-measuring interval")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="also write green.json and green.md here")
    args = parser.parse_args(argv)
    args.choices = [c.strip() for c in args.choices.split(",") if c.strip()]
    unknown = [c for c in args.choices if c not in CHOICES]
    if unknown or not args.choices:
        parser.error(f"--choices {','.join(args.choices)!r}: expected names from {', '.join(CHOICES)}")
    for name in ("case_seconds", "energy_seconds"):
        if not math.isfinite(getattr(args, name)) or getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(args, name)}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.runs is not None and not args.runs.is_dir():
        parser.error(f"--runs {args.runs}: expected a benchmarks.compare output folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "green.json").write_text(json.dumps(report, indent=1))
        (args.out / "green.md").write_text(markdown(report))
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
