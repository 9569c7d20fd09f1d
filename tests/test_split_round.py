"""A split-learning round on an in-process grid: clients step through their data; bad replies are dropped."""

from __future__ import annotations

import csv
import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client_app import split_steps
from common.config import NodeConfig, RunConfig
from common.instructions import ACTIVATIONS
from common.model import build_model
from common.split_model import split_model
from data_prep.client_data import client_arrays
from server_app.split_runner import SplitRun

ROUTES = {"train.split_step": split_steps.split_step, "query.split_readouts": split_steps.split_readouts,
          "query.split_weights": split_steps.split_weights, "query.split_activations": split_steps.split_activations,
          "evaluate.split_evaluate": split_steps.split_evaluate}


class InProcessGrid:
    """Delivers each message to the ClientApp function of its action, with one Context per node."""

    def __init__(self, cfg: RunConfig, nodes: int, tamper=None) -> None:
        self.contexts = {i + 1: Context(1, i + 1, {"partition-id": i, "num-partitions": nodes}, RecordDict(),
                                        cfg.as_flat_dict()) for i in range(nodes)}
        self.tamper = tamper or (lambda message, reply: reply)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        return [self.tamper(m, ROUTES[m.metadata.message_type](m, self.contexts[m.metadata.dst_node_id]))
                for m in messages]


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a running ServerApp sets


def _cfg(**extra) -> RunConfig:
    return RunConfig.from_flower({"mode": "split", "num-server-rounds": 2, "local-epochs": 1,
                                  "synthetic-records": 300, **extra})


def _local_train_sizes(cfg: RunConfig, nodes: int) -> list[int]:
    return [len(client_arrays(cfg, NodeConfig(partition_id=i, num_partitions=nodes)).y_train) for i in range(nodes)]


