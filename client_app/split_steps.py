"""The ClientApp's split-learning messages (``common.instructions``: SPLIT_*), one function each.

The client's extractor (and, U-shaped, its final layer), their Adam states and its place in its
data live in Flower's ``context.state`` between messages and rounds. A split step is computed from
them as :class:`client_app.split_client.SplitClientTrainer` does, with one difference: the graph of
a forward pass does not survive to the message that brings its gradient, so the client recomputes
the forward pass on the same batch with the same weights (deterministic) before back-propagating.

With ``micro-batches = k`` a message carries k micro-batches computed with the same weights; the
server head steps on each, the client takes one step on the mean of their gradients.

The client's pieces are averaged at round end as a federated train reply (``strategies.layerwise``):
a message's ``arrays`` and ``he`` records carry the global pieces (``he``: the CKKS sums of the
encrypted layers, decrypted here), its config names the frozen layers (not trained, not sent), the
layers to pack, and the epsilon of a DP validation accuracy, which the client computes from the
head's outputs for its validation split that the ``split_weights`` message carries.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from client_app.layer_encryption import encrypted_layers_record, load_encrypted_layers
from common.config import NodeConfig, RunConfig
from common.distance_correlation import activation_rms, distance_correlation
from common.instructions import (ACTIVATIONS, DATASET, DONE, GRADIENTS, LABELS, OUTPUTS, READOUT_GRADIENTS, READOUTS,
                                 LOCAL_VAL, InstructionError, SplitInstructions,
                                 TrainInstructions, split_report_metrics)
from common.model import build_model, layer_of, load_arrays, state_by_layer
from common.privacy import LaplaceAccuracyRelease
from common.split_model import client_layers, split_model
from common.task import loss_function, optimiser_for, probabilities, report_from_probabilities
from common.validation_scores import ValidationScore
from common.wire import from_array_record, to_array_record
from data_prep.client_data import client_arrays, split_arrays
from data_prep.registry import dataset_spec

STATE_WEIGHTS, STATE_OPTIMISER, STATE_CURSOR = "split-weights", "split-optimiser", "split-cursor"
STATE_GLOBAL = "split-global"  # the last global pieces received: the reference of an encrypted layer's change
ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")


def _indexed(record: ArrayRecord | None, what: str, count: int) -> list[np.ndarray]:
    """Arrays '0' .. str(count - 1) of a message record; InstructionError naming what is missing."""
    arrays = from_array_record(record) if isinstance(record, ArrayRecord) else {}
    if sorted(arrays) != sorted(str(i) for i in range(count)):
        raise InstructionError(f"message record '{what}' holds {sorted(arrays)}; expected arrays 0..{count - 1}")
    return [arrays[str(i)] for i in range(count)]


class SplitClient:
    """The trainable client pieces and their optimisers, restored from and saved to ``context.state``.

    Weights are keyed by the unsplit model's parameter names (``conv1.0.weight``, ``fc.bias``), so
    the strategy's layer-wise averaging, encryption and freezing see the same layers in both modes.
    """

    def __init__(self, cfg: RunConfig, orders: SplitInstructions, context: Context) -> None:
        self.cfg, self.orders, self.context = cfg, orders, context
        self.model = build_model(cfg)
        parts = split_model(self.model, orders.cut, orders.variant)
        self.extractor, self.top = parts.extractor, parts.top
        self.layers = client_layers(self.model, orders.cut, orders.variant)
        self.pieces = nn.ModuleDict({"extractor": self.extractor, **({"top": self.top} if self.top else {})})
        self.optimisers = {name: optimiser_for(piece.parameters(), cfg.optimizer, cfg.learning_rate, cfg.weight_decay)
                           for name, piece in self.pieces.items()}
        self.initial = self.weights()  # every client builds the same seeded model: the first global
        kept = context.state.get(STATE_WEIGHTS)
        if isinstance(kept, ArrayRecord):
            self.load_weights(from_array_record(kept))
        moments = context.state.get(STATE_OPTIMISER)
        if isinstance(moments, ArrayRecord):
            self._load_optimisers(from_array_record(moments))

    def weights(self, layers: set[str] | None = None) -> OrderedDict[str, np.ndarray]:
        """The client's parameters (of ``layers`` only, when given), by the unsplit model's names."""
        return state_by_layer(self.model, set(self.layers) if layers is None else set(layers) & set(self.layers))

    def load_weights(self, arrays: dict[str, np.ndarray]) -> None:
        """Overwrite some of the client's parameters; names, shapes and values are checked first."""
        own = self.weights()
        if not set(arrays) <= set(own):
            raise InstructionError(f"split weights name {sorted(set(arrays) - set(own))[:3]}...; expected some of "
                                   f"this client's parameters {sorted(own)[:3]}...")
        try:
            load_arrays(self.model, arrays)
        except ValueError as err:
            raise InstructionError(f"split weights: {err}") from None

    def receive_global(self, content: RecordDict, node: NodeConfig, sim_key_dir: str) -> dict[str, float]:
        """Load the global pieces a message carries; return each decrypted layer's RMS change."""
        if not isinstance(content.get("arrays"), ArrayRecord):
            return {}
        reference = self.context.state.get(STATE_GLOBAL)
        # the pieces the message leaves out (frozen) stay as last received
        self.load_weights(from_array_record(reference) if isinstance(reference, ArrayRecord) else self.initial)
        self.load_weights(from_array_record(content["arrays"]))
        changes = load_encrypted_layers(self.model, content.get("he"), node, sim_key_dir)
        self.context.state[STATE_GLOBAL] = to_array_record(self.weights())
        return changes

    def freeze(self, layers: tuple[str, ...]) -> None:
        """Frozen layers get no gradient, so Adam leaves them as they are."""
        for name, param in self.model.named_parameters():
            param.requires_grad_(layer_of(name) not in layers)

    def _load_optimisers(self, arrays: dict[str, np.ndarray]) -> None:
        for name, optimiser in self.optimisers.items():
            state = optimiser.state_dict()
            for index in range(len(state["param_groups"][0]["params"])):
                keys = [f"{name}.{index}.{k}" for k in ADAM_KEYS]
                if all(k in arrays for k in keys):
                    state["state"][index] = {k: torch.as_tensor(arrays[key]) for k, key in zip(ADAM_KEYS, keys)}
            optimiser.load_state_dict(state)

    def save(self) -> None:
        self.context.state[STATE_WEIGHTS] = to_array_record(self.weights())
        moments = OrderedDict()
        for name, optimiser in self.optimisers.items():
            for index, values in optimiser.state_dict()["state"].items():
                for key in ADAM_KEYS:
                    moments[f"{name}.{index}.{key}"] = np.asarray(values[key].detach().cpu().numpy())
        self.context.state[STATE_OPTIMISER] = to_array_record(moments)


