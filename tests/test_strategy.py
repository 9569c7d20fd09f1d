"""LayerwiseStrategy against hand-made client replies: weights, encrypted sums, freezing, bad replies.

The clients here are simulated in the test (parameters we choose, ciphertexts we encrypt with a
secret context the strategy never sees), so every aggregate can be checked against numpy.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.client_app import ClientAppException
from flwr.supercore.task_identity import TaskIdentity

from common.ckks import (CKKSParams, EncryptedWeightedSum, PackedDecryptor, PackedEncryptor, load_public_context,
                         make_secret_context, public_context_bytes)
from common.config import RunConfig
from common.model import QUANTUM_LAYERS, build_model, flatten_layers, state_by_layer
from common.wire import from_array_record, he_record, read_he_record, serialized_size, to_array_record
from strategies.freezing import EMALayerFreezer
from strategies.layerwise import LayerwiseStrategy
from strategies.presets import options_for
from strategies.replies import RoundFailed, client_failure_reason
from strategies.weighting import tempered_softmax

NODES = [11, 22, 33, 44]


class FakeGrid:
    def get_node_ids(self):
        return list(NODES)


@pytest.fixture(scope="module", autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


@pytest.fixture(scope="module")
def contexts():
    secret = make_secret_context(CKKSParams())
    return secret, load_public_context(public_context_bytes(secret))


def make_strategy(strategy: str, contexts, freezer=None, min_clients=2, rounds=5, he_layers="fc"):
    cfg = RunConfig(strategy=strategy, min_clients=min_clients, num_server_rounds=rounds, he_layers=he_layers)
    model = build_model(cfg)
    layers = model.layer_names()
    options = options_for(cfg, layers)
    initial = state_by_layer(model)
    public = contexts[1]
    return LayerwiseStrategy(options, layers, initial, QUANTUM_LAYERS,
                             aggregator_factory=lambda: EncryptedWeightedSum(public), freezer=freezer), initial


def client_reply(strategy: LayerwiseStrategy, request: Message, params: "OrderedDict[str, np.ndarray]",
                 num_examples: int, secret=None, dp_accuracy: float | None = None) -> Message:
    """What an honest client sends: unfrozen plain layers, packed ciphertexts of the encrypted ones."""
    frozen = set(strategy.frozen)
    enc = set(strategy.encrypted_packing())
    plain = OrderedDict((n, v) for n, v in params.items()
                        if n.split(".")[0] not in frozen and n.split(".")[0] not in strategy.opt.encrypted_layers)
    metrics = {"num-examples": num_examples, "train-loss": 0.5}
    if dp_accuracy is not None:
        metrics["dp-accuracy"] = dp_accuracy
    content = RecordDict({"arrays": to_array_record(plain), "metrics": MetricRecord(metrics)})
    if enc:
        packed = OrderedDict((n, v) for n, v in params.items() if n.split(".")[0] in enc)
        flat = flatten_layers(packed)
        content["he"] = he_record(PackedEncryptor(secret).encrypt(flat), flat.size, strategy.encrypted_packing())
    return Message(content, reply_to=request)


def perturbed(initial, seed: float) -> "OrderedDict[str, np.ndarray]":
    rng = np.random.default_rng(int(seed * 1000))
    return OrderedDict((n, (v + rng.normal(0, 0.01, v.shape)).astype(v.dtype)) for n, v in initial.items())


def test_fedavg_is_the_sample_weighted_mean(contexts):
    strategy, initial = make_strategy("fedavg", contexts)
    requests = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    assert [m.metadata.dst_node_id for m in requests] == NODES
    clients = [perturbed(initial, i + 1) for i in range(4)]
    counts = [10, 30, 20, 40]
    replies = [client_reply(strategy, m, p, n) for m, p, n in zip(requests, clients, counts)]
    strategy.aggregate_train(1, replies)
    w = np.array(counts) / sum(counts)
    for name in initial:
        expected = sum(wi * c[name].astype(np.float64) for wi, c in zip(w, clients))
        np.testing.assert_allclose(strategy.global_plain[name], expected, rtol=1e-6, atol=1e-7)
    assert strategy._current.weights == pytest.approx({str(n): wi for n, wi in zip(NODES, w)})


def test_adeptheq_softmax_weights_and_encrypted_sum_equal_plaintext(contexts):
    secret = contexts[0]
    strategy, initial = make_strategy("adeptheq", contexts)
    assert strategy.opt.encrypted_layers == {"fc"}
    requests = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    assert all("fc.weight" not in m.content["arrays"] for m in requests)  # the server has no fc in plaintext
    clients = [perturbed(initial, i + 1) for i in range(4)]
    accs = [0.9, 0.8, 0.5, 0.7]
    replies = [client_reply(strategy, m, p, 25, secret, a) for m, p, a in zip(requests, clients, accs)]
    strategy.aggregate_train(1, replies)
    w = tempered_softmax(accs, tau=0.5)
    assert list(strategy._current.weights.values()) == pytest.approx(list(w))
    # clients decrypt what the server sends next round
    nxt = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), FakeGrid()))[0]
    chunks, length, layers = read_he_record(nxt.content["he"])
    assert layers == ["fc"] and length == 4 * 5 + 5
    decrypted = PackedDecryptor(secret).decrypt(chunks, length)
    expected = sum(wi * flatten_layers(OrderedDict((n, c[n]) for n in ("fc.weight", "fc.bias")))
                   for wi, c in zip(w, clients))
    assert np.max(np.abs(decrypted - expected)) < 1e-4
    # plaintext layers follow the same weights
    np.testing.assert_allclose(strategy.global_plain["conv1.0.weight"],
                               sum(wi * c["conv1.0.weight"].astype(np.float64) for wi, c in zip(w, clients)),
                               rtol=1e-5, atol=1e-6)


def test_fhe_fedqnn_encrypts_everything_with_uniform_weights(contexts):
    secret = contexts[0]
    strategy, initial = make_strategy("fhe-fedqnn", contexts)
    requests = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    assert len(requests[0].content["arrays"]) == 0
    clients = [perturbed(initial, i + 1) for i in range(4)]
    replies = [client_reply(strategy, m, p, 10 * (i + 1), secret) for i, (m, p) in enumerate(zip(requests, clients))]
    strategy.aggregate_train(1, replies)
    assert list(strategy._current.weights.values()) == pytest.approx([0.25] * 4)
    chunks = strategy.encrypted_state
    total = sum(v.size for v in initial.values())
    assert len(chunks) == -(-total // 4096)  # packed: ceil(params / slots) ciphertexts, not one per weight
    decrypted = PackedDecryptor(secret).decrypt(chunks, total)
    expected = np.mean([flatten_layers(c) for c in clients], axis=0)
    assert np.max(np.abs(decrypted - expected)) < 1e-4


def _bad(kind: str, strategy, request, params, secret):
    good = client_reply(strategy, request, params, 20, secret, 0.8)
    content = good.content
    if kind == "error":
        return Message(Error(code=1, reason="client crashed"), reply_to=request)
    if kind == "no-metrics":
        del content["metrics"]
    elif kind == "garbage-ciphertext":
        chunks, length, layers = read_he_record(content["he"])
        content["he"] = he_record([b"\x00garbage" * 50], length, layers)
    elif kind == "wrong-chunk-count":
        chunks, length, layers = read_he_record(content["he"])
        content["he"] = he_record(chunks * 2, length, layers)
    elif kind == "wrong-shape":
        arrays = from_array_record(content["arrays"])
        arrays["proj.weight"] = arrays["proj.weight"][:, :3]
        content["arrays"] = to_array_record(arrays)
    elif kind == "non-finite":
        arrays = from_array_record(content["arrays"])
        arrays["conv2.0.bias"] = np.full_like(arrays["conv2.0.bias"], np.nan)
        content["arrays"] = to_array_record(arrays)
    elif kind == "accuracy-out-of-range":
        content["metrics"] = MetricRecord({"num-examples": 20, "train-loss": 0.5, "dp-accuracy": 1.5})
    return Message(content, reply_to=request)


@pytest.mark.parametrize("kind,reason", [
    ("error", "replied with an error: client crashed"),
    ("no-metrics", "no 'metrics' MetricRecord"),
    ("garbage-ciphertext", "ciphertexts rejected"),
    ("wrong-chunk-count", "2 ciphertext chunks, expected 1"),
    ("wrong-shape", "'proj.weight' has shape (16, 3)"),
    ("non-finite", "'conv2.0.bias' is not a finite float array"),
    ("accuracy-out-of-range", "'dp-accuracy' is 1.5"),
])
def test_bad_reply_is_dropped_with_a_reason_naming_the_node(contexts, kind, reason):
    secret = contexts[0]
    strategy, initial = make_strategy("adeptheq", contexts)
    requests = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    clients = [perturbed(initial, i + 1) for i in range(4)]
    replies = [client_reply(strategy, m, p, 20, secret, 0.8) for m, p in zip(requests[:3], clients[:3])]
    replies.append(_bad(kind, strategy, requests[3], clients[3], secret))
    strategy.aggregate_train(1, replies)
    assert len(strategy._current.dropped) == 1
    assert f"node {NODES[3]}" in strategy._current.dropped[0] and reason in strategy._current.dropped[0]
    assert set(strategy._current.weights) == {str(n) for n in NODES[:3]}
    # the three good clients were aggregated: equal accuracies -> equal weights
    fc = PackedDecryptor(secret).decrypt(strategy.encrypted_state, 25)
    expected = np.mean([flatten_layers(OrderedDict((n, c[n]) for n in ("fc.weight", "fc.bias")))
                        for c in clients[:3]], axis=0)
    assert np.max(np.abs(fc - expected)) < 1e-4


def test_round_fails_clearly_below_min_clients(contexts):
    secret = contexts[0]
    strategy, initial = make_strategy("adeptheq", contexts, min_clients=3)
    requests = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    replies = [client_reply(strategy, requests[0], perturbed(initial, 1), 20, secret, 0.8),
               Message(Error(code=1, reason="timeout"), reply_to=requests[1])]
    with pytest.raises(RoundFailed, match="round 1: 1 of 4 clients replied without an error, min-clients is 3; "
                                          "node 22 failed: timeout$"):
        strategy.aggregate_train(1, replies)


def test_round_where_every_client_failed_names_nodes_and_cause_before_touching_keys(contexts):
    """The cause the clients reported, not a later consequence such as a key file nobody wrote."""
    def no_key_yet():
        raise FileNotFoundError("key file .../keys/server.ctx does not exist")

    cfg = RunConfig(strategy="adeptheq")
    model = build_model(cfg)
    strategy = LayerwiseStrategy(options_for(cfg, model.layer_names()), model.layer_names(), state_by_layer(model),
                                 QUANTUM_LAYERS, aggregator_factory=no_key_yet)
    requests = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    cause = "/data/records100/00000/00006_lr.dat is truncated: 1000 bytes, expected 24000"
    simulated = ClientAppException(cause)  # what Flower's Ray actor raises around our error
    reason = str(type(simulated)) + ":<'ray::ClientAppActor.run() (pid=1)\n  File x\n" + str(simulated) + "'>"
    replies = [Message(Error(code=1, reason=reason), reply_to=r) for r in requests[:3]]
    replies.append(Message(Error(code=1, reason="<class 'common.config.ConfigError'>:<'node config: bad\nsecond'>"),
                           reply_to=requests[3]))
    with pytest.raises(RoundFailed) as info:
        strategy.aggregate_train(1, replies)
    assert str(info.value) == (f"round 1: 0 of 4 clients replied without an error, min-clients is 2; "
                               f"nodes 11, 22, 33 failed: {cause}; node 44 failed: ConfigError: node config: bad; second")


@pytest.mark.parametrize("reason,cause", [
    ("<class 'ValueError'>:<'cannot reshape'>", "ValueError: cannot reshape"),
    ("<class 'data_prep.ptbxl.PTBXLFormatError'>:<'a.dat is truncated'>", "PTBXLFormatError: a.dat is truncated"),
    ("Node Unavailable", "Node Unavailable"),
    ("  ", "no reason given"),
])
def test_client_failure_reason_reads_flower_error_formats(reason, cause):
    assert client_failure_reason(reason) == cause


def _evaluate_reply(strategy, request, metrics):
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=request)


def test_frozen_layer_is_left_off_the_wire_and_quantum_never_freezes(contexts):
    """conv1 and quantum stop changing: conv1 freezes and disappears from both directions."""
    secret = contexts[0]
    freezer = EMALayerFreezer(alpha=0.9, threshold=1e-3, never_freeze=QUANTUM_LAYERS)
    strategy, initial = make_strategy("adeptheq", contexts, freezer=freezer, rounds=10)
    strategy.opt.freezing = True
    layers = strategy.layers
    freezer.observe({l: np.concatenate([v.ravel() for n, v in initial.items() if n.split(".")[0] == l])
                     for l in layers if l != "fc"})
    current = OrderedDict((n, v.copy()) for n, v in initial.items())
    down, up = [], []
    for rnd in range(1, 6):
        requests = list(strategy.configure_train(rnd, ArrayRecord(), ConfigRecord(), FakeGrid()))
        down.append(serialized_size(requests[0].content))
        # every client moves all layers by 0.01 except conv1 and quantum (no change at all)
        current = OrderedDict((n, v if n.split(".")[0] in ("conv1", "quantum") else v + 0.01)
                              for n, v in current.items())
        replies = [client_reply(strategy, m, current, 20, secret, 0.8) for m in requests]
        up.append(serialized_size(replies[0].content))
        strategy.aggregate_train(rnd, replies)
        ev = list(strategy.configure_evaluate(rnd, ArrayRecord(), ConfigRecord(), FakeGrid()))[0]
        strategy.aggregate_evaluate(rnd, [_evaluate_reply(strategy, ev, {"val-accuracy": 0.5,
                                                                          "delta-rms-fc": 0.01})])
    assert "conv1" in strategy.frozen and "quantum" not in strategy.frozen and "fc" not in strategy.frozen
    assert strategy.history[0].frozen_layers == ["conv1"]  # first observed change is 0 < 1e-3
    conv1_bytes = sum(v.nbytes for n, v in initial.items() if n.startswith("conv1."))
    # round 2: clients no longer upload conv1; round 3 on: the server no longer sends it
    assert up[0] - up[1] >= conv1_bytes
    assert down[1] - down[2] >= conv1_bytes
    assert all("conv1.0.weight" not in m.content["arrays"]
               for m in strategy.configure_train(6, ArrayRecord(), ConfigRecord(), FakeGrid()))
    cfg = list(strategy.configure_train(7, ArrayRecord(), ConfigRecord(), FakeGrid()))[0].content["config"]
    assert cfg["frozen-layers"] == ["conv1"]


def test_all_layers_encrypted_freeze_from_client_reported_scores(contexts):
    """With he-layers=all the server sees no plaintext: freezing runs on the evaluator's RMS changes."""
    secret = contexts[0]
    freezer = EMALayerFreezer(alpha=0.9, threshold=1e-3, never_freeze=QUANTUM_LAYERS)
    strategy, initial = make_strategy("adeptheq", contexts, freezer=freezer, he_layers="all")
    assert strategy.opt.encrypted_layers == set(strategy.layers) and strategy.global_plain == {}
    requests = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    replies = [client_reply(strategy, m, perturbed(initial, i + 1), 20, secret, 0.8) for i, m in enumerate(requests)]
    strategy.aggregate_train(1, replies)
    ev = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), FakeGrid()))[0]
    scores = {f"delta-rms-{layer}": (0.0 if layer in ("conv1", "quantum") else 0.05) for layer in strategy.layers}
    strategy.aggregate_evaluate(1, [_evaluate_reply(strategy, ev, {"val-accuracy": 0.5, **scores})])
    assert strategy.frozen == {"conv1"}
    assert "conv1" not in strategy.encrypted_packing() and "quantum" in strategy.encrypted_packing()


