"""Short ``flwr run .`` simulations of each strategy, through the same runner as ``make run``.

Each run uses its own Flower home and results folder; afterwards no SuperLink started for
it may still be running.
"""

from __future__ import annotations

import json
import math

import pytest

from common.config import NodeConfig, RunConfig
from data_prep.client_data import client_arrays
from data_prep.ptbxl import load_ptbxl
from data_prep.synth_ptbxl import ensure_synthetic_ptbxl
from server_app.simulation_runner import run_simulation, superlink_pids

FAST = "num-server-rounds=2 local-epochs=1 synthetic-records=300"


def _run(tmp_path, strategy: str, extra: str = "", supernodes: int = 3):
    results = tmp_path / "results"
    home = tmp_path / "flwr_home"
    proc = run_simulation(f"{FAST} strategy='{strategy}' results-dir='{results}' {extra}",
                          num_supernodes=supernodes, flwr_home=home, timeout=600, capture=True)
    assert superlink_pids(home.resolve()) == [], "the local SuperLink outlived the run"
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{proc.reason}\n{log[-4000:]}"
    assert proc.status == "finished:completed"
    metrics_path = results / "metrics.json"
    assert metrics_path.is_file(), log[-4000:]
    return json.loads(metrics_path.read_text()), log, results


@pytest.mark.parametrize("strategy", ["fedavg", "adeptheq", "fhe-fedqnn"])
def test_short_run_of_each_strategy(tmp_path, strategy):
    metrics, log, results = _run(tmp_path, strategy)
    assert metrics["config"]["strategy"] == strategy
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for r in metrics["rounds"]:
        assert r["train"]["clients"] == 3 and r["dropped"] == []
        assert r["bytes"]["train_up"] > 0 and r["bytes"]["train_down"] > 0
        assert sum(r["weights"].values()) == pytest.approx(1.0)
        assert 0.0 <= r["validation"]["accuracy"] <= 1.0
        assert r["validation"]["num-examples"] > 0
    test = metrics["test"]
    expected = len(load_ptbxl(ensure_synthetic_ptbxl(300), 100, verbose=False).split_indices("test"))
    assert test["num-examples"] == expected > 0  # the whole fold 10, each record once
    assert math.isfinite(test["macro-auc"])
    # the final model is the round best on validation; the last round's test figures are kept beside it
    selection = metrics["selection"]
    aucs = [r["validation"]["macro-auc"] for r in metrics["rounds"]]
    assert selection["metric"] == "macro-auc" and selection["round"] == 1 + aucs.index(max(aucs))
    assert selection["validation"]["macro-auc"] == pytest.approx(max(aucs), abs=1e-6)  # re-scored by a client
    assert metrics["test_last_round"] == metrics["rounds"][-1]["test"] and selection["test"] == test
    assert f"Chosen round {selection['round']} (validation macro-auc" in log
    assert (results / "rounds.csv").is_file() and (results / "curves.png").is_file()
    assert (results / "final_model_plain.pt").is_file()
    assert f"Results written to {results}" in log
    if strategy != "fedavg":
        # the server only ever loaded the public context; the aggregate stays encrypted
        assert (results / "final_model_encrypted" / "manifest.json").is_file()
    if strategy == "adeptheq":
        assert metrics["privacy"]["basic"] == pytest.approx(2.0)
        assert metrics["rounds"][0]["train"]["privacy"]["basic"] == pytest.approx(1.0)


def test_dp_sgd_trains_with_encryption_on_and_is_accounted(tmp_path):
    """Client-level DP: tests/test_update_privacy.py (through the ClientApp) and tests/test_strategy.py."""
    metrics, log, results = _run(tmp_path, "adeptheq", "update-dp='example' update-dp-noise=1.0 update-dp-clip=1.0")
    assert metrics["encrypted_layers"] == ["fc"] and (results / "final_model_encrypted" / "manifest.json").is_file()
    privacy = metrics["privacy"]
    assert privacy["update_dp"] == "example"
    clients = privacy["ledger"]["per_client"]
    assert len(clients) == 3
    for client in clients.values():
        assert client["accuracy_release"] == pytest.approx(privacy["pld"], rel=1e-6)
        assert client["dp_sgd"] > 0 and client["composed"] > max(client["accuracy_release"], client["dp_sgd"])
    for r in metrics["rounds"]:  # the exact training loss stays on the clients
        assert r["train"]["loss"] is None or math.isnan(r["train"]["loss"])
        for client in r["privacy_events"]["clients"].values():
            rate, sigma, steps = client["dp_sgd"]
            assert 0 < rate <= 1 and sigma == 1.0 and steps >= 1
    for node, client in metrics["rounds"][-1]["privacy_events"]["clients"].items():
        # the client's own Opacus RDP figure over the run bounds the ledger's tighter PLD figure from above
        assert client["opacus_epsilon"] >= clients[node]["dp_sgd"] > 0
    assert "Privacy at delta 1e-05, largest over clients" in log


@pytest.mark.parametrize("variant,strategy", [("plain", "fedavg"), ("u-shaped", "adeptheq")])
def test_short_split_learning_run(tmp_path, variant, strategy):
    """``mode='split'``: every client steps through its data each round; bytes and round trips are logged;
    the clients' pieces are averaged by the run's strategy (AdeptHEQ: DP weights, encrypted fc, freezing)."""
    metrics, log, results = _run(tmp_path, strategy, f"mode='split' split-variant='{variant}' split-micro-batches=2")
    assert metrics["split"]["variant"] == variant and metrics["split"]["head_device"] == "cpu"
    averaging = metrics["split"]["client_averaging"]
    assert averaging["strategy"] == strategy
    if strategy == "adeptheq":  # fc stays on the client in the U-shape, so it is the encrypted layer
        assert averaging["encrypted_layers"] == ["fc"] and averaging["weighting"] == "dp-softmax"
        assert metrics["privacy"]["basic"] == pytest.approx(2.0)
        assert all(0.0 <= r["train"]["dp_accuracy_mean"] <= 1.0 for r in metrics["rounds"])
    data = load_ptbxl(ensure_synthetic_ptbxl(300), 100, verbose=False)
    cfg = RunConfig.from_flower({**metrics["config"], "results-dir": ""})
    train_records = sum(len(client_arrays(cfg, NodeConfig(partition_id=i, num_partitions=3)).y_train)
                        for i in range(3))
    for r in metrics["rounds"]:
        split = r["train"]["split"]
        # each client's local training records went through the head once per local epoch (one epoch here)
        assert r["train"]["examples"] == train_records and r["dropped"] == []
        per_example = 64 * 4  # float32 activations at the default cut
        assert split["activation_bytes"] == train_records * per_example == split["gradient_bytes"]
        assert split["round_trips"] >= 2 and r["bytes"]["train_up"] > split["activation_bytes"]
        assert sum(r["weights"].values()) == pytest.approx(1.0)
    assert metrics["test"]["num-examples"] == len(data.split_indices("test"))
    assert math.isfinite(metrics["test"]["macro-auc"])
    assert "Split learning: " + variant in log
