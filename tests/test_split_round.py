"""A split-learning round on an in-process grid: clients step through their data; bad replies are dropped."""

from __future__ import annotations

import csv
import itertools
import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client_app import split_steps
from common.ckks import EncryptedWeightedSum, PackedDecryptor
from common.config import NodeConfig, RunConfig
from common.instructions import ACTIVATIONS
from common.keys import ensure_simulation_keys, load_client_context, load_server_context
from common.model import build_model
from common.split_model import split_model
from common.wire import from_array_record
from data_prep.client_data import client_arrays
from server_app.split_runner import SplitRun
from strategies.presets import options_for
from strategies.replies import RoundFailed
from strategies.weighting import tempered_softmax

ROUTES = {"train.split_step": split_steps.split_step, "query.split_readouts": split_steps.split_readouts,
          "query.split_weights": split_steps.split_weights, "query.split_activations": split_steps.split_activations,
          "evaluate.split_evaluate": split_steps.split_evaluate}


class InProcessGrid:
    """Delivers each message to the ClientApp function of its action, with one Context per node."""

    def __init__(self, cfg: RunConfig, nodes: int, tamper=None) -> None:
        self.contexts = {i + 1: Context(1, i + 1, {"partition-id": i, "num-partitions": nodes}, RecordDict(),
                                        cfg.as_flat_dict()) for i in range(nodes)}
        self.tamper = tamper or (lambda message, reply: reply)
        self.ids = itertools.count()

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        for message in messages:  # as Flower's grid does on sending
            message.metadata.__dict__["_message_id"] = f"message-{next(self.ids)}"
        return [self.tamper(m, ROUTES[m.metadata.message_type](m, self.contexts[m.metadata.dst_node_id]))
                for m in messages]


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a running ServerApp sets


def _cfg(**extra) -> RunConfig:
    return RunConfig.from_flower({"mode": "split", "num-server-rounds": 2, "local-epochs": 1,
                                  "synthetic-records": 300, "strategy": "fedavg", **extra})


def _run(cfg: RunConfig, grid: InProcessGrid, key_dir=None) -> SplitRun:
    """The ServerApp's SplitRun: the run's strategy and, with a key folder, its public context only."""
    options = options_for(cfg, build_model(cfg).layer_names())
    if key_dir is None:
        return SplitRun(cfg, grid, options)
    ensure_simulation_keys(key_dir)
    return SplitRun(cfg, grid, options, lambda: EncryptedWeightedSum(load_server_context(key_dir / "server.ctx")),
                    str(key_dir))


def _local_train_sizes(cfg: RunConfig, nodes: int) -> list[int]:
    return [len(client_arrays(cfg, NodeConfig(partition_id=i, num_partitions=nodes)).y_train) for i in range(nodes)]


@pytest.mark.parametrize("variant", ["plain", "u-shaped"])
def test_round_steps_every_record_and_averages_by_size(variant):
    cfg = _cfg(**{"split-variant": variant})
    grid = InProcessGrid(cfg, 3)
    run = _run(cfg, grid)
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
    run = _run(cfg, grid)
    result = run.train_round(1, grid.get_node_ids())
    assert result.dropped == ["node 2: activations holds non-finite values; expected finite numbers",
                              "node 3: activations of shape (32, 10); expected ('batch', 64)"]
    sizes = _local_train_sizes(cfg, 4)
    assert result.train["examples"] == sizes[0] + sizes[3] and result.train["clients"] == 2
    assert set(result.weights) == {"1", "4"}  # the dropped nodes' pieces are not averaged
    assert np.isfinite(result.validation["macro-auc"])


