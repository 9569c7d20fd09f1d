"""Flower ClientApp: local training of the hybrid model, DP accuracy release, CKKS encryption.

Per train message the client
1. rebuilds the model (same seed everywhere), restores the global model it kept in its
   node state (frozen layers live only there once the server stops sending them),
2. loads the plaintext layers and decrypts the encrypted ones it received,
3. trains the layers that are not frozen for ``local-epochs``,
4. replies with its non-encrypted, non-frozen layers in plaintext, its encrypted layers
   packed into CKKS vectors, and (AdeptHEQ) a Laplace-noised validation accuracy.
An evaluate message asks one client (the evaluator) to score the global model on the
validation fold (and, in the last round, the test fold), and to report the RMS change of
each encrypted layer, which only a key holder can compute.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.ckks import PackedDecryptor, PackedEncryptor
from common.config import NodeConfig, RunConfig
from common.keys import ensure_simulation_keys, load_client_context
from common.model import ECGNet, build_model, flatten_layers, layer_vectors, load_arrays, state_by_layer, \
    unflatten_like
from common.privacy import LaplaceAccuracyRelease
from common.task import count_correct, evaluate, train_local
from common.wire import from_array_record, he_record, layer_order, read_he_record, to_array_record
from data_prep.client_data import client_arrays, split_arrays
from data_prep.registry import dataset_spec
from strategies.freezing import rms_change
from strategies.presets import encrypted_layers_for, weighting_for

app = ClientApp()

_CONTEXTS: dict[str, object] = {}
GLOBAL_STATE_KEY = "global-model"


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _names(config: ConfigRecord, key: str) -> list[str]:
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"message config '{key}' must be a list of layer names, got {value!r}")
    return [v for v in value if v]


def _secret_context(node: NodeConfig, config: ConfigRecord):
    """The CKKS secret context: node config key-path on devices, the run folder's keys in simulation.

    The server names a simulation key folder only when it has no deployed ``he-server-context``,
    so a device without ``key-path`` fails here instead of inventing a key of its own.
    """
    if node.key_path:
        path = Path(node.key_path)
    else:
        key_dir = config.get("sim-key-dir", "")
        if not isinstance(key_dir, str) or not key_dir:
            raise ValueError("node config: key 'key-path' is not set; expected the path of the CKKS client key "
                             "(client.ctx from `python -m common.keys generate`)")
        path = ensure_simulation_keys(Path(key_dir)) / "client.ctx"
    key = str(path)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = load_client_context(path)
    return _CONTEXTS[key]


def _restore_global(model: ECGNet, msg: Message, context: Context, node: NodeConfig
                    ) -> tuple[dict[str, float], list[str]]:
    """Bring ``model`` to the current global model; return RMS change per decrypted layer."""
    kept = context.state.get(GLOBAL_STATE_KEY)
    if isinstance(kept, ArrayRecord):
        load_arrays(model, from_array_record(kept))
    before = state_by_layer(model)
    load_arrays(model, from_array_record(msg.content["arrays"]))
    changes: dict[str, float] = {}
    he = read_he_record(msg.content.get("he"))
    if he is not None:
        chunks, length, layers = he
        ctx = _secret_context(node, msg.content["config"])
        flat = PackedDecryptor(ctx).decrypt(chunks, length)
        decrypted = unflatten_like(flat, state_by_layer(model, set(layers)))  # packed in model order
        load_arrays(model, decrypted)
        now, then = layer_vectors(decrypted, layers), layer_vectors(before, layers)
        changes = {layer: rms_change(now[layer], then[layer]) for layer in layers}
    context.state[GLOBAL_STATE_KEY] = to_array_record(state_by_layer(model))
    return changes, (he[2] if he is not None else [])


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    node = NodeConfig.from_flower(context.node_config)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    model = build_model(cfg)
    _restore_global(model, msg, context, node)
    frozen = frozenset(_names(config, "frozen-layers"))
    encrypted = encrypted_layers_for(cfg, model.layer_names())
    packing = _names(config, "encrypted-layers")
    if set(packing) != set(encrypted) - frozen:
        raise ValueError(f"server asks to encrypt {packing}; this client's run config gives "
                         f"{sorted(set(encrypted) - frozen)}")

    task = dataset_spec(node.dataset_for(cfg)).task
    data = client_arrays(cfg, node)
    t0 = time.time()
    result = train_local(model, data.x_train, data.y_train, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                         learning_rate=cfg.learning_rate, seed=cfg.seed * 100_003 + server_round * 101 + node.partition_id,
                         task=task, frozen_layers=frozen, device=_device())
    metrics = {"num-examples": result["num_examples"], "train-loss": result["train_loss"],
               "train-seconds": time.time() - t0}
    if weighting_for(cfg) == "dp-softmax":
        correct = count_correct(model, data.x_val, data.y_val, task, device=_device())
        # fresh OS entropy: DP noise must not be predictable from the run seed
        metrics["dp-accuracy"] = LaplaceAccuracyRelease(cfg.dp_epsilon).release(
            correct, len(data.y_val), np.random.default_rng())

    send_plain = {l for l in model.layer_names() if l not in frozen and l not in encrypted}
    content = RecordDict({"arrays": to_array_record(state_by_layer(model, send_plain)),
                          "metrics": MetricRecord(metrics)})
    if packing:
        ctx = _secret_context(node, config)
        flat = flatten_layers(state_by_layer(model, set(packing)))
        content["he"] = he_record(PackedEncryptor(ctx).encrypt(flat), flat.size, layer_order(model.layer_names(), set(packing)))
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    node = NodeConfig.from_flower(context.node_config)
    config = msg.content["config"]
    model = build_model(cfg)
    changes, _ = _restore_global(model, msg, context, node)
    metrics: dict[str, float] = {f"delta-rms-{layer}": value for layer, value in changes.items()}
    task = dataset_spec(node.dataset_for(cfg)).task
    splits = str(config.get("split", "val")).split("+")
    for split in splits:
        if split not in ("val", "test"):
            raise ValueError(f"evaluate split {split!r}; expected 'val' or 'test'")
        x, y = split_arrays(cfg, node, split)
        report = evaluate(model, x, y, task, device=_device())
        metrics.update({f"{split}-{k.replace('_', '-')}": v if isinstance(v, list) else float(v)
                        for k, v in report.items()})
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
