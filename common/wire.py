"""What travels between ServerApp and ClientApp, and how many bytes it takes.

A train or evaluate message holds:
- ``arrays`` (ArrayRecord): the plaintext parameters of the layers that are neither
  encrypted nor frozen, keyed by parameter name;
- ``he`` (ConfigRecord): ``chunks`` (list of serialized CKKS vectors, the encrypted layers
  packed in model order), ``length`` (number of packed values) and ``layers`` (which);
- ``config`` (ConfigRecord): round number, frozen layers, run folder, evaluation split;
- ``metrics`` (MetricRecord, replies only).
Only numbers, strings and bytes cross the wire: nothing is pickled.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def serialized_size(content: RecordDict) -> int:
    """Bytes of every object Flower serializes for this content (records, arrays, chunks)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    record = ArrayRecord()
    for name, value in arrays.items():
        record[name] = Array(np.ascontiguousarray(value))
    return record


def from_array_record(record: ArrayRecord) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((name, array.numpy()) for name, array in record.items())


def he_record(chunks: list[bytes], length: int, layers: list[str]) -> ConfigRecord:
    return ConfigRecord({"chunks": list(chunks), "length": int(length), "layers": list(layers)})


def read_he_record(record: ConfigRecord | None) -> tuple[list[bytes], int, list[str]] | None:
    """Chunks, length and packed layers of an ``he`` record, checking the types a peer could get wrong."""
    if record is None:
        return None
    chunks = record.get("chunks")
    length = record.get("length")
    if not isinstance(chunks, list) or not all(isinstance(c, bytes) for c in chunks):
        raise ValueError("'he.chunks' must be a list of bytes (serialized CKKS vectors)")
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"'he.length' must be a non-negative int, got {length!r}")
    layers = record.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise ValueError(f"'he.layers' must be a list of layer names, got {layers!r}")
    return chunks, length, layers


def layer_order(all_layers: list[str], selected: set[str]) -> list[str]:
    """Selected layers in model order: both sides pack encrypted layers in this order."""
    return [name for name in all_layers if name in selected]
