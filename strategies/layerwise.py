"""One Flower strategy (Message API) for FedAvg, FHE-FedQNN and AdeptHEQ-FL.

The three methods differ only in three choices, so they share this class:
- client weights: sample counts (FedAvg), uniform (FHE-FedQNN), or a tempered softmax of
  differentially private validation accuracies (AdeptHEQ-FL);
- encrypted layers: none, all, or the selected ones (default the final FC layer), summed
  homomorphically as ``sum_i w_i * Enc(theta_i)`` with a public-only CKKS context;
- EMA layer freezing: off, or on for classical layers (quantum layers never freeze).

The aggregator never holds a secret key. Everything that needs the plaintext of an
encrypted layer (evaluation, its change score for freezing) happens on the evaluator
client, which reports only metrics and the layer's RMS change.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.instructions import EvaluateInstructions, TrainInstructions, metrics_of_split
from common.model import layer_of, layer_vectors
from common.update_noise import DistributedGaussianUpdate
from common.wire import he_record, layer_order, serialized_size, to_array_record
from strategies.freezing import EMALayerFreezer
from strategies.model_selection import BestRoundSelector
from strategies.replies import (ReplyRejected, RoundFailed, TrainReply, check_update_dp_metrics, client_failure_reason,
                                describe_failures, parse_train_reply)
from strategies.weighting import tempered_softmax, weight_spread


@dataclass
class StrategyOptions:
    """The choices that make a method; see ``strategies.presets``."""

    name: str
    weighting: str  # "samples" | "uniform" | "dp-softmax"
    encrypted_layers: frozenset[str]
    freezing: bool
    min_clients: int = 2
    softmax_tau: float = 0.5
    weight_by_samples: bool = False
    freeze_threshold: float = 1e-3
    freeze_ema_alpha: float = 0.9
    num_rounds: int = 1
    timeout_s: float = 3600.0
    dp_epsilon: float = 1.0  # dp-softmax: epsilon of each client's accuracy release per round
    dp_score: str = "exact-match"  # dp-softmax: the released validation score (common.validation_scores)
    dp_loss_clip: float = 1.0
    update_dp: str = "none"  # DP of the sent layers: "example" (DP-SGD) or "client" (common.update_noise)
    update_dp_noise: float = 1.0
    update_dp_clip: float = 1.0


@dataclass
class RoundLog:
    """Everything measured in one round, written to metrics.json."""

    round: int
    train: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    test: dict | None = None
    weights: dict = field(default_factory=dict)
    weight_spread: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    frozen_layers: list = field(default_factory=list)
    bytes: dict = field(default_factory=lambda: {"train_down": 0, "train_up": 0, "eval_down": 0, "eval_up": 0})
    seconds: float = 0.0
    layer_scores: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # figures of the global model itself, e.g. a gate's fusion-alpha
    privacy_events: dict = field(default_factory=dict)  # the DP mechanisms each client ran (common.privacy_ledger)


class LayerwiseStrategy(Strategy):
    """Weighted, optionally encrypted, optionally freezing aggregation of named layers.

    ``layers`` lists the model's layer names in order; ``initial`` holds every parameter of
    the initial model (the server only ever sends the non-encrypted ones); ``aggregator``
    is a ``common.ckks.EncryptedWeightedSum`` factory taking no argument (called once the
    public context exists), required when layers are encrypted. With freezing on, an
    ``EMALayerFreezer`` is built from the options (``quantum_layers`` never freeze) unless
    ``freezer`` is given.
    """

    def __init__(self, options: StrategyOptions, layers: list[str], initial: "OrderedDict[str, np.ndarray]",
                 quantum_layers: frozenset[str], aggregator_factory: Callable[[], object] | None = None,
                 freezer=None, sim_key_dir: str = "",
                 on_round: Callable[[RoundLog], None] | None = None,
                 selector: BestRoundSelector | None = None) -> None:
        self.opt = options
        self.layers = list(layers)
        self.shapes = {name: tuple(arr.shape) for name, arr in initial.items()}
        self.global_plain: OrderedDict[str, np.ndarray] = OrderedDict(
            (k, v.copy()) for k, v in initial.items() if layer_of(k) not in options.encrypted_layers)
        self.encrypted_state: list[bytes] | None = None
        self.encrypted_state_layers: list[str] = []
        self.aggregator_factory = aggregator_factory
        self._aggregator = None
        if freezer is None and options.freezing:
            freezer = EMALayerFreezer(alpha=options.freeze_ema_alpha, threshold=options.freeze_threshold,
                                      never_freeze=quantum_layers)
            plain_layers = [layer for layer in self.layers if layer not in options.encrypted_layers]
            if plain_layers:  # reference for the server's own scores; encrypted layers are scored by a client
                freezer.observe(layer_vectors(initial, plain_layers))
        self.freezer = freezer
        self.frozen: set[str] = set()
        self.frozen_delivered: set[str] = set()
        self.sim_key_dir = sim_key_dir
        self.on_round = on_round
        self.selector = selector  # model selection by a validation metric (None: the last round's model)
        self.history: list[RoundLog] = []
        self.evaluator: int | None = None
        self._last_valid_nodes: list[int] = []
        self._train_messages: list[Message] = []
        self._current: RoundLog | None = None
        self._t0 = 0.0
        if options.encrypted_layers and aggregator_factory is None:
            raise ValueError("encrypted layers need an aggregator factory")
        unknown = set(options.encrypted_layers) - set(layers)
        if unknown:
            raise ValueError(f"he-layers names unknown layers {sorted(unknown)}; expected some of {self.layers}")

    # ---------------------------------------------------------------- helpers
    def _sent_layers(self) -> list[str]:
        """Layers whose current global value goes out this round (frozen ones one last time)."""
        return [layer for layer in self.layers if layer not in self.frozen_delivered]

    def _plain_names(self, layers: Iterable[str]) -> list[str]:
        wanted = set(layers) - set(self.opt.encrypted_layers)
        return [n for n in self.shapes if layer_of(n) in wanted]

    def encrypted_packing(self) -> list[str]:
        """Encrypted layers packed this round (model order), excluding frozen ones."""
        return layer_order(self.layers, set(self.opt.encrypted_layers) - self.frozen)

    def packed_length(self, layers: Iterable[str]) -> int:
        packed = set(layers)
        return sum(int(np.prod(s)) for n, s in self.shapes.items() if layer_of(n) in packed)

    def _aggregator_obj(self):
        if self._aggregator is None:
            self._aggregator = self.aggregator_factory()
        return self._aggregator

    def train_instructions(self, server_round: int, clients: int = 0) -> TrainInstructions:
        """What every client does this round: frozen and packed layers, the DP accuracy release and the DP of the
        update (client-level: the noise is split between the ``clients`` sent this message)."""
        release = self.opt.dp_epsilon if self.opt.weighting == "dp-softmax" else 0.0
        update_dp = {} if self.opt.update_dp == "none" else {
            "update_dp": self.opt.update_dp, "update_dp_noise": self.opt.update_dp_noise,
            "update_dp_clip": self.opt.update_dp_clip,
            "update_dp_shares": clients if self.opt.update_dp == "client" else 0}
        return TrainInstructions(server_round, tuple(sorted(self.frozen)), tuple(self.encrypted_packing()), release,
                                 self.sim_key_dir, self.opt.dp_score, self.opt.dp_loss_clip, **update_dp)

    def global_records(self) -> RecordDict:
        """The global layers that go out now: plaintext ``arrays`` and the ``he`` sums of the encrypted ones."""
        sent = self._sent_layers()
        arrays = OrderedDict((n, self.global_plain[n]) for n in self._plain_names(sent))
        content = RecordDict({"arrays": to_array_record(arrays)})
        if self.encrypted_state is not None and self.encrypted_state_layers:
            content["he"] = he_record(self.encrypted_state, self.packed_length(self.encrypted_state_layers),
                                      self.encrypted_state_layers)
        return content

    def _content(self, config: ConfigRecord) -> RecordDict:
        content = self.global_records()
        content["config"] = config
        return content

    def _nodes(self, grid: Grid) -> list[int]:
        deadline = time.time() + self.opt.timeout_s
        while len(nodes := sorted(grid.get_node_ids())) < self.opt.min_clients:
            if time.time() > deadline:
                raise RuntimeError(f"only {len(nodes)} nodes connected; min-clients is {self.opt.min_clients}")
            log(INFO, "Waiting for nodes: %d connected, min-clients %d", len(nodes), self.opt.min_clients)
            time.sleep(1.0)
        return nodes

    # ---------------------------------------------------------------- train
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._t0 = time.time()
        self._current = RoundLog(round=server_round)
        nodes = self._nodes(grid)
        if self.evaluator is None:
            self.evaluator = nodes[0]
        content = self._content(self.train_instructions(server_round, len(nodes)).to_config())  # the same for all
        self._current.bytes["train_down"] += serialized_size(content) * len(nodes)
        # the grid fills in the message ids when it sends them (see aggregate_train)
        self._train_messages = [Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
                                for node in nodes]
        return self._train_messages

    def _weights(self, replies: list[TrainReply]) -> np.ndarray:
        counts = np.array([r.num_examples for r in replies], dtype=np.float64)
        if self.opt.weighting == "samples":
            return counts / counts.sum()
        if self.opt.weighting == "uniform":
            return np.full(len(replies), 1.0 / len(replies))
        accs = [r.metrics["dp-accuracy"] for r in replies]
        return tempered_softmax(accs, tau=self.opt.softmax_tau,
                                sample_counts=[r.num_examples for r in replies] if self.opt.weight_by_samples else None)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current = self._current or RoundLog(round=server_round)
        metrics = self.aggregate_replies(server_round, list(replies), self._train_messages, current)
        return to_array_record(self.global_plain), metrics

    def aggregate_replies(self, server_round: int, replies: list[Message], sent: list[Message],
                          current: RoundLog) -> MetricRecord:
        """Check the replies to ``sent``, weight the valid ones and update the global layers.

        The weights, drops and training figures go into ``current``; ``RoundFailed`` when fewer than
        ``min-clients`` replies are usable. Split learning calls this for its round-end averaging.
        """
        # an error the SuperLink writes for a dead node carries the SuperLink's id, not the node's
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
        failures = [(sent_to.get(m.metadata.reply_to_message_id, m.metadata.src_node_id),
                     client_failure_reason(m.error.reason)) for m in replies if m.has_error()]
        if len(replies) - len(failures) < self.opt.min_clients:  # before anything else can fail in their stead
            raise RoundFailed(f"round {server_round}: {len(replies) - len(failures)} of {len(sent)} "
                              f"clients replied without an error, min-clients is {self.opt.min_clients}; "
                              f"{describe_failures(failures) or 'no replies arrived'}")
        expected_names = self._plain_names(set(self.layers) - self.frozen)
        expected_shapes = {n: self.shapes[n] for n in expected_names}
        packing = self.encrypted_packing()
        length = self.packed_length(packing)
        n_chunks, check_chunks = 0, None
        if packing:
            aggregator = self._aggregator_obj()
            n_chunks = math.ceil(length / aggregator.params.slot_count)
            check_chunks = lambda chunks: aggregator.validate(chunks, n_chunks, length)  # noqa: E731
        valid: list[TrainReply] = []
        dropped_replies: list[Message] = []  # they reached the server: what they released still counts
        for msg in replies:
            if not msg.has_error():
                current.bytes["train_up"] += serialized_size(msg.content)
            try:
                valid.append(parse_train_reply(msg, expected_shapes, self.opt.weighting == "dp-softmax",
                                               n_chunks, check_chunks,
                                               node=sent_to.get(msg.metadata.reply_to_message_id),
                                               update_dp=self.opt.update_dp))
            except ReplyRejected as err:
                log(WARNING, "Round %d: dropped reply: %s", server_round, err)
                current.dropped.append(str(err))
                if not msg.has_error():  # an error carries no release
                    dropped_replies.append(msg)
        if len(valid) < self.opt.min_clients:
            raise RoundFailed(f"round {server_round}: only {len(valid)} valid replies, min-clients is "
                              f"{self.opt.min_clients}; dropped: {'; '.join(current.dropped)}")
        self._last_valid_nodes = sorted(r.node_id for r in valid)
        weights = self._weights(valid)
        current.weights = {str(r.node_id): float(w) for r, w in zip(valid, weights)}
        current.weight_spread = weight_spread(weights)
        for name in expected_names:
            self.global_plain[name] = np.sum(
                [w * r.arrays[name].astype(np.float64) for r, w in zip(valid, weights)], axis=0
            ).astype(valid[0].arrays[name].dtype)
        if n_chunks:
            self.encrypted_state = self._aggregator_obj().aggregate([r.chunks for r in valid], weights.tolist(),
                                                                    expected_length=length)
        else:
            self.encrypted_state = None
        self.encrypted_state_layers = packing
        # the last value of a newly frozen layer went out this round; stop sending it from now on
        self.frozen_delivered |= self.frozen
        total = sum(r.num_examples for r in valid)
        with_loss = [r for r in valid if "train-loss" in r.metrics]  # none under update DP: the loss is not private
        loss = (sum(r.metrics["train-loss"] * r.num_examples for r in with_loss)
                / sum(r.num_examples for r in with_loss) if with_loss else math.nan)
        current.train = {"clients": len(valid), "num_examples": total, "loss": float(loss),
                         "client_seconds_max": max(r.metrics.get("train-seconds", 0.0) for r in valid)}
        if self.opt.weighting == "dp-softmax":
            current.train["dp_accuracy_mean"] = float(np.mean([r.metrics["dp-accuracy"] for r in valid]))
        current.privacy_events = self.privacy_events(valid, weights, len(sent), dropped_replies)
        return MetricRecord({"num-examples": total, **({"train-loss": float(loss)} if with_loss else {})})

    def privacy_events(self, valid: list[TrainReply], weights: np.ndarray, shares: int,
                       dropped: list[Message] = ()) -> dict:
        """The DP mechanisms each client ran this round, for ``common.privacy_ledger``: the valid replies, and the
        dropped ones (their release and their DP-SGD steps reached the server all the same; a dropped client's
        update is not in the aggregate, so no client-level round). Client-level DP: the round's effective noise
        multiplier from the actual weights (``DistributedGaussianUpdate``)."""
        release = self.opt.dp_epsilon if self.opt.weighting == "dp-softmax" else 0.0
        events: dict = {"clients": {}}
        if self.opt.update_dp == "client":
            events["client_level_noise_multiplier"] = DistributedGaussianUpdate.effective_noise_multiplier(
                weights, self.opt.update_dp_noise, shares)
        reported = [(str(r.node_id), r.metrics, True) for r in valid]
        reported += [(str(m.metadata.src_node_id), dict(m.content.get("metrics") or {}), False) for m in dropped]
        for node, metrics, aggregated in reported:
            client = {"accuracy_epsilon": release if (aggregated or "dp-accuracy" in metrics) else 0.0}
            if self.opt.update_dp == "example":
                try:
                    if not aggregated:  # a valid reply passed this check already (its metrics are floats since)
                        check_update_dp_metrics(metrics, "example", node)
                    client["dp_sgd"] = [float(metrics["update-dp-sample-rate"]), self.opt.update_dp_noise,
                                        int(metrics["update-dp-steps"])]
                except ReplyRejected:
                    client["unaccounted"] = "DP-SGD figures missing or out of range"
                if "update-dp-epsilon-opacus" in metrics:  # the client's own RDP figure, a cross-check
                    client["opacus_epsilon"] = metrics["update-dp-epsilon-opacus"]
            if not aggregated:
                client["dropped"] = True
            events["clients"][node] = client
        return events

    # ---------------------------------------------------------------- evaluate
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        splits = ("val", "test") if server_round == self.opt.num_rounds else ("val",)
        if self._last_valid_nodes and self.evaluator not in self._last_valid_nodes:
            self.evaluator = self._last_valid_nodes[0]  # the evaluator is gone: ask a node that just replied
        content = self._content(EvaluateInstructions(server_round, splits, self.sim_key_dir).to_config())
        if self._current is not None:
            self._current.bytes["eval_down"] += serialized_size(content)
        return [Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=self.evaluator)]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        current = self._current or RoundLog(round=server_round)
        replies = list(replies)
        reply = replies[0] if replies else None
        if reply is None or reply.has_error():
            reason = reply.error.reason if reply is not None else "no reply"
            log(WARNING, "Round %d: evaluation by node %s failed: %s", server_round, self.evaluator, reason)
            current.dropped.append(f"evaluator {self.evaluator}: {reason}")
            self.evaluator = None  # pick another node next round
            metrics = {}
        else:
            current.bytes["eval_up"] += serialized_size(reply.content)
            metrics = dict(reply.content.get("metrics", MetricRecord()))
        current.validation = metrics_of_split(metrics, "val")
        current.model = metrics_of_split(metrics, "model")
        if test := metrics_of_split(metrics, "test"):
            current.test = test
        if self.selector is not None and self.selector.observe(server_round, current.validation, self.snapshot):
            log(INFO, "Round %d: best validation %s so far (%.4f)", server_round, self.selector.metric,
                self.selector.best.score)
        if self.opt.freezing and self.freezer is not None:
            self.update_freezing(current, metrics)
        current.frozen_layers = sorted(self.frozen)
        current.seconds = time.time() - self._t0
        self.history.append(current)
        if self.on_round is not None:
            self.on_round(current)
        self._current = None
        return MetricRecord({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}) or None

    # ---------------------------------------------------------------- model selection
    def snapshot(self) -> dict:
        """The global model as held now: every plaintext layer (frozen ones too) and the ciphertexts."""
        return {"plain": OrderedDict((k, v.copy()) for k, v in self.global_plain.items()),
                "encrypted": list(self.encrypted_state) if self.encrypted_state is not None else None,
                "encrypted_layers": list(self.encrypted_state_layers)}

    def snapshot_records(self, snapshot: dict) -> RecordDict:
        """A snapshot as message records: all its plaintext layers and its ciphertexts (``he``)."""
        content = RecordDict({"arrays": to_array_record(snapshot["plain"])})
        if snapshot["encrypted"]:
            content["he"] = he_record(snapshot["encrypted"], self.packed_length(snapshot["encrypted_layers"]),
                                      snapshot["encrypted_layers"])
        return content

    def selected_model(self) -> dict:
        """The chosen round's snapshot, or the current model when nothing was selected."""
        best = self.selector.best if self.selector is not None else None
        return best.state if best is not None else self.snapshot()

    def evaluate_selected(self, grid: Grid, timeout: float) -> dict | None:
        """The chosen round, its validation figures and its test figures, scored by a client.

        The last round's test figures are reused when it is the chosen round; otherwise the evaluator
        receives the chosen round's plaintext layers and ciphertexts (which it decrypts) and scores
        the validation and test splits on them. None without a selector or a scored round.
        """
        best = self.selector.best if self.selector is not None else None
        if best is None or not self.history:
            return None
        selection = {"metric": self.selector.metric, "round": best.round, "validation": best.validation}
        last = self.history[-1]
        if best.round == last.round and last.test is not None:
            return {**selection, "test": last.test}
        content = self.snapshot_records(best.state)
        content["config"] = EvaluateInstructions(last.round, ("val", "test"), self.sim_key_dir).to_config()
        evaluator = self.evaluator if self.evaluator is not None else (self._last_valid_nodes or [None])[0]
        replies = list(grid.send_and_receive([Message(content=content, message_type=MessageType.EVALUATE,
                                                      dst_node_id=evaluator)], timeout=timeout))
        if not replies or replies[0].has_error():
            reason = replies[0].error.reason if replies else "no reply"
            log(WARNING, "Scoring the chosen round %d failed on node %s: %s", best.round, evaluator, reason)
            return {**selection, "test": None, "error": client_failure_reason(reason)}
        metrics = dict(replies[0].content.get("metrics", MetricRecord()))
        return {**selection,
                "validation": metrics_of_split(metrics, "val"), "test": metrics_of_split(metrics, "test")}

    def update_freezing(self, current: RoundLog, metrics: dict) -> None:
        """Score the global plain layers and the evaluator's ``delta-rms-<layer>`` metrics; freeze the stale."""
        plain = layer_vectors(self.global_plain, [
            layer for layer in self.layers if layer not in self.frozen and layer not in self.opt.encrypted_layers])
        # encrypted layers: the evaluator decrypted them and reported their RMS change
        scores = {k.removeprefix("delta-rms-"): float(v) for k, v in metrics.items() if k.startswith("delta-rms-")}
        newly = (self.freezer.observe(plain) if plain else set()) | self.freezer.observe_scores(scores)
        self.frozen |= set(newly)
        current.layer_scores = {"ema": dict(self.freezer.ema), "score": dict(self.freezer.scores)}
        if newly:
            log(INFO, "Round %d: froze layers %s", current.round, sorted(newly))

    def summary(self) -> None:
        log(INFO, "\t├── Strategy: %s (weighting=%s, encrypted=%s, freezing=%s)", self.opt.name,
            self.opt.weighting, sorted(self.opt.encrypted_layers), self.opt.freezing)