class Cursor:
    """Where the client is in this round's ``local-epochs`` passes, and the batches awaiting gradients."""

    def __init__(self, context: Context) -> None:
        self.context = context
        kept = context.state.get(STATE_CURSOR)
        values = dict(kept) if isinstance(kept, ConfigRecord) else {}
        self.round = int(values.get("round", 0))
        self.epoch = int(values.get("epoch", 0))
        self.position = int(values.get("position", 0))
        self.pending = [list(map(int, values[f"pending-{i}"])) for i in range(int(values.get("pending", 0)))]

    def restart(self, server_round: int) -> None:
        self.round, self.epoch, self.position, self.pending = server_round, 0, 0, []

    def next_batches(self, n: int, cfg: RunConfig, node: NodeConfig, count: int) -> list[list[int]]:
        """Up to ``count`` batches of this round's passes over ``n`` records, in a per-epoch order."""
        out = []
        while len(out) < count and self.epoch < cfg.local_epochs:
            seed = [cfg.seed, self.round, node.partition_id, self.epoch]
            order = np.random.default_rng(seed).permutation(n)
            batch = order[self.position:self.position + cfg.batch_size]
            self.position += cfg.batch_size
            if self.position >= n:
                self.epoch, self.position = self.epoch + 1, 0
            if len(batch):
                out.append([int(i) for i in batch])
        self.pending = out
        return out

    def save(self) -> None:
        record = ConfigRecord({"round": self.round, "epoch": self.epoch, "position": self.position,
                               "pending": len(self.pending)})
        for i, batch in enumerate(self.pending):
            record[f"pending-{i}"] = batch
        self.context.state[STATE_CURSOR] = record


class SplitSetup(NamedTuple):
    cfg: RunConfig
    node: NodeConfig
    orders: SplitInstructions
    train_orders: TrainInstructions
    client: SplitClient
    task: str
    changes: dict[str, float]  # RMS change of each decrypted layer (the evaluator reports it for freezing)


