"""The client's side of CKKS: its secret context, packing its layers for the server, unpacking the sums.

The server adds and scales ciphertexts with a public context only; every piece here needs the
secret key and so runs on a client. Both the federated ClientApp and the split-learning steps use
it, so an encrypted layer is handled the same way in both modes.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord
from torch import nn

from common.ckks import PackedDecryptor, PackedEncryptor
from common.config import NodeConfig
from common.keys import ensure_simulation_keys, load_client_context
from common.layer_change import rms_change
from common.model import flatten_layers, layer_vectors, load_arrays, state_by_layer, unflatten_like
from common.wire import he_record, layer_order, read_he_record

_CONTEXTS: dict[str, object] = {}


def secret_context(node: NodeConfig, sim_key_dir: str):
    """The CKKS secret context: node config key-path on devices, the run folder's keys in simulation.

    The server names a simulation key folder only when it has no deployed ``he-server-context``,
    so a device without ``key-path`` fails here instead of inventing a key of its own.
    """
    if node.key_path:
        path = Path(node.key_path)
    else:
        if not sim_key_dir:
            raise ValueError("node config: key 'key-path' is not set; expected the path of the CKKS client key "
                             "(client.ctx from `python -m common.keys generate`)")
        path = ensure_simulation_keys(Path(sim_key_dir)) / "client.ctx"
    key = str(path)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = load_client_context(path)
    return _CONTEXTS[key]


def load_encrypted_layers(model: nn.Module, record: ConfigRecord | None, node: NodeConfig,
                          sim_key_dir: str) -> dict[str, float]:
    """Decrypt an ``he`` record into ``model``; return the RMS change of each layer it held (none: {})."""
    he = read_he_record(record)
    if he is None:
        return {}
    chunks, length, layers = he
    before = state_by_layer(model, set(layers))
    flat = PackedDecryptor(secret_context(node, sim_key_dir)).decrypt(chunks, length)
    decrypted = unflatten_like(flat, before)  # packed in model order
    load_arrays(model, decrypted)
    now, then = layer_vectors(decrypted, layers), layer_vectors(before, layers)
    return {layer: rms_change(now[layer], then[layer]) for layer in layers}


def encrypted_layers_record(arrays: "OrderedDict[str, np.ndarray]", layers: list[str], node: NodeConfig,
                            sim_key_dir: str) -> ConfigRecord:
    """The ``he`` record of ``arrays`` (parameters of ``layers``, in model order) packed into CKKS vectors."""
    flat = flatten_layers(arrays)
    chunks = PackedEncryptor(secret_context(node, sim_key_dir)).encrypt(flat)
    return he_record(chunks, flat.size, layer_order(layers, set(layers)))
