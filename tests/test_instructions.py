"""Client and server apart: the ClientApp loads no server code and follows the message's named keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from common.config import RunConfig
from common.instructions import (DP_ACCURACY_EPSILON, ENCRYPTED_LAYERS, EVALUATE_SPLITS, FROZEN_LAYERS, SERVER_ROUND,
                                 EvaluateInstructions, InstructionError, TrainInstructions)
from common.model import build_model
from strategies.presets import encrypted_layers_for, options_for
from strategies.layerwise import LayerwiseStrategy

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("conv1", "conv2", "proj", "quantum", "fc")


@pytest.mark.parametrize("module", ["client_app.client_app", "client_app.supernode_launcher"])
def test_client_side_imports_no_server_module(module):
    code = (f"import sys, json, {module}\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('strategies', 'server_app'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_train_instructions_round_trip_and_name_what_is_wrong():
    sent = TrainInstructions(3, ("conv1",), ("quantum", "fc"), 0.5, "/tmp/keys", "clipped-loss", 2.0)
    assert TrainInstructions.from_config(sent.to_config(), LAYERS) == sent
    none = TrainInstructions(1)
    assert TrainInstructions.from_config(none.to_config(), LAYERS) == none  # [""] stands for no layers
    bad = {
        FROZEN_LAYERS: (["conv9"], r"key 'frozen-layers' has value \['conv9'\]; expected distinct layer names from"),
        ENCRYPTED_LAYERS: (["fc", "fc"], r"key 'encrypted-layers' has value \['fc', 'fc'\]; expected distinct"),
        DP_ACCURACY_EPSILON: (-1.0, r"key 'dp-accuracy-epsilon' has value -1.0; expected a number >= 0"),
        SERVER_ROUND: (0, r"key 'server-round' has value 0; expected a round >= 1"),
        "dp-score": ("auc", r"key 'dp-score' has value 'auc'; expected one of \['exact-match', 'hamming'"),
        "dp-loss-clip": (0.0, r"key 'dp-loss-clip' has value 0.0; expected a number > 0"),
    }
    for key, (value, message) in bad.items():
        config = sent.to_config()
        config[key] = value
        with pytest.raises(InstructionError, match=message):
            TrainInstructions.from_config(config, LAYERS)
    overlap = TrainInstructions(2, ("fc",), ("fc",)).to_config()
    with pytest.raises(InstructionError, match=r"layers \['fc'\] are both in 'frozen-layers' and 'encrypted-layers'"):
        TrainInstructions.from_config(overlap, LAYERS)
    with pytest.raises(InstructionError, match="key 'server-round' has value None"):
        TrainInstructions.from_config(ConfigRecord({}), LAYERS)


def test_evaluate_instructions_name_their_splits():
    sent = EvaluateInstructions(20, ("val", "test"), "")
    assert EvaluateInstructions.from_config(sent.to_config()) == sent
    config = sent.to_config()
    config[EVALUATE_SPLITS] = ["train"]
    with pytest.raises(InstructionError, match=r"key 'evaluate-splits' has value \['train'\]; expected distinct split"):
        EvaluateInstructions.from_config(config)


@pytest.mark.parametrize("strategy, epsilon", [("adeptheq", 0.7), ("fedavg", 0.0), ("fhe-fedqnn", 0.0)])
def test_the_server_decides_packing_and_the_accuracy_release(strategy, epsilon):
    cfg = RunConfig.from_flower({"strategy": strategy, "dp-epsilon": 0.7})
    model = build_model(cfg)
    layers = model.layer_names()
    initial = {name: p.detach().numpy() for name, p in model.state_dict().items()}
    options = options_for(cfg, layers)
    strategy_ = LayerwiseStrategy(options, layers, initial, frozenset({"quantum"}),
                                  aggregator_factory=(lambda: None) if options.encrypted_layers else None)
    strategy_.frozen = {"conv1"}
    orders = TrainInstructions.from_config(strategy_.train_instructions(4).to_config(), layers)
    assert orders.dp_accuracy_epsilon == epsilon and orders.frozen_layers == ("conv1",)
    expected = [name for name in layers if name in encrypted_layers_for(cfg, layers) and name != "conv1"]
    assert list(orders.encrypted_layers) == expected


def test_split_metrics_travel_with_their_prefix_and_come_back_without_it():
    from common.instructions import metrics_of_split, split_report_metrics

    metrics = {**split_report_metrics("val", {"macro_auc": np.float32(0.75), "confusion_matrix": [1, 2]}),
               **split_report_metrics("test", {"accuracy": 0.5}), "delta-rms-fc": 0.1}
    assert metrics == {"val-macro-auc": 0.75, "val-confusion-matrix": [1, 2], "test-accuracy": 0.5, "delta-rms-fc": 0.1}
    assert type(metrics["val-macro-auc"]) is float  # a MetricRecord takes Python floats, not numpy scalars
    assert metrics_of_split(metrics, "val") == {"macro-auc": 0.75, "confusion-matrix": [1, 2]}
    assert metrics_of_split(metrics, "test") == {"accuracy": 0.5} and metrics_of_split({}, "test") == {}