def test_client_level_dp_orders_shares_and_records_the_effective_multiplier_without_a_dropped_reply(contexts):
    cfg = RunConfig(strategy="fedavg", update_dp="client", update_dp_noise=2.0, update_dp_clip=0.5)
    model = build_model(cfg)
    strategy = LayerwiseStrategy(options_for(cfg, model.layer_names()), model.layer_names(), state_by_layer(model),
                                 QUANTUM_LAYERS)
    initial = state_by_layer(model)
    requests = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    orders = requests[0].content["config"]
    assert (orders["update-dp"], orders["update-dp-noise"], orders["update-dp-clip"], orders["update-dp-shares"]) \
        == ("client", 2.0, 0.5, 4)
    counts = [10, 30, 20, 40]
    clients = [perturbed(initial, i + 1) for i in range(4)]
    clients[3]["fc.bias"][0] = np.nan  # the fourth reply is dropped: its share of the noise is missing
    replies = [client_reply(strategy, r, p, n) for r, p, n in zip(requests, clients, counts)]
    strategy.aggregate_train(1, replies)
    assert len(strategy._current.dropped) == 1 and "not a finite float array" in strategy._current.dropped[0]
    w = np.array(counts[:3]) / sum(counts[:3])
    events = strategy._current.privacy_events
    # noise std sigma C sqrt(sum w^2 / n) with n = 4 shares sent, over the sensitivity C max w
    assert events["client_level_noise_multiplier"] == pytest.approx(2.0 * np.sqrt(np.sum(w ** 2) / 4) / w.max())
    assert [c.get("dropped", False) for c in events["clients"].values()] == [False, False, False, True]
