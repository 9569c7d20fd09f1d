"""Model selection: the best validation round is kept (as the server holds it) and scored by a client."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.ckks import PackedDecryptor
from common.config import ConfigError, RunConfig
from common.wire import from_array_record, read_he_record
from strategies.model_selection import BestRoundSelector
from tests.test_strategy import NODES, FakeGrid, client_reply, contexts, make_strategy, perturbed, task_identity  # noqa: F401


def test_selector_keeps_the_first_best_round_and_snapshots_only_then():
    selector = BestRoundSelector("macro-auc")
    taken = []
    for rnd, auc in enumerate([0.6, math.nan, 0.8, 0.8, 0.7], start=1):
        selector.observe(rnd, {"macro-auc": auc}, lambda r=rnd: taken.append(r) or f"model {r}")
    assert selector.best.round == 3 and selector.best.state == "model 3" and taken == [1, 3]
    lowest = BestRoundSelector("loss")
    for rnd, loss in enumerate([0.5, 0.3, 0.4], start=1):
        lowest.observe(rnd, {"loss": loss}, lambda: None)
    assert lowest.best.round == 2 and lowest.best.score == pytest.approx(0.3)
    with pytest.raises(ValueError, match="expected one of macro-auc"):
        BestRoundSelector("test-auc")


def test_selection_metric_must_be_one_the_task_reports():
    assert RunConfig.from_flower({"dataset": "wesad", "selection-metric": "balanced-accuracy"}).selection_metric \
        == "balanced-accuracy"
    with pytest.raises(ConfigError, match="'selection-metric' has value 'balanced-accuracy'; expected a validation "
                                          "metric the multilabel task reports"):
        RunConfig.from_flower({"selection-metric": "balanced-accuracy"})


class ScoringGrid(FakeGrid):
    """Answers the final evaluate message as an evaluator would, keeping what it was sent."""

    def __init__(self):
        self.sent = []

    def send_and_receive(self, messages, timeout=None):
        self.sent += list(messages)
        return [Message(RecordDict({"metrics": MetricRecord({"val-macro-auc": 0.9, "test-macro-auc": 0.85,
                                                             "test-num-examples": 7})}), reply_to=m)
                for m in messages]


def _rounds(strategy, initial, secret, aucs):
    """Train rounds whose global models differ; the evaluator reports ``aucs`` on validation."""
    globals_ = []
    for rnd, auc in enumerate(aucs, start=1):
        requests = list(strategy.configure_train(rnd, ArrayRecord(), ConfigRecord(), FakeGrid()))
        replies = [client_reply(strategy, m, perturbed(initial, rnd * 10 + i), 20, secret, 0.8)
                   for i, m in enumerate(requests)]
        strategy.aggregate_train(rnd, replies)
        globals_.append(OrderedDict((k, v.copy()) for k, v in strategy.global_plain.items()))
        ev = list(strategy.configure_evaluate(rnd, ArrayRecord(), ConfigRecord(), FakeGrid()))[0]
        metrics = {"val-macro-auc": auc, "val-num-examples": 9}
        if rnd == len(aucs):
            metrics |= {"test-macro-auc": 0.5, "test-num-examples": 7}
        strategy.aggregate_evaluate(rnd, [Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=ev)])
    return globals_


def test_the_chosen_round_is_sent_whole_and_encrypted_to_a_client_for_scoring(contexts):  # noqa: F811
    secret = contexts[0]
    strategy, initial = make_strategy("adeptheq", contexts, rounds=4)
    strategy.selector = BestRoundSelector("macro-auc")
    strategy.opt.freezing = False
    globals_ = _rounds(strategy, initial, secret, [0.70, 0.90, 0.80, 0.75])
    chosen = strategy.selected_model()
    assert strategy.selector.best.round == 2
    grid = ScoringGrid()
    selection = strategy.evaluate_selected(grid, timeout=10)
    assert selection == {"metric": "macro-auc", "round": 2, "validation": {"macro-auc": 0.9},
                         "test": {"macro-auc": 0.85, "num-examples": 7}}
    (message,) = grid.sent
    assert message.metadata.message_type == "evaluate" and message.metadata.dst_node_id in NODES
    assert message.content["config"]["evaluate-splits"] == ["val", "test"]
    sent = from_array_record(message.content["arrays"])
    assert sorted(sent) == sorted(globals_[1])  # every plaintext layer of round 2, none left to node state
    for name, value in globals_[1].items():
        np.testing.assert_array_equal(sent[name], value)
        assert not np.array_equal(globals_[3][name], value)  # and not the last round's
    chunks, length, layers = read_he_record(message.content["he"])
    assert layers == ["fc"] and chunks == chosen["encrypted"]  # round 2's ciphertexts, kept unopened
    assert PackedDecryptor(secret).decrypt(chunks, length).shape == (length,)


def test_when_the_last_round_is_best_its_test_figures_are_reused(contexts):  # noqa: F811
    strategy, initial = make_strategy("fedavg", contexts, rounds=3)
    strategy.selector = BestRoundSelector("macro-auc")
    _rounds(strategy, initial, contexts[0], [0.6, 0.7, 0.8])
    grid = ScoringGrid()
    selection = strategy.evaluate_selected(grid, timeout=10)
    assert grid.sent == [] and selection["round"] == 3 and selection["test"]["macro-auc"] == 0.5
