"""benchmarks.green on the built-in set: sizes counted as the models hold them, a trained model read back, files."""

from __future__ import annotations

import json

import torch

from benchmarks.green import main
from common.config import RunConfig
from common.cpu_energy import rapl_status
from common.model import build_model, count_parameters


def test_one_run_measures_every_figure_and_reads_a_trained_model(tmp_path, capsys):
    runs = tmp_path / "study"
    trained = build_model(RunConfig(model="green", seed=7))
    (runs / "runs" / "fedavg-green-seed0").mkdir(parents=True)
    torch.save(trained.state_dict(), runs / "runs" / "fedavg-green-seed0" / "final_model_plain.pt")
    assert main(["--json", "--choices", "hybrid,green", "--case-seconds", "0.05", "--energy-seconds", "0.05",
                 "--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    report = json.loads(capsys.readouterr().out)
    hybrid, green = report["choices"]
    assert hybrid["parameters"] == count_parameters(build_model(RunConfig())) and hybrid["spikes_per_sample"] is None
    assert hybrid["bytes_stored"] == hybrid["bytes_deployed"] == 4 * hybrid["parameters"]
    assert green["weights"].endswith("fedavg-green-seed0/final_model_plain.pt")
    assert hybrid["weights"].startswith("initial")
    assert green["bytes_deployed"] == trained.deployed_bits() / 8 < green["bytes_stored"] / 4
    assert green["spikes_per_sample"] > 0 and green["targets"]["parameters_under_50k"]
    for row in report["choices"]:
        cpu = row["cpu"]
        assert 0 < cpu["ms_per_sample_batch1"] and 0 < cpu["ms_per_sample_batch64"] < cpu["ms_per_batch64"]
        assert row["targets"]["under_10ms_per_inference_cpu"] == (cpu["ms_per_sample_batch1"] < 10)
    available, reason = rapl_status()
    if not available:  # the energy figure says why it is missing instead of inventing one
        assert report["energy_cpu"] == f"not available: {reason}"
        assert green["cpu"]["mj_per_sample_batch1"] is None and green["targets"]["under_0.5mj_per_sample"] is None
    assert "| green | 7,942 |" in (tmp_path / "out" / "green.md").read_text()