def _setup(msg: Message, context: Context) -> SplitSetup:
    """The run as this client's data set sees it (mixed U-shaped runs), its node, the orders and its pieces."""
    run = RunConfig.from_flower(context.run_config)
    node = NodeConfig.from_flower(context.node_config)
    dataset = node.dataset_for(run)
    cfg, node = run.for_dataset(dataset), node.within_dataset(run)
    orders = SplitInstructions.from_config(msg.content["config"])
    client = SplitClient(cfg, orders, context)
    train_orders = TrainInstructions.from_config(msg.content["config"], client.layers)
    changes = client.receive_global(msg.content, node, train_orders.sim_key_dir)  # the server's average
    client.freeze(train_orders.frozen_layers)
    return SplitSetup(cfg, node, orders, train_orders, client, dataset_spec(dataset).task, changes)


def split_step(msg: Message, context: Context) -> Message:
    """Apply the gradients the message carries (if any); reply with the next activations, or done."""
    cfg, node, orders, _, client, task, _ = _setup(msg, context)
    data = client_arrays(cfg, node)
    cursor = Cursor(context)
    if orders.server_round != cursor.round:
        cursor.restart(orders.server_round)
    if GRADIENTS in msg.content:
        grads = _indexed(msg.content[GRADIENTS], GRADIENTS, len(cursor.pending))
        client.optimisers["extractor"].zero_grad()
        for batch, grad in zip(cursor.pending, grads):
            x = torch.as_tensor(data.x_train[batch])
            activations = client.extractor(x)  # recomputed: same weights, so the same graph
            if grad.shape != tuple(activations.shape) or not np.all(np.isfinite(grad)):
                raise InstructionError(f"activation gradient of shape {grad.shape}; expected finite values of "
                                       f"shape {tuple(activations.shape)}")
            # d/da of this is the server's dL/da; the noise the server saw passes straight through
            objective = (activations * torch.as_tensor(grad)).sum()
            if cfg.split_nopeek_weight > 0:  # NoPeek: make the activations say less about the input
                objective = objective + cfg.split_nopeek_weight * distance_correlation(x, activations)
            if objective.requires_grad:  # else every extractor layer is frozen
                (objective / len(grads)).backward()
        client.optimisers["extractor"].step()
    batches = cursor.next_batches(len(data.y_train), cfg, node, orders.micro_batches)
    content = RecordDict({"metrics": MetricRecord({"num-examples": sum(map(len, batches))}),
                          "config": ConfigRecord({DONE: not batches, DATASET: cfg.dataset})})
    if batches:
        with torch.no_grad():
            sent = {str(i): client.extractor(torch.as_tensor(data.x_train[b])).numpy() for i, b in enumerate(batches)}
        if cfg.split_activation_noise > 0:  # fresh OS entropy: the server must not be able to replay the noise
            noise = np.random.default_rng()
            # relative to each example's RMS: against a fixed scale the extractor learns to scale its output up
            sent = {k: (v + noise.normal(0.0, 1.0, v.shape) * cfg.split_activation_noise
                        * activation_rms(torch.as_tensor(v)).numpy()).astype(np.float32) for k, v in sent.items()}
        content[ACTIVATIONS] = to_array_record(sent)
        if orders.variant == "plain":  # the label-private variant keeps them here
            content[LABELS] = to_array_record({str(i): data.y_train[b] for i, b in enumerate(batches)})
    client.save()
    cursor.save()
    return Message(content=content, reply_to=msg)


def split_readouts(msg: Message, context: Context) -> Message:
    """U-shaped: the final layer and the loss on the head's read-outs; reply with their gradients."""
    cfg, node, orders, _, client, task, _ = _setup(msg, context)
    if client.top is None:
        raise InstructionError("read-outs arrived for the plain variant; expected split-variant 'u-shaped'")
    data = client_arrays(cfg, node)
    cursor = Cursor(context)
    readouts = _indexed(msg.content.get(READOUTS), READOUTS, len(cursor.pending))
    client.optimisers["top"].zero_grad()
    grads, losses = {}, []
    for i, (batch, z_values) in enumerate(zip(cursor.pending, readouts)):
        expected = (len(batch), client.top.in_features)
        if z_values.shape != expected or not np.all(np.isfinite(z_values)):
            raise InstructionError(f"read-outs of shape {z_values.shape}; expected finite values of shape {expected}")
        z = torch.as_tensor(z_values).requires_grad_(True)
        loss = loss_function(task)(client.top(z), torch.as_tensor(data.y_train[batch]))
        (loss / len(readouts)).backward()
        grads[str(i)] = z.grad.numpy() * len(readouts)  # dL_i/dz_i: the head steps on each micro-batch
        losses.append(float(loss.detach()))
    client.optimisers["top"].step()
    client.save()
    return Message(content=RecordDict({READOUT_GRADIENTS: to_array_record(grads),
                                       "metrics": MetricRecord({"train-loss": float(np.mean(losses))})}),
                   reply_to=msg)