@pytest.mark.parametrize("variant", ["plain", "u-shaped"])
def test_round_steps_every_record_and_averages_by_size(variant):
    cfg = _cfg(**{"split-variant": variant})
    grid = InProcessGrid(cfg, 3)
    run = SplitRun(cfg, grid)
    first = run.train_round(1, grid.get_node_ids())
    sizes = _local_train_sizes(cfg, 3)
    assert first.train["examples"] == sum(sizes) and first.dropped == []
    assert first.weights == pytest.approx({str(n): s / sum(sizes) for n, s in zip((1, 2, 3), sizes)})
    # every client now holds the average the server will send: round 2 starts from one extractor
    second = run.train_round(2, grid.get_node_ids())
    assert second.test is not None and second.test["num-examples"] > 0
    assert np.isfinite(second.validation["loss"])
    split = second.train["split"]
    batches = sum(-(-n // 32) for n in sizes)  # ceil: one micro-batch per message
    assert split["head_batches"] == batches and split["head_ms_per_batch"] > 0
    assert split["head_inference_ms_per_sample"] > 0
    # no GPU here: the energy figure is absent and says why, and nothing failed
    assert split["energy_mj_per_sample"] is None and "CPU" in split["energy_note"]


def test_bad_replies_drop_their_node_and_the_round_goes_on():
    cfg = _cfg()

    def tamper(message: Message, reply: Message) -> Message:
        node = message.metadata.dst_node_id
        if message.metadata.message_type == "train.split_step" and ACTIVATIONS in reply.content:
            arrays = {k: np.asarray(v.numpy()) for k, v in reply.content[ACTIVATIONS].items()}
            if node == 2:  # NaN activations
                arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
            if node == 3:  # the wrong width
                arrays = {k: v[:, :10] for k, v in arrays.items()}
            reply.content[ACTIVATIONS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return reply

    grid = InProcessGrid(cfg, 4, tamper)
    run = SplitRun(cfg, grid)
    result = run.train_round(1, grid.get_node_ids())
    assert result.dropped == ["node 2: activations holds non-finite values; expected finite numbers",
                              "node 3: activations of shape (32, 10); expected ('batch', 64)"]
    sizes = _local_train_sizes(cfg, 4)
    assert result.train["examples"] == sizes[0] + sizes[3] and result.train["clients"] == 2
    assert set(result.weights) == {"1", "4"}  # the dropped nodes' pieces are not averaged
    assert np.isfinite(result.validation["macro-auc"])


def test_mixed_data_sets_share_only_the_head():
    cfg = _cfg(**{"split-variant": "u-shaped", "split-datasets": "ptbxl,wesad", "num-server-rounds": 1})
    grid = InProcessGrid(cfg, 4)  # partitions 0, 2: PTB-XL; 1, 3: WESAD
    run = SplitRun(cfg, grid)
    result = run.train_round(1, grid.get_node_ids())
    assert result.dropped == [] and run.node_dataset == {1: "ptbxl", 2: "wesad", 3: "ptbxl", 4: "wesad"}
    ptbxl, wesad = run.group_weights["ptbxl"], run.group_weights["wesad"]
    first_block = "extractor.blocks.conv1.0.weight"
    assert ptbxl[first_block].shape[1] == 12 and wesad[first_block].shape[1] == 6  # each its own extractor
    assert ptbxl["top.weight"].shape == (5, 4) and wesad["top.weight"].shape == (3, 4)  # each its own final layer
    assert result.weights["1"] + result.weights["3"] == pytest.approx(1.0)  # averaged within a data set
    datasets = result.train["split"]["datasets"]
    assert set(datasets) == {"ptbxl", "wesad"} and result.test is not None
    assert datasets["wesad"]["test-num-examples"] > 0 and np.isfinite(datasets["ptbxl"]["test-macro-auc"])
    with pytest.raises(Exception, match="key 'split-datasets' has value 'ptbxl,wesad'; expected empty unless"):
        _cfg(**{"split-datasets": "ptbxl,wesad"})


def test_activation_noise_is_what_the_server_sees_and_nopeek_changes_training():
    cfg = _cfg(**{"split-activation-noise": 0.5, "num-server-rounds": 1})
    seen = {}

    def capture(message: Message, reply: Message) -> Message:
        node = message.metadata.dst_node_id
        if node == 1 and "first" not in seen and ACTIVATIONS in reply.content:
            batch = list(grid.contexts[1].state["split-cursor"]["pending-0"])
            seen["first"] = (batch, reply.content[ACTIVATIONS]["0"].numpy())
        return reply

    grid = InProcessGrid(cfg, 2, capture)
    SplitRun(cfg, grid).train_round(1, grid.get_node_ids())
    batch, sent = seen["first"]
    x = client_arrays(cfg, NodeConfig(partition_id=0, num_partitions=2)).x_train[batch]
    clean = split_model(build_model(cfg)).extractor(torch.as_tensor(x)).detach().numpy()  # round 1: initial weights
    rms = np.sqrt((clean ** 2).mean(axis=1, keepdims=True))
    assert np.std((sent - clean) / rms) == pytest.approx(0.5, rel=0.05)  # relative to each example's RMS

    weights = {}
    for weight in (0.0, 1.0):
        cfg = _cfg(**{"split-nopeek-weight": weight, "num-server-rounds": 1})
        grid = InProcessGrid(cfg, 2)
        run = SplitRun(cfg, grid)
        run.train_round(1, grid.get_node_ids())
        weights[weight] = run.group_weights[cfg.dataset]["extractor.blocks.conv1.0.weight"]
    assert not np.allclose(weights[0.0], weights[1.0], atol=1e-4)  # the dCor term reached the extractor


def test_a_split_without_records_is_reported_empty(tmp_path):
    """Real PTB-XL copies may lack fold 10: the last round still reports validation, and an empty test."""
    from data_prep.synth_ptbxl import write_synthetic_ptbxl

    root = write_synthetic_ptbxl(tmp_path / "ptbxl", n_records=300, seed=3)
    database = root / "ptbxl_database.csv"
    with database.open(newline="") as handle:
        rows = list(csv.reader(handle))
    fold = rows[0].index("strat_fold")
    with database.open("w", newline="") as handle:
        csv.writer(handle).writerows([rows[0]] + [row for row in rows[1:] if row[fold] != "10"])
    cfg = _cfg(**{"data-path": str(root), "num-server-rounds": 1})
    grid = InProcessGrid(cfg, 2)
    result = SplitRun(cfg, grid).train_round(1, grid.get_node_ids())
    assert result.dropped == [] and result.validation["num-examples"] > 0
    assert result.test["num-examples"] == 0
