"""Checks on train replies before they reach aggregation: a bad reply is dropped, never trusted.

A reply is rejected (with a reason naming the node) when it is an error, lacks a record,
carries parameters with unexpected names, shapes or non-finite values, an example count
that is not a positive integer, a DP accuracy outside [0, 1], or ciphertext chunks that do
not deserialize to CKKS vectors of the server's public context.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from common.wire import from_array_record, read_he_record


class ReplyRejected(ValueError):
    """One reply cannot be used; the message says why."""


class RoundFailed(RuntimeError):
    """Too few usable replies to go on; the message names the failing nodes and their reasons."""


_SIMULATION_REASON = "occurred. Message: "  # flwr's ClientAppException text, wrapped by Ray in simulation
_DEPLOYMENT_REASON = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", re.S)


def client_failure_reason(reason: str) -> str:
    """The one-line cause inside a Flower error reply's ``reason``.

    Flower writes ``"<class 'pkg.ErrorType'>:<'message'>"`` for a ClientApp that raised; in simulation
    the message is a Ray traceback ending in ``...occurred. Message: message``. Multi-line messages are
    joined with '; '.
    """
    text = reason.strip()
    if _SIMULATION_REASON in text:
        text = text.rsplit(_SIMULATION_REASON, 1)[1].removesuffix("'>")
    elif match := _DEPLOYMENT_REASON.fullmatch(text):
        text = f"{match[1]}: {match[2]}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or "no reason given"


def describe_failures(failures: list[tuple[int | None, str]]) -> str:
    """'nodes 1, 2 failed: reason; node 3 failed: other reason', nodes grouped by identical reason."""
    by_reason: dict[str, list[str]] = {}
    for node, reason in failures:
        by_reason.setdefault(reason, []).append(str(node))
    return "; ".join(f"{'nodes' if len(nodes) > 1 else 'node'} {', '.join(nodes)} failed: {reason}"
                     for reason, nodes in by_reason.items())


@dataclass
class TrainReply:
    """The parts of a valid train reply the strategy aggregates."""

    node_id: int
    arrays: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]
    chunks: list[bytes] | None


def parse_train_reply(
    msg: Message,
    expected_shapes: Mapping[str, tuple[int, ...]],
    needs_dp_accuracy: bool,
    expected_chunks: int,
    check_chunks: Callable[[list[bytes]], object] | None,
    node: int | None = None,
    update_dp: str = "none",
) -> TrainReply:
    """Validate one train reply; raise ``ReplyRejected`` naming what is wrong (and ``node``, the sender)."""
    node = msg.metadata.src_node_id if node is None else node
    if msg.has_error():
        raise ReplyRejected(f"node {node} replied with an error: {client_failure_reason(msg.error.reason)}")
    content = msg.content
    array_records = [k for k, v in content.items() if isinstance(v, ArrayRecord)]
    metric_record = content.get("metrics")
    if not isinstance(metric_record, MetricRecord):
        raise ReplyRejected(f"node {node} sent no 'metrics' MetricRecord")
    if "arrays" not in array_records:
        raise ReplyRejected(f"node {node} sent no 'arrays' ArrayRecord")
    try:
        arrays = from_array_record(content["arrays"])
    except Exception as err:  # a malformed array buffer
        raise ReplyRejected(f"node {node} sent arrays that do not decode: {err}") from None
    if set(arrays) != set(expected_shapes):
        missing = sorted(set(expected_shapes) - set(arrays))
        extra = sorted(set(arrays) - set(expected_shapes))
        raise ReplyRejected(f"node {node} sent parameters {sorted(arrays)}; missing {missing}, unexpected {extra}")
    for name, value in arrays.items():
        if tuple(value.shape) != tuple(expected_shapes[name]):
            raise ReplyRejected(f"node {node}: parameter '{name}' has shape {tuple(value.shape)}, "
                                f"expected {tuple(expected_shapes[name])}")
        if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
            raise ReplyRejected(f"node {node}: parameter '{name}' is not a finite float array")
    metrics = dict(metric_record)
    n = metrics.get("num-examples")
    if not isinstance(n, int) or n <= 0:
        raise ReplyRejected(f"node {node}: 'num-examples' is {n!r}, expected a positive int")
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ReplyRejected(f"node {node}: metric '{key}' is {value!r}, expected a finite number")
    if needs_dp_accuracy:
        acc = metrics.get("dp-accuracy")
        if acc is None or not 0.0 <= float(acc) <= 1.0:
            raise ReplyRejected(f"node {node}: 'dp-accuracy' is {acc!r}, expected a number in [0, 1]")
    check_update_dp_metrics(metrics, update_dp, node)
    chunks = None
    if expected_chunks:
        he = content.get("he")
        if not isinstance(he, ConfigRecord):
            raise ReplyRejected(f"node {node} sent no 'he' ConfigRecord with the encrypted layers")
        try:
            parsed = read_he_record(he)
        except ValueError as err:
            raise ReplyRejected(f"node {node}: {err}") from None
        chunks = parsed[0]
        if len(chunks) != expected_chunks:
            raise ReplyRejected(f"node {node} sent {len(chunks)} ciphertext chunks, expected {expected_chunks}")
        if check_chunks is not None:
            try:
                check_chunks(chunks)
            except ValueError as err:
                raise ReplyRejected(f"node {node}: ciphertexts rejected: {err}") from None
    return TrainReply(node_id=node, arrays=dict(arrays), num_examples=n,
                      metrics={k: float(v) for k, v in metrics.items()}, chunks=chunks)


def check_update_dp_metrics(metrics: Mapping[str, object], update_dp: str, node: int | None) -> None:
    """DP-SGD: the sample rate in (0, 1] and the whole steps >= 0 that the ledger composes."""
    if update_dp == "example":
        rate, steps = metrics.get("update-dp-sample-rate"), metrics.get("update-dp-steps")
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ReplyRejected(f"node {node}: 'update-dp-sample-rate' is {rate!r}, expected a number in (0, 1]")
        if not isinstance(steps, int) or steps < 0:
            raise ReplyRejected(f"node {node}: 'update-dp-steps' is {steps!r}, expected an integer >= 0")
