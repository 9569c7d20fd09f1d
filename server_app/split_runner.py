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
At round end every client sends its pieces (``query.split_weights``) and the server averages them
weighted by training-set size, within each data set (``split-datasets``: U-shaped clients of
different data sets share only the head). One evaluator per data set scores the validation split
(and, in the last round, the test split): it sends activations, the head returns its outputs, the
client computes metrics.

A reply that is an error, or whose arrays have the wrong shape or are not finite, drops that node
for the rest of the round with a reason naming it; the round goes on with the others.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from common.config import RunConfig
from common.gpu_energy import GpuEnergyMeter, nvml_status
from common.instructions import (ACTIVATIONS, DATASET, DONE, GRADIENTS, LABELS, OUTPUTS, READOUT_GRADIENTS, READOUTS,
                                 SPLIT_ACTIVATIONS, SPLIT_EVALUATE, SPLIT_READOUTS, SPLIT_STEP, SPLIT_WEIGHTS, WEIGHTS,
                                 SplitInstructions)
from common.model import build_model
from common.split_model import split_model
from common.wire import from_array_record, serialized_size, to_array_record
from data_prep.registry import dataset_spec
from server_app.split_head import SplitHeadTrainer, SplitInputError
from strategies.layerwise import RoundLog


def _arrays(content: RecordDict, key: str, node: int) -> list[np.ndarray]:
    record = content.get(key)
    arrays = from_array_record(record) if record is not None else {}
    if sorted(arrays) != [str(i) for i in range(len(arrays))] or not arrays:
        raise SplitInputError(f"node {node}: record '{key}' holds {sorted(arrays)}; expected arrays 0, 1, ...")
    return [arrays[str(i)] for i in range(len(arrays))]