def test_a_round_with_fewer_good_clients_than_min_clients_fails_the_run():
    cfg = _cfg(**{"min-clients": 2})

    def tamper(message: Message, reply: Message) -> Message:
        if message.metadata.message_type == "train.split_step" and ACTIVATIONS in reply.content:
            arrays = {k: np.full_like(np.asarray(v.numpy()), np.nan) for k, v in reply.content[ACTIVATIONS].items()}
            if message.metadata.dst_node_id != 1:  # only node 1 stays good
                reply.content[ACTIVATIONS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return reply

    grid = InProcessGrid(cfg, 3, tamper)
    with pytest.raises(RoundFailed, match=r"round 1: 1 of 3 clients .* min-clients is 2; node 2: activations holds"):
        _run(cfg, grid).train_round(1, grid.get_node_ids())


@pytest.mark.parametrize("model", ["gated", "green"])
def test_the_gated_and_green_models_train_in_split_mode(model):
    cfg = _cfg(model=model, **{"synthetic-records": 100, **({"split-cut": "stage3"} if model == "green" else {})})
    grid = InProcessGrid(cfg, 2)
    result = _run(cfg, grid).train_round(1, grid.get_node_ids())
    assert result.dropped == [] and result.train["examples"] > 0 and np.isfinite(result.validation["macro-auc"])
    assert 0 < result.model["fusion-alpha"] < 1 and result.model["fusion-alpha"] != 0.5  # the gate trained


def test_mixed_data_sets_share_only_the_head():
    cfg = _cfg(**{"split-variant": "u-shaped", "split-datasets": "ptbxl,wesad", "num-server-rounds": 1})
    grid = InProcessGrid(cfg, 4)  # partitions 0, 2: PTB-XL; 1, 3: WESAD
    run = _run(cfg, grid)
    result = run.train_round(1, grid.get_node_ids())
    assert result.dropped == [] and run.node_dataset == {1: "ptbxl", 2: "wesad", 3: "ptbxl", 4: "wesad"}
    ptbxl, wesad = run.strategy("ptbxl").global_plain, run.strategy("wesad").global_plain
    assert ptbxl["conv1.0.weight"].shape[1] == 12 and wesad["conv1.0.weight"].shape[1] == 6  # each its own extractor
    assert ptbxl["fc.weight"].shape == (5, 4) and wesad["fc.weight"].shape == (3, 4)  # each its own final layer
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
    _run(cfg, grid).train_round(1, grid.get_node_ids())
    batch, sent = seen["first"]
    x = client_arrays(cfg, NodeConfig(partition_id=0, num_partitions=2)).x_train[batch]
    clean = split_model(build_model(cfg)).extractor(torch.as_tensor(x)).detach().numpy()  # round 1: initial weights
    rms = np.sqrt((clean ** 2).mean(axis=1, keepdims=True))
    assert np.std((sent - clean) / rms) == pytest.approx(0.5, rel=0.05)  # relative to each example's RMS

    weights = {}
    for weight in (0.0, 1.0):
        cfg = _cfg(**{"split-nopeek-weight": weight, "num-server-rounds": 1})
        grid = InProcessGrid(cfg, 2)
        run = _run(cfg, grid)
        run.train_round(1, grid.get_node_ids())
        weights[weight] = run.strategy(cfg.dataset).global_plain["conv1.0.weight"]
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
    result = _run(cfg, grid).train_round(1, grid.get_node_ids())
    assert result.dropped == [] and result.validation["num-examples"] > 0
    assert result.test["num-examples"] == 0


def test_client_pieces_go_through_the_strategy_dp_weights_encryption_and_freezing(tmp_path):
    """AdeptHEQ in split mode: DP-softmax weights, CKKS sums of the named client layers, frozen layers."""
    cfg = _cfg(**{"strategy": "adeptheq", "split-variant": "u-shaped", "he-layers": "conv1,fc",
                  "freeze-threshold": 10.0})  # so large that every client layer freezes after round 1
    seen: dict[int, list] = {}

    def capture(message: Message, reply: Message) -> Message:
        node = message.metadata.dst_node_id
        if message.metadata.message_type == "query.split_weights":
            own = from_array_record(grid.contexts[node].state["split-weights"])  # what the client trained
            seen.setdefault(node, []).append((message, reply, own))
        return reply

    grid = InProcessGrid(cfg, 3, capture)
    run = _run(cfg, grid, tmp_path / "keys")
    strategy = run.strategy(cfg.dataset)
    assert strategy.layers == ["conv1", "conv2", "conv3", "conv4", "fc"]  # quantum and proj stay on the server
    assert strategy.opt.encrypted_layers == {"conv1", "fc"}
    first = run.train_round(1, grid.get_node_ids())
    assert first.dropped == []
    nodes = (1, 2, 3)
    for node in nodes:
        message, reply, _ = seen[node][0]
        assert message.content["outputs"]["local-val"].numpy().shape[1] == cfg.n_qubits  # read-outs
        assert sorted({k.split(".")[0] for k in reply.content["arrays"]}) == ["conv2", "conv3", "conv4"]
        assert reply.content["he"]["layers"] == ["conv1", "fc"]
    accuracies = [seen[n][0][1].content["metrics"]["dp-accuracy"] for n in nodes]
    counts = [seen[n][0][1].content["metrics"]["num-examples"] for n in nodes]
    weights = tempered_softmax(accuracies, tau=cfg.softmax_tau, sample_counts=counts)  # the default weighting
    assert [first.weights[str(n)] for n in nodes] == pytest.approx(list(weights))
    assert 0.0 <= first.train["dp_accuracy_mean"] <= 1.0
    # the server holds ciphertexts only; a client's key opens the weighted mean of the clients' layers
    assert not any(k.startswith(("conv1.", "fc.")) for k in strategy.global_plain)
    packed = strategy.packed_length(strategy.encrypted_state_layers)
    mean = PackedDecryptor(load_client_context(tmp_path / "keys" / "client.ctx")).decrypt(
        strategy.encrypted_state, packed)
    own = [np.concatenate([v.ravel() for k, v in seen[n][0][2].items() if k.startswith(("conv1.", "fc."))])
           for n in nodes]
    assert mean == pytest.approx(sum(w * v for w, v in zip(weights, own)), abs=1e-3)
    plain_mean = sum(w * seen[n][0][2]["conv2.0.weight"] for w, n in zip(weights, nodes))
    assert strategy.global_plain["conv2.0.weight"] == pytest.approx(plain_mean, abs=1e-6)
    assert first.frozen_layers == ["conv1", "conv2", "conv3", "conv4", "fc"]  # fc, conv1: the evaluator's score

    head_before = {k: v.detach().clone() for k, v in run.head.head.state_dict().items()}
    second = run.train_round(2, grid.get_node_ids())
    assert second.dropped == [] and np.isfinite(second.validation["macro-auc"])
    for node in nodes:
        message, reply, own = seen[node][1]
        assert message.content["config"]["frozen-layers"] == ["conv1", "conv2", "conv3", "conv4", "fc"]
        assert len(reply.content["arrays"]) == 0 and "he" not in reply.content  # frozen layers leave the wire
        assert own["conv2.0.weight"] == pytest.approx(strategy.global_plain["conv2.0.weight"])  # not trained
        flat = np.concatenate([v.ravel() for k, v in own.items() if k.startswith(("conv1.", "fc."))])
        assert flat == pytest.approx(mean, abs=1e-3)  # the decrypted global, kept
    assert any(not torch.equal(head_before[k], v) for k, v in run.head.head.state_dict().items())  # head trains


def test_a_bad_weights_reply_is_dropped_naming_its_node():
    cfg = _cfg(**{"num-server-rounds": 1})

    def tamper(message: Message, reply: Message) -> Message:
        if message.metadata.message_type == "query.split_weights" and message.metadata.dst_node_id == 2:
            arrays = from_array_record(reply.content["arrays"])
            arrays["conv2.0.weight"] = np.full_like(arrays["conv2.0.weight"], np.nan)
            reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return reply

    grid = InProcessGrid(cfg, 3, tamper)
    result = _run(cfg, grid).train_round(1, grid.get_node_ids())
    assert result.dropped == ["node 2: parameter 'conv2.0.weight' is not a finite float array"]
    assert set(result.weights) == {"1", "3"} and sum(result.weights.values()) == pytest.approx(1.0)
    assert np.isfinite(result.validation["macro-auc"])


def test_per_client_heads_are_averaged_by_examples_and_match_the_shared_head_for_one_client():
    heads = {}
    for mode in ("shared", "per-client"):
        cfg = _cfg(**{"split-server-head": mode, "num-server-rounds": 1})
        grid = InProcessGrid(cfg, 1)
        run = _run(cfg, grid)
        run.train_round(1, grid.get_node_ids())
        heads[mode] = {k: v.detach().clone() for k, v in run.head.head.state_dict().items()}
    for name, value in heads["shared"].items():  # one client, one round: the copy is the shared head
        assert torch.allclose(heads["per-client"][name], value, atol=1e-6), name

    cfg = _cfg(**{"split-server-head": "per-client", "num-server-rounds": 1})
    grid = InProcessGrid(cfg, 3)
    run = _run(cfg, grid)
    merged = {}
    merge = run._merge_copies

    def spy(processed):
        merged["copies"] = {n: {k: v.detach().clone() for k, v in c.head.state_dict().items()}
                            for n, c in run.copies.items()}
        merged["processed"] = dict(processed)
        merge(processed)

    run._merge_copies = spy
    result = run.train_round(1, grid.get_node_ids())
    sizes = _local_train_sizes(cfg, 3)
    assert merged["processed"] == {1: sizes[0], 2: sizes[1], 3: sizes[2]} and run.copies == {}
    copies = merged["copies"]
    assert not torch.allclose(copies[1]["proj.weight"], copies[2]["proj.weight"])  # each trained on its client
    for name, value in run.head.head.state_dict().items():
        mean = sum(s / sum(sizes) * copies[n][name] for n, s in zip((1, 2, 3), sizes))
        assert torch.allclose(value, mean, atol=1e-6), name
    assert np.isfinite(result.validation["macro-auc"])


def test_the_chosen_round_is_rescored_with_its_own_head_and_client_pieces():
    """Re-scoring the chosen round reproduces its validation figures; the head keeps its weights."""
    cfg = _cfg(**{"split-variant": "u-shaped"})
    grid = InProcessGrid(cfg, 2)
    run = _run(cfg, grid)
    first = run.train_round(1, grid.get_node_ids())
    chosen = run.selector.best
    assert chosen.round == 1 and chosen.validation == first.validation
    second = run.train_round(2, grid.get_node_ids())
    run.selector.best = chosen  # as if round 2 had scored lower
    selection = run.evaluate_selected(second)
    assert selection["round"] == 1 and selection["metric"] == "macro-auc"
    for key in ("loss", "accuracy", "macro-auc", "num-examples"):
        assert selection["validation"][key] == pytest.approx(first.validation[key], abs=1e-6), key
    assert selection["test"]["num-examples"] == second.test["num-examples"] > 0
    for name, value in run.head.head.state_dict().items():
        assert torch.equal(value, chosen.state["head"][name]), name