def split_weights(msg: Message, context: Context) -> Message:
    """Round end: the client's pieces as a federated train reply (plain, packed, frozen left out), its
    training size and, when asked, its DP accuracy on its own validation share from the head's outputs."""
    cfg, node, _, orders, client, task, _ = _setup(msg, context)
    data = client_arrays(cfg, node)
    metrics: dict[str, int | float] = {"num-examples": len(data.y_train)}
    if orders.dp_accuracy_epsilon > 0:
        logits = _outputs(msg, (LOCAL_VAL,))[LOCAL_VAL]
        if client.top is not None:
            with torch.no_grad():
                logits = client.top(torch.as_tensor(logits, dtype=torch.float32)).numpy()
        if logits.shape != data.y_val.shape:
            raise InstructionError(f"outputs of split 'val' of shape {logits.shape}; expected {data.y_val.shape}")
        total = ValidationScore(orders.dp_score, task, orders.dp_loss_clip).total(probabilities(logits, task),
                                                                                   data.y_val)
        # fresh OS entropy: DP noise must not be predictable from the run seed
        metrics["dp-accuracy"] = LaplaceAccuracyRelease(orders.dp_accuracy_epsilon).release_total(
            total, len(data.y_val), np.random.default_rng())
    packing = list(orders.encrypted_layers)
    plain = set(client.layers) - set(orders.frozen_layers) - set(packing)
    content = RecordDict({"arrays": to_array_record(client.weights(plain)), "metrics": MetricRecord(metrics),
                          "config": ConfigRecord({DATASET: cfg.dataset})})
    if packing:
        content["he"] = encrypted_layers_record(client.weights(set(packing)), packing, node, orders.sim_key_dir)
    return Message(content=content, reply_to=msg)


def _outputs(msg: Message, splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The head's outputs of ``splits`` that a message carries; InstructionError naming a missing one."""
    outputs = from_array_record(msg.content[OUTPUTS]) if isinstance(msg.content.get(OUTPUTS), ArrayRecord) else {}
    for split in splits:
        if split not in outputs:
            raise InstructionError(f"message record '{OUTPUTS}' lacks split {split!r}; expected {list(splits)}")
    return outputs


def split_activations(msg: Message, context: Context) -> Message:
    """Activations of the named splits under the weights the message carries (none: the client's own),
    and the RMS change of each layer it decrypted (the evaluator's report for freezing)."""
    cfg, node, orders, _, client, _, changes = _setup(msg, context)
    client.save()
    arrays = {}
    with torch.no_grad():
        client.extractor.eval()
        for split in orders.splits:
            x = client_arrays(cfg, node).x_val if split == LOCAL_VAL else split_arrays(cfg, node, split)[0]
            arrays[split] = np.concatenate([client.extractor(torch.as_tensor(x[i:i + 256])).numpy()
                                            for i in range(0, len(x), 256)]) if len(x) else np.zeros((0,))
    return Message(content=RecordDict({ACTIVATIONS: to_array_record(arrays), "metrics": MetricRecord(
        {f"delta-rms-{layer}": value for layer, value in changes.items()})}), reply_to=msg)


def split_evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the named splits from the head's outputs (U-shaped: through the client's final layer)."""
    cfg, node, orders, _, client, task, _ = _setup(msg, context)
    outputs = _outputs(msg, orders.splits)
    metrics: dict[str, float | list] = {}
    for split in orders.splits:
        _, y = split_arrays(cfg, node, split)
        logits = outputs[split]
        if client.top is not None:
            with torch.no_grad():
                logits = client.top(torch.as_tensor(logits, dtype=torch.float32)).numpy()
        if logits.shape != y.shape:
            raise InstructionError(f"outputs of split {split!r} of shape {logits.shape}; expected {y.shape}")
        report = report_from_probabilities(probabilities(logits, task), y, task)
        metrics.update(split_report_metrics(split, report))
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