class SplitRun:
    """The head, the clients' averaged weights, and the round loop."""

    def __init__(self, cfg: RunConfig, grid: Grid) -> None:
        self.cfg, self.grid = cfg, grid
        spec = dataset_spec(cfg.dataset)
        model = build_model(cfg)
        parts = split_model(model, cfg.split_cut, cfg.split_variant)
        with torch.no_grad():
            shape = tuple(parts.extractor(torch.zeros(1, spec.num_channels,
                                                      spec.window_samples(cfg.sampling_rate))).shape[1:])
        self.head = SplitHeadTrainer(parts.head, shape, spec.task, learning_rate=cfg.learning_rate)
        self.output_width = spec.num_classes if cfg.split_variant == "plain" else cfg.n_qubits
        self.meter, self.energy_note = None, "the head runs on the CPU; NVML measures GPUs only"
        if self.head.device == "cuda":
            available, self.energy_note = nvml_status()
            self.meter = GpuEnergyMeter() if available else None
        self.group_weights: dict[str, OrderedDict[str, np.ndarray]] = {}  # data set -> its clients' average
        self.node_dataset: dict[int, str] = {}  # as each node reported at round end
        log(logging.INFO, "Split learning: %s variant, cut after %s, activations of shape %s per example; "
            "server head on %s", cfg.split_variant, cfg.split_cut, shape, self.head.device)

    def _orders(self, server_round: int, splits: tuple[str, ...] = ("val",)) -> ConfigRecord:
        return SplitInstructions(server_round, self.cfg.split_variant, self.cfg.split_cut,
                                 self.cfg.split_micro_batches, splits).to_config()

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
        """The average of the node's data set goes out with a round's first message (none before round 1)."""
        weights = self.group_weights.get(self.node_dataset.get(node, ""))
        if weights is not None:
            content[WEIGHTS] = to_array_record(weights)
        return content

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

    def train_round(self, server_round: int, nodes: list[int]) -> RoundLog:
        log_ = RoundLog(round=server_round)
        self._dropped: set[int] = set()
        t0 = time.time()
        active, losses, examples = set(nodes), [], 0
        messages = [Message(content=self._with_weights(RecordDict({"config": self._orders(server_round)}), n),
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
                        steps = [self.head.plain_step(a, y, node) for a, y in zip(acts, labels)]
                        grads[node] = [g for g, _ in steps]
                        losses += [loss for _, loss in steps]
                    else:
                        readouts[node] = [self.head.forward(a, node, i) for i, a in enumerate(acts)]
                    log_.train["split"]["activation_bytes"] += sum(a.nbytes for a in acts)
                    examples += sum(len(a) for a in acts)
                except SplitInputError as err:
                    self._drop(log_, node, str(err), active)
                self._head_work_done(started, log_, len(acts) if self.cfg.split_variant == "plain" else 0)
            if readouts:
                grads.update(self._u_backward(server_round, readouts, log_, active, losses))
            for node_grads in grads.values():
                log_.train["split"]["gradient_bytes"] += sum(g.nbytes for g in node_grads)
            messages = [Message(content=RecordDict({"config": self._orders(server_round),
                                                    GRADIENTS: to_array_record({str(i): g for i, g in enumerate(gs)})}),
                                dst_node_id=node, message_type=f"{MessageType.TRAIN}.{SPLIT_STEP}")
                        for node, gs in sorted(grads.items()) if node in active]
        kept = [n for n in nodes if n not in self._dropped]  # a dropped node's pieces stay out of the average
        self._average(server_round, kept, log_)
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
        if kept:
            self._evaluate(server_round, kept, log_)
        log_.seconds = time.time() - t0
        return log_

    def _u_backward(self, server_round: int, readouts: dict[int, list[np.ndarray]], log_: RoundLog,
                    active: set[int], losses: list[float]) -> dict[int, list[np.ndarray]]:
        messages = [Message(content=RecordDict({"config": self._orders(server_round),
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
                grads[node] = [self.head.backward(g, node, i) for i, g in enumerate(grad_z)]
                losses.append(float(reply.content["metrics"].get("train-loss", float("nan"))))
            except SplitInputError as err:
                self._drop(log_, node, str(err), active)
            self._head_work_done(started, log_, len(grad_z))  # a U-shaped batch: its forward and backward
        self.head.step()
        return grads

    def _average(self, server_round: int, nodes: list[int], log_: RoundLog) -> None:
        """Sample-weighted average of the clients' pieces (extractor, and the final layer when U-shaped),
        within each data set: clients of different data sets (mixed U-shaped runs) share only the head."""
        messages = [Message(content=RecordDict({"config": self._orders(server_round)}), dst_node_id=n,
                            message_type=f"{MessageType.QUERY}.{SPLIT_WEIGHTS}") for n in nodes]
        sums: dict[str, OrderedDict[str, np.ndarray]] = {}
        totals: dict[str, float] = {}
        for reply in self._exchange(messages, log_, "train_up", "train_down"):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log_.dropped.append(f"node {node}: weights: {reply.error.reason}")
                continue
            dataset = str(reply.content["config"].get(DATASET, self.cfg.dataset)) if "config" in reply.content \
                else self.cfg.dataset
            arrays = from_array_record(reply.content[WEIGHTS])
            n = float(reply.content["metrics"].get("num-examples", 0))
            reference = sums.get(dataset) or self.group_weights.get(dataset) or arrays
            if sorted(arrays) != sorted(reference) or any(
                    arrays[k].shape != reference[k].shape or not np.all(np.isfinite(arrays[k])) for k in arrays):
                log_.dropped.append(f"node {node}: {dataset} weights of other names or shapes, or not finite")
                continue
            group = sums.setdefault(dataset, OrderedDict((k, np.zeros_like(v, dtype=np.float64))
                                                          for k, v in arrays.items()))
            for k, v in arrays.items():
                group[k] += n * v
            totals[dataset] = totals.get(dataset, 0.0) + n
            log_.weights[str(node)] = n
            self.node_dataset[node] = dataset
        for dataset, group in sums.items():
            if totals[dataset] > 0:
                self.group_weights[dataset] = OrderedDict((k, (v / totals[dataset]).astype(np.float32))
                                                          for k, v in group.items())
        for node in list(log_.weights):
            log_.weights[node] /= totals[self.node_dataset[int(node)]] or 1.0  # weights within the node's data set

    def _evaluate(self, server_round: int, nodes: list[int], log_: RoundLog) -> None:
        """Each data set's first node scores its splits; the run's data set fills validation and test."""
        splits = ("val", "test") if server_round == self.cfg.num_server_rounds else ("val",)
        evaluators: dict[str, int] = {}
        for node in nodes:
            evaluators.setdefault(self.node_dataset.get(node, self.cfg.dataset), node)
        per_dataset = {}
        for dataset, node in sorted(evaluators.items()):
            metrics = self._evaluate_on(server_round, node, splits, log_)
            if metrics is None:
                continue
            per_dataset[dataset] = metrics
        if len(per_dataset) > 1:
            log_.train["split"]["datasets"] = per_dataset
        main = per_dataset.get(self.cfg.dataset) or next(iter(per_dataset.values()), {})
        log_.validation = {k.removeprefix("val-"): v for k, v in main.items() if k.startswith("val-")}
        if any(k.startswith("test-") for k in main):
            log_.test = {k.removeprefix("test-"): v for k, v in main.items() if k.startswith("test-")}

    def _evaluate_on(self, server_round: int, node: int, splits: tuple[str, ...], log_: RoundLog) -> dict | None:
        content = self._with_weights(RecordDict({"config": self._orders(server_round, splits)}), node)
        ask = Message(content=content, dst_node_id=node, message_type=f"{MessageType.QUERY}.{SPLIT_ACTIVATIONS}")
        reply = next(iter(self._exchange([ask], log_, "eval_up", "eval_down")), None)
        if reply is None or reply.has_error():
            log_.dropped.append(f"evaluator {node}: {reply.error.reason if reply else 'no reply'}")
            return None
        activations = from_array_record(reply.content[ACTIVATIONS])
        started = time.perf_counter()
        empty = np.zeros((0, self.output_width), dtype=np.float32)  # a split without records (PTB-XL fold 10 absent)
        outputs = {split: self.head.predict(activations[split], node) if len(activations.get(split, ())) else empty
                   for split in splits}
        scored = sum(len(v) for v in outputs.values())
        if scored:
            log_.train["split"]["head_inference_ms_per_sample"] = 1000 * (time.perf_counter() - started) / scored
        score = Message(content=RecordDict({"config": self._orders(server_round, splits),
                                            OUTPUTS: to_array_record(outputs)}),
                        dst_node_id=node, message_type=f"{MessageType.EVALUATE}.{SPLIT_EVALUATE}")
        reply = next(iter(self._exchange([score], log_, "eval_up", "eval_down")), None)
        if reply is None or reply.has_error():
            log_.dropped.append(f"evaluator {node}: {reply.error.reason if reply else 'no reply'}")
            return None
        return dict(reply.content.get("metrics", MetricRecord()))
