"""Flower ClientApp: local training of the hybrid model, DP accuracy release, CKKS encryption.

The server says what to do in each message (``common.instructions``); the client holds no server
code and does not re-derive those choices from the run config. Per train message the client
1. rebuilds the model (same seed everywhere), restores the global model it kept in its
   node state (frozen layers live only there once the server stops sending them),
2. loads the plaintext layers and decrypts the encrypted ones it received,
3. trains the layers that are not frozen for ``local-epochs``: plainly, or with DP-SGD when the server says
   ``update-dp = "example"`` (``common.dp_sgd``); with ``"client"`` it clips its update and adds its share of
   the Gaussian noise (``common.update_noise``). Either way the noise is in the weights before encryption,
4. replies with its non-encrypted, non-frozen layers in plaintext, the layers the server named
   packed into CKKS vectors, and, when the server asks for it, a Laplace-noised validation accuracy.
An evaluate message asks one client (the evaluator) to score the global model on the
validation fold (and, in the last round, the test fold), and to report the RMS change of
each encrypted layer, which only a key holder can compute.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.split_steps import split_activations, split_evaluate, split_readouts, split_step, split_weights
from client_app.layer_encryption import encrypted_layers_record, load_encrypted_layers
from common.config import NodeConfig, RunConfig
from common.instructions import (SPLIT_ACTIVATIONS, SPLIT_EVALUATE, SPLIT_READOUTS, SPLIT_STEP, SPLIT_WEIGHTS,
                                 FUSION_ALPHA, EvaluateInstructions, TrainInstructions, split_report_metrics)
from common.model import ECGNet, build_model, load_arrays, state_by_layer
from common.privacy import LaplaceAccuracyRelease
from common.task import evaluate, predict, train_local
from common.update_noise import DistributedGaussianUpdate
from common.validation_scores import ValidationScore
from common.wire import from_array_record, to_array_record
from data_prep.client_data import client_arrays, split_arrays
from data_prep.registry import dataset_spec

app = ClientApp()
# split learning (mode = "split"): one function per message action (client_app.split_steps)
app.train(SPLIT_STEP)(split_step)
app.query(SPLIT_READOUTS)(split_readouts)
app.query(SPLIT_WEIGHTS)(split_weights)
app.query(SPLIT_ACTIVATIONS)(split_activations)
app.evaluate(SPLIT_EVALUATE)(split_evaluate)

GLOBAL_STATE_KEY = "global-model"
DP_SGD_HISTORY_KEY = "dp-sgd-history"  # Opacus's accountant history over this run's rounds


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _restore_global(model: ECGNet, msg: Message, context: Context, node: NodeConfig, sim_key_dir: str
                    ) -> dict[str, float]:
    """Bring ``model`` to the current global model; return RMS change per decrypted layer."""
    kept = context.state.get(GLOBAL_STATE_KEY)
    if isinstance(kept, ArrayRecord):
        load_arrays(model, from_array_record(kept))
    load_arrays(model, from_array_record(msg.content["arrays"]))
    changes = load_encrypted_layers(model, msg.content.get("he"), node, sim_key_dir)
    context.state[GLOBAL_STATE_KEY] = to_array_record(state_by_layer(model))
    return changes


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    node = NodeConfig.from_flower(context.node_config)
    model = build_model(cfg)
    orders = TrainInstructions.from_config(msg.content["config"], model.layer_names())
    _restore_global(model, msg, context, node, orders.sim_key_dir)
    frozen, packing = frozenset(orders.frozen_layers), list(orders.encrypted_layers)

    task = dataset_spec(node.dataset_for(cfg)).task
    data = client_arrays(cfg, node)
    t0 = time.time()
    seed = cfg.seed * 100_003 + orders.server_round * 101 + node.partition_id
    trained = {name for name in model.layer_names() if name not in frozen}
    global_sent = state_by_layer(model, trained)
    common = dict(epochs=cfg.local_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, task=task,
                  frozen_layers=frozen, device=_device(), optimizer=cfg.optimizer, weight_decay=cfg.weight_decay)
    if orders.update_dp == "example":
        result = _train_dp_sgd(model, data, orders, context, cfg.dp_delta, common)
    else:
        result = train_local(model, data.x_train, data.y_train, seed=seed, lr_schedule=cfg.lr_schedule,
                             mixed_precision=cfg.mixed_precision, **common)
    metrics = {"num-examples": result["num_examples"], "train-seconds": time.time() - t0,
               **result.get("metrics", {})}
    if orders.update_dp == "none":  # under update DP the exact training loss would leak what the noise hides
        metrics["train-loss"] = result["train_loss"]
    if orders.update_dp == "client":
        # fresh OS entropy, as for the accuracy release; the release below then scores the model actually sent
        noisy, _ = DistributedGaussianUpdate(orders.update_dp_noise, orders.update_dp_clip,
                                             orders.update_dp_shares).privatise(
            state_by_layer(model, trained), global_sent, np.random.default_rng())
        load_arrays(model, noisy)
    if orders.dp_accuracy_epsilon > 0:
        probs = predict(model, data.x_val, task, device=_device())
        total = ValidationScore(orders.dp_score, task, orders.dp_loss_clip).total(probs, data.y_val)
        # fresh OS entropy: DP noise must not be predictable from the run seed
        metrics["dp-accuracy"] = LaplaceAccuracyRelease(orders.dp_accuracy_epsilon).release_total(
            total, len(data.y_val), np.random.default_rng())

    send_plain = {name for name in model.layer_names() if name not in frozen and name not in packing}
    content = RecordDict({"arrays": to_array_record(state_by_layer(model, send_plain)),
                          "metrics": MetricRecord(metrics)})
    if packing:
        content["he"] = encrypted_layers_record(state_by_layer(model, set(packing)), packing, node,
                                                orders.sim_key_dir)
    return Message(content=content, reply_to=msg)


def _train_dp_sgd(model, data, orders: TrainInstructions, context: Context, delta: float, common: dict) -> dict:
    """DP-SGD for this round; Opacus's accountant history lives in the node state so its epsilon spans the run."""
    from common.dp_sgd import opacus_epsilon, train_local_dp  # imports Opacus: only DP-SGD clients need it

    kept = context.state.get(DP_SGD_HISTORY_KEY)
    history = [list(h) for h in zip(kept["noise"], kept["rate"], kept["steps"])] if kept is not None else []
    result = train_local_dp(model, data.x_train, data.y_train, noise_multiplier=orders.update_dp_noise,
                            max_grad_norm=orders.update_dp_clip, accountant_history=history, **common)
    history = result["accountant_history"]
    context.state[DP_SGD_HISTORY_KEY] = ConfigRecord({"noise": [float(h[0]) for h in history],
                                                      "rate": [float(h[1]) for h in history],
                                                      "steps": [int(h[2]) for h in history]})
    result["metrics"] = {"update-dp-sample-rate": result["sample_rate"], "update-dp-steps": result["steps"],
                         "update-dp-epsilon-opacus": opacus_epsilon(history, delta)}
    return result


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    node = NodeConfig.from_flower(context.node_config)
    orders = EvaluateInstructions.from_config(msg.content["config"])
    model = build_model(cfg)
    changes = _restore_global(model, msg, context, node, orders.sim_key_dir)
    metrics: dict[str, float] = {f"delta-rms-{layer}": value for layer, value in changes.items()}
    if model.fusion_alpha is not None:
        metrics[FUSION_ALPHA] = model.fusion_alpha
    task = dataset_spec(node.dataset_for(cfg)).task
    for split in orders.splits:
        x, y = split_arrays(cfg, node, split)
        report = evaluate(model, x, y, task, device=_device())
        metrics.update(split_report_metrics(split, report))
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
