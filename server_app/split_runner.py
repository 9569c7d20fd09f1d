"""Split learning on the Grid (``mode = "split"``): many clients, one shared server head (SplitFed).

A round, for every node at once (clients run in parallel within a round):
1. ``train.split_step`` (with last round's averaged client weights): each client replies with the
   activations of its next micro-batches (plain: and their labels), or that it is done with its
   ``local-epochs`` passes;
2. the head steps on each micro-batch as the replies arrive (one shared head, updated in reply
   order), giving ``dL/da``; U-shaped, it first sends its read-outs (``query.split_readouts``) and
   back-propagates the gradients the clients return;
3. the next ``train.split_step`` carries ``dL/da``: the client steps and replies with its next
   activations, until every client is done.
At round end every client sends its pieces (``query.split_weights``) as a federated train reply and
one ``LayerwiseStrategy`` per data set (``split-datasets``: U-shaped clients of different data sets
share only the head) averages them as the federated mode does: weighted by sample counts, uniformly,
or by a tempered softmax of DP validation accuracies (the client computes its accuracy from the
head's outputs for its validation split, which the server sends with that query), the encrypted
layers summed as ciphertexts, stale classical layers frozen (no longer trained or sent). One
evaluator per data set scores the validation split (and, in the last round, the test split): it
sends activations, the head returns its outputs, the client computes metrics and, for freezing,
reports the change of each layer it decrypted.

A reply that is an error, or whose arrays have the wrong shape or are not finite, drops that node
for the rest of the round with a reason naming it; the round goes on with the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from common.config import RunConfig
from common.gpu_energy import GpuEnergyMeter, nvml_status
from common.instructions import (ACTIVATIONS, DATASET, DONE, GRADIENTS, LABELS, OUTPUTS, READOUT_GRADIENTS, READOUTS,
                                 LOCAL_VAL, SPLIT_ACTIVATIONS, SPLIT_EVALUATE, SPLIT_READOUTS, SPLIT_STEP,
                                 SPLIT_WEIGHTS, SplitInstructions, TrainInstructions, metrics_of_split)
from common.model import build_model, state_by_layer
from common.split_model import client_layers, split_model
from common.wire import from_array_record, serialized_size, to_array_record
from data_prep.registry import DATASETS, dataset_spec
from server_app.split_head import SplitHeadTrainer, SplitInputError
from strategies.layerwise import LayerwiseStrategy, RoundLog, StrategyOptions
from strategies.model_selection import BestRoundSelector
from strategies.replies import RoundFailed


def _arrays(content: RecordDict, key: str, node: int) -> list[np.ndarray]:
    record = content.get(key)
    arrays = from_array_record(record) if record is not None else {}
    if sorted(arrays) != [str(i) for i in range(len(arrays))] or not arrays:
        raise SplitInputError(f"node {node}: record '{key}' holds {sorted(arrays)}; expected arrays 0, 1, ...")
    return [arrays[str(i)] for i in range(len(arrays))]


class SplitRun:
    """The head, the clients' averaged weights, and the round loop."""

    def __init__(self, cfg: RunConfig, grid: Grid, options: StrategyOptions,
                 aggregator_factory: Callable[[], object] | None = None, sim_key_dir: str = "") -> None:
        """``options``: the run's strategy (``strategies.presets.options_for``); each data set's clients are
        averaged by a copy restricted to the layers a client holds."""
        self.cfg, self.grid = cfg, grid
        self.options, self.aggregator_factory, self.sim_key_dir = options, aggregator_factory, sim_key_dir
        spec = dataset_spec(cfg.dataset)
        model = build_model(cfg)
        parts = split_model(model, cfg.split_cut, cfg.split_variant)
        with torch.no_grad():
            shape = tuple(parts.extractor(torch.zeros(1, spec.num_channels,
                                                      spec.window_samples(cfg.sampling_rate))).shape[1:])
        self.head = SplitHeadTrainer(parts.head, shape, spec.task, optimiser=cfg.optimizer,
                                     learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.output_width = spec.num_classes if cfg.split_variant == "plain" else cfg.n_qubits
        self.meter, self.energy_note = None, "the head runs on the CPU; NVML measures GPUs only"
        if self.head.device == "cuda":
            available, self.energy_note = nvml_status()
            self.meter = GpuEnergyMeter() if available else None
        self.selector = BestRoundSelector(cfg.selection_metric)  # by the run's own data set's validation
        self.copies: dict[int, SplitHeadTrainer] = {}  # split-server-head 'per-client': this round's copies
        self.strategies: dict[str, LayerwiseStrategy] = {}  # data set -> the averaging of its clients' pieces
        self.node_dataset: dict[int, str] = {}  # as each node reported in its split replies
        log(logging.INFO, "Split learning: %s variant, cut after %s, activations of shape %s per example; "
            "server head on %s; client layers %s averaged by %s (weights %s, encrypted %s, freezing %s)",
            cfg.split_variant, cfg.split_cut, shape, self.head.device, self.strategy(cfg.dataset).layers,
            options.name, options.weighting, sorted(self.strategy(cfg.dataset).opt.encrypted_layers),
            options.freezing)

    def strategy(self, dataset: str) -> LayerwiseStrategy:
        """The averaging of ``dataset``'s clients: the run's strategy over the layers a client holds."""
        if dataset not in self.strategies:
            model = build_model(self.cfg.for_dataset(dataset))
            layers = client_layers(model, self.cfg.split_cut, self.cfg.split_variant)
            # the head stays on the server in the clear; only client layers are averaged, so only they are encrypted
            options = replace(self.options, encrypted_layers=self.options.encrypted_layers & set(layers),
                              min_clients=1)  # a data set of a mixed run may have one client
            self.strategies[dataset] = LayerwiseStrategy(
                options, layers, state_by_layer(model, set(layers)), frozenset(),
                aggregator_factory=self.aggregator_factory if options.encrypted_layers else None,
                sim_key_dir=self.sim_key_dir)
        return self.strategies[dataset]

    def _head(self, node: int) -> SplitHeadTrainer:
        """The head that serves ``node``: the shared one, or its own copy of it for this round."""
        if self.cfg.split_server_head == "shared":
            return self.head
        if node not in self.copies:
            self.copies[node] = self.head.copy()
        return self.copies[node]

    def _merge_copies(self, processed: dict[int, int]) -> None:
        """Per-client heads: the shared head becomes their mean, weighted by the examples each trained on."""
        kept = [n for n in sorted(self.copies) if processed.get(n, 0) > 0]
        if kept:
            self.head.load_average([self.copies[n] for n in kept], [processed[n] for n in kept])
        self.copies = {}

    def _orders(self, server_round: int, node: int, splits: tuple[str, ...] = ("val",)) -> ConfigRecord:
        """The split orders and the node's data set's train orders (frozen and packed layers, DP release)."""
        config = SplitInstructions(server_round, self.cfg.split_variant, self.cfg.split_cut,
                                   self.cfg.split_micro_batches, splits).to_config()
        dataset = self.node_dataset.get(node)
        orders = (self.strategy(dataset).train_instructions(server_round) if dataset is not None
                  else TrainInstructions(server_round, sim_key_dir=self.sim_key_dir))  # round 1: nothing frozen yet
        config.update(orders.to_config())
        return config

    def _head_work_started(self) -> float:
        if self.meter is not None:
            torch.cuda.synchronize()
            self.meter.start()
        return time.perf_counter()

    def _head_work_done(self, started: float, log_: RoundLog, batches: int) -> None:
        """Adds the head's seconds (and, on a GPU with NVML, its energy) of ``batches`` micro-batches."""
        if self.head.device == "cuda":
            torch.cuda.synchronize()
        split = log_.train["split"]
        split["head_seconds"] += time.perf_counter() - started
        split["head_batches"] = split.get("head_batches", 0) + batches
        if self.meter is not None:
            split["head_millijoules"] = split.get("head_millijoules", 0.0) + self.meter.stop().millijoules

    def _with_weights(self, content: RecordDict, node: int) -> RecordDict:
        """The global pieces of the node's data set go out with a round's first message (none before round 1)."""
        dataset = self.node_dataset.get(node)
        if dataset is not None:
            for key, record in self.strategy(dataset).global_records().items():
                content[key] = record
        return content

    def _learn_dataset(self, reply: Message, node: int) -> None:
        """The data set a node's reply names (the run's when none): its pieces are averaged with that set's."""
        config = reply.content.get("config")
        dataset = config.get(DATASET, self.cfg.dataset) if isinstance(config, ConfigRecord) else self.cfg.dataset
        if dataset not in DATASETS:
            raise SplitInputError(f"node {node}: data set {dataset!r}; expected one of {', '.join(DATASETS)}")
        self.node_dataset[node] = dataset

    def _exchange(self, messages: list[Message], log_: RoundLog, up: str, down: str) -> Iterable[Message]:
        log_.bytes[down] += sum(serialized_size(m.content) for m in messages)
        started = time.time()
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout))
        split = log_.train.setdefault("split", {"round_trips": 0, "wait_seconds": 0.0, "head_seconds": 0.0,
                                                "activation_bytes": 0, "gradient_bytes": 0})
        split["round_trips"] += 1
        split["wait_seconds"] += time.time() - started
        log_.bytes[up] += sum(serialized_size(r.content) for r in replies if not r.has_error())
        return replies

    def _drop(self, log_: RoundLog, node: int, reason: str, active: set[int]) -> None:
        """``reason`` names the node (SplitInputError does; a client's error reason is prefixed here)."""
        reason = reason if reason.startswith(f"node {node}:") else f"node {node}: {reason}"
        log(logging.WARNING, "Round %d: dropped %s", log_.round, reason)
        log_.dropped.append(reason)
        active.discard(node)
        self._dropped.add(node)
        self.head.forget(node)
        self.copies.pop(node, None)  # a dropped node's head copy stays out of the mean

    def train_round(self, server_round: int, nodes: list[int]) -> RoundLog:
        log_ = RoundLog(round=server_round)
        self._dropped: set[int] = set()
        t0 = time.time()
        active, losses, examples, processed = set(nodes), [], 0, {}
        messages = [Message(content=self._with_weights(RecordDict({"config": self._orders(server_round, n)}), n),
                            dst_node_id=n, message_type=f"{MessageType.TRAIN}.{SPLIT_STEP}") for n in sorted(active)]
        while messages:
            replies = self._exchange(messages, log_, "train_up", "train_down")
            grads: dict[int, list[np.ndarray]] = {}
            readouts: dict[int, list[np.ndarray]] = {}
            for reply in replies:
                node = reply.metadata.src_node_id
                if node not in nodes:
                    log_.dropped.append(f"node {node}: not a node of this round; reply ignored")
                    continue
                if node not in active:
                    continue
                if reply.has_error():
                    self._drop(log_, node, reply.error.reason, active)
                    continue
                try:
                    self._learn_dataset(reply, node)
                except SplitInputError as err:
                    self._drop(log_, node, str(err), active)
                    continue
                if bool(reply.content["config"].get(DONE, False)):
                    active.discard(node)
                    continue
                started, acts = self._head_work_started(), []
                try:
                    acts = _arrays(reply.content, ACTIVATIONS, node)
                    if self.cfg.split_variant == "plain":
                        labels = _arrays(reply.content, LABELS, node)
                        if len(labels) != len(acts):
                            raise SplitInputError(f"node {node}: {len(labels)} label arrays for {len(acts)} "
                                                  "activation arrays; expected one each")
                        steps = [self._head(node).plain_step(a, y, node) for a, y in zip(acts, labels)]
                        grads[node] = [g for g, _ in steps]
                        losses += [loss for _, loss in steps]
                    else:
                        readouts[node] = [self._head(node).forward(a, node, i) for i, a in enumerate(acts)]
                    log_.train["split"]["activation_bytes"] += sum(a.nbytes for a in acts)
                    examples += sum(len(a) for a in acts)
                    processed[node] = processed.get(node, 0) + sum(len(a) for a in acts)
                except SplitInputError as err:
                    self._drop(log_, node, str(err), active)
                self._head_work_done(started, log_, len(acts) if self.cfg.split_variant == "plain" else 0)
            if readouts:
                grads.update(self._u_backward(server_round, readouts, log_, active, losses))
            for node_grads in grads.values():
                log_.train["split"]["gradient_bytes"] += sum(g.nbytes for g in node_grads)
            messages = [Message(content=RecordDict({"config": self._orders(server_round, node),
                                                    GRADIENTS: to_array_record({str(i): g for i, g in enumerate(gs)})}),
                                dst_node_id=node, message_type=f"{MessageType.TRAIN}.{SPLIT_STEP}")
                        for node, gs in sorted(grads.items()) if node in active]
        kept = [n for n in nodes if n not in self._dropped]  # a dropped node's pieces stay out of the average
        if len(kept) < min(self.cfg.min_clients, len(nodes)):  # as a federated round: too few clients fail the run
            raise RoundFailed(f"round {server_round}: {len(kept)} of {len(nodes)} clients went through the split "
                              f"exchange without an error, min-clients is {self.cfg.min_clients}; "
                              f"{'; '.join(log_.dropped[:3])}")
        kept = self._average(server_round, kept, log_)
        if self.cfg.split_server_head == "per-client":
            self._merge_copies({n: c for n, c in processed.items() if n not in self._dropped})
        split = log_.train["split"]
        batches = split.get("head_batches", 0)
        split["head_ms_per_batch"] = 1000 * split["head_seconds"] / batches if batches else None
        split["head_device"] = self.head.device
        split["energy_mj_per_sample"] = (split["head_millijoules"] / examples
                                         if "head_millijoules" in split and examples else None)
        if split["energy_mj_per_sample"] is None:
            split["energy_note"] = self.energy_note
        log_.train.update({"loss": float(np.mean(losses)) if losses else float("nan"), "clients": len(kept),
                           "examples": examples})
        if hasattr(self.head.head, "gate"):  # a gated model's fusion sits in the server's head
            log_.model["fusion-alpha"] = self.head.head.gate.alpha
        if kept:
            self._evaluate(server_round, kept, log_)
            self.selector.observe(server_round, log_.validation, self._snapshot)
        log_.seconds = time.time() - t0
        return log_

    def _snapshot(self) -> dict:
        """The split model as the server holds it: the head and each data set's averaged client pieces."""
        return {"head": {k: v.detach().cpu().clone() for k, v in self.head.head.state_dict().items()},
                "pieces": {dataset: strategy.snapshot() for dataset, strategy in self.strategies.items()}}

    def evaluate_selected(self, last: RoundLog) -> dict | None:
        """The chosen round (best validation of the run's data set) scored on validation and test; the
        head keeps the chosen weights afterwards: it is the final model. None when no round was scored."""
        best = self.selector.best
        if best is None:
            return None
        selection = {"metric": self.selector.metric, "round": best.round, "validation": best.validation}
        if best.round == last.round and last.test is not None:
            return {**selection, "test": last.test}
        self.head.head.load_state_dict(best.state["head"])
        evaluator = next((n for n, d in sorted(self.node_dataset.items()) if d == self.cfg.dataset), None)
        pieces = best.state["pieces"].get(self.cfg.dataset)
        if evaluator is None or pieces is None:
            return {**selection, "test": None, "error": "no node of the run's data set to score it"}
        scoring = RoundLog(round=last.round)
        records = self.strategy(self.cfg.dataset).snapshot_records(pieces)
        metrics = self._evaluate_on(last.round, evaluator, ("val", "test"), scoring, records) or {}
        if not metrics:
            return {**selection, "test": None, "error": "; ".join(scoring.dropped)}
        return {**selection,
                "validation": metrics_of_split(metrics, "val"), "test": metrics_of_split(metrics, "test")}

    def _u_backward(self, server_round: int, readouts: dict[int, list[np.ndarray]], log_: RoundLog,
                    active: set[int], losses: list[float]) -> dict[int, list[np.ndarray]]:
        messages = [Message(content=RecordDict({"config": self._orders(server_round, node),
                                                READOUTS: to_array_record({str(i): z for i, z in enumerate(zs)})}),
                            dst_node_id=node, message_type=f"{MessageType.QUERY}.{SPLIT_READOUTS}")
                    for node, zs in sorted(readouts.items()) if node in active]
        grads = {}
        for reply in self._exchange(messages, log_, "train_up", "train_down"):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._drop(log_, node, reply.error.reason, active)
                continue
            started, grad_z = self._head_work_started(), []
            try:
                grad_z = _arrays(reply.content, READOUT_GRADIENTS, node)
                if len(grad_z) != len(readouts[node]):
                    raise SplitInputError(f"node {node}: {len(grad_z)} read-out gradients for "
                                          f"{len(readouts[node])} micro-batches; expected one each")
                grads[node] = [self._head(node).backward(g, node, i) for i, g in enumerate(grad_z)]
                losses.append(float(reply.content["metrics"].get("train-loss", float("nan"))))
            except SplitInputError as err:
                self._drop(log_, node, str(err), active)
            self._head_work_done(started, log_, len(grad_z))  # a U-shaped batch: its forward and backward
        if self.cfg.split_server_head == "shared":
            self.head.step()  # once per exchange, on all its clients' gradients
        for node in readouts:
            if node in self.copies:
                self.copies[node].step()
        return grads

    def _average(self, server_round: int, nodes: list[int], log_: RoundLog) -> list[int]:
        """Each data set's strategy averages its clients' pieces (extractor, and the final layer when
        U-shaped): clients of different data sets (mixed U-shaped runs) share only the head.
        Returns the nodes whose pieces were averaged."""
        outputs = {}
        if self.options.weighting == "dp-softmax":
            outputs = self._validation_outputs(server_round, nodes, log_)
            nodes = [n for n in nodes if n in outputs]
        messages = []
        for node in nodes:
            content = RecordDict({"config": self._orders(server_round, node)})
            if node in outputs:  # for the client's DP validation accuracy
                content[OUTPUTS] = to_array_record({LOCAL_VAL: outputs[node]})
            messages.append(Message(content=content, dst_node_id=node,
                                    message_type=f"{MessageType.QUERY}.{SPLIT_WEIGHTS}"))
        replies = list(self._exchange(messages, log_, "train_up", "train_down"))
        # an error the SuperLink writes for a dead node carries the SuperLink's id: map replies by message id
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
        dataset_of = lambda n: self.node_dataset.get(n, self.cfg.dataset)  # noqa: E731
        averaged, spreads, dp_means = [], {}, {}
        for dataset in sorted({dataset_of(n) for n in nodes}):
            sent = [m for m in messages if dataset_of(m.metadata.dst_node_id) == dataset]
            answers = [r for r in replies
                       if dataset_of(sent_to.get(r.metadata.reply_to_message_id, r.metadata.src_node_id)) == dataset]
            part = RoundLog(round=server_round)
            try:
                self.strategy(dataset).aggregate_replies(server_round, answers, sent, part)
            except RoundFailed as err:  # this data set keeps last round's pieces; the others go on
                log(logging.WARNING, "Round %d: %s pieces not averaged: %s", server_round, dataset, err)
                log_.dropped.append(f"{dataset}: {err}")
                continue
            for reason in part.dropped:
                log(logging.WARNING, "Round %d: dropped %s", server_round, reason)
            log_.dropped += part.dropped
            log_.weights.update(part.weights)  # within the node's data set
            spreads[dataset] = part.weight_spread
            if "dp_accuracy_mean" in part.train:
                dp_means[dataset] = part.train["dp_accuracy_mean"]
            averaged += [int(n) for n in part.weights]
        main = self.cfg.dataset if self.cfg.dataset in spreads else next(iter(spreads), None)
        log_.weight_spread = spreads.get(main, {}) if main else {}
        if dp_means:
            log_.train["dp_accuracy_mean"] = dp_means.get(main, next(iter(dp_means.values())))
        return sorted(averaged)

    def _validation_outputs(self, server_round: int, nodes: list[int], log_: RoundLog) -> dict[int, np.ndarray]:
        """The head's outputs for each node's own validation share under its trained pieces (DP weighting)."""
        messages = [Message(content=RecordDict({"config": self._orders(server_round, n, (LOCAL_VAL,))}), dst_node_id=n,
                            message_type=f"{MessageType.QUERY}.{SPLIT_ACTIVATIONS}") for n in nodes]
        outputs = {}
        for reply in self._exchange(messages, log_, "train_up", "train_down"):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._drop(log_, node, reply.error.reason, set())
                continue
            started = self._head_work_started()
            try:
                activations = from_array_record(reply.content[ACTIVATIONS]) \
                    if isinstance(reply.content.get(ACTIVATIONS), ArrayRecord) else {}
                if LOCAL_VAL not in activations:
                    raise SplitInputError(f"node {node}: no validation activations; expected record "
                                          f"'{ACTIVATIONS}' with array '{LOCAL_VAL}'")
                own = activations[LOCAL_VAL]
                outputs[node] = self._head(node).predict(own, node) if len(own) else \
                    np.zeros((0, self.output_width), dtype=np.float32)
            except SplitInputError as err:
                self._drop(log_, node, str(err), set())
            self._head_work_done(started, log_, 0)
        return outputs

    def _evaluate(self, server_round: int, nodes: list[int], log_: RoundLog) -> None:
        """Each data set's first node scores its splits; the run's data set fills validation and test."""
        splits = ("val", "test") if server_round == self.cfg.num_server_rounds else ("val",)
        evaluators: dict[str, int] = {}
        for node in nodes:
            evaluators.setdefault(self.node_dataset.get(node, self.cfg.dataset), node)
        per_dataset, frozen = {}, []
        for dataset, node in sorted(evaluators.items()):
            metrics = self._evaluate_on(server_round, node, splits, log_)
            if metrics is None:
                continue
            strategy = self.strategy(dataset)
            if strategy.opt.freezing and strategy.freezer is not None:
                part = RoundLog(round=server_round)
                strategy.update_freezing(part, metrics)  # the server's scores and the evaluator's decrypted ones
                log_.layer_scores[dataset] = part.layer_scores
            frozen += [layer if len(evaluators) == 1 else f"{dataset}:{layer}" for layer in sorted(strategy.frozen)]
            per_dataset[dataset] = {k: v for k, v in metrics.items() if not k.startswith("delta-rms-")}
        log_.frozen_layers = frozen
        if len(per_dataset) > 1:
            log_.train["split"]["datasets"] = per_dataset
        main = per_dataset.get(self.cfg.dataset) or next(iter(per_dataset.values()), {})
        log_.validation = metrics_of_split(main, "val")
        if test := metrics_of_split(main, "test"):
            log_.test = test

    def _evaluate_on(self, server_round: int, node: int, splits: tuple[str, ...], log_: RoundLog,
                     records: RecordDict | None = None) -> dict | None:
        """``records``: client pieces to score instead of the current ones (the chosen round's)."""
        content = RecordDict({"config": self._orders(server_round, node, splits)})
        if records is None:
            content = self._with_weights(content, node)
        else:
            for key, record in records.items():
                content[key] = record
        ask = Message(content=content, dst_node_id=node, message_type=f"{MessageType.QUERY}.{SPLIT_ACTIVATIONS}")
        reply = next(iter(self._exchange([ask], log_, "eval_up", "eval_down")), None)
        if reply is None or reply.has_error():
            log_.dropped.append(f"evaluator {node}: {reply.error.reason if reply else 'no reply'}")
            return None
        activations = from_array_record(reply.content[ACTIVATIONS])
        changes = {k: float(v) for k, v in reply.content.get("metrics", MetricRecord()).items()
                   if k.startswith("delta-rms-") and isinstance(v, (int, float))}
        started = time.perf_counter()
        empty = np.zeros((0, self.output_width), dtype=np.float32)  # a split without records (PTB-XL fold 10 absent)
        outputs = {split: self.head.predict(activations[split], node) if len(activations.get(split, ())) else empty
                   for split in splits}
        scored = sum(len(v) for v in outputs.values())
        if scored:
            log_.train["split"]["head_inference_ms_per_sample"] = 1000 * (time.perf_counter() - started) / scored
        score = Message(content=RecordDict({"config": self._orders(server_round, node, splits),
                                            OUTPUTS: to_array_record(outputs)}),
                        dst_node_id=node, message_type=f"{MessageType.EVALUATE}.{SPLIT_EVALUATE}")
        reply = next(iter(self._exchange([score], log_, "eval_up", "eval_down")), None)
        if reply is None or reply.has_error():
            log_.dropped.append(f"evaluator {node}: {reply.error.reason if reply else 'no reply'}")
            return None
        return {**dict(reply.content.get("metrics", MetricRecord())), **changes}
