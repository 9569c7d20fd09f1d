"""The leakage benchmark's attack recovers a signal that the activations carry, and not one they do not."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from benchmarks.split_leakage import TARGET_POOL, attack, main


class Pooled(nn.Module):
    """An 'extractor' that sends the signal itself, averaged like the attacker's target: nothing hidden."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool1d(x, TARGET_POOL).flatten(1)


def _signals(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(200) / 100
    phase = rng.uniform(0, 2 * np.pi, (n, 3, 1))
    freq = rng.uniform(0.5, 2.0, (n, 1, 1))
    return np.sin(2 * np.pi * freq * t + phase).astype(np.float32)


def test_attack_reconstructs_what_the_activations_carry_and_noise_hides_it():
    aux, victims = _signals(300, 0), _signals(60, 1)
    open_view = attack(Pooled(), aux, victims, sigma=0.0, epochs=60, seed=0)
    assert open_view["pearson_per_lead"].mean() > 0.9 and open_view["nmse"] < 0.2 and open_view["dcor"] > 0.9
    hidden = attack(Pooled(), aux, victims, sigma=100.0, epochs=60, seed=0)
    assert hidden["pearson_per_lead"].mean() < 0.3 and hidden["dcor"] < open_view["dcor"]


def test_benchmark_writes_one_json_object(tmp_path, capsys):
    assert main(["--synthetic-records", "300", "--cuts", "conv4", "--epochs", "1", "--attack-epochs", "2",
                 "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "split_leakage.json").read_text())
    rows = result["results"]
    assert [(r["cut"], r["defence"]) for r in rows] == [("conv4", d) for d in ("none", "noise", "relative-noise",
                                                                            "nopeek")]
    for row in rows:
        assert 0.0 <= row["dcor"] <= 1.0 and 0.0 <= row["macro_auc"] <= 1.0 and len(row["pearson_per_lead"]) == 12
    assert result["records"]["victims"] > 0 and result["records"]["attacker_auxiliary"] > 0
