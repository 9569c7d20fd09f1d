"""The gated and green models against their formulas written out by hand, and the training options they use."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.config import ConfigError, RunConfig
from common.model import QUANTUM_LAYERS, build_model, count_parameters
from common.spiking import BinaryConv1d, binarise
from common.task import train_local
from strategies.freezing import EMALayerFreezer

ABLATIONS = [{}, {"green_spiking": False}, {"green_binary": False}, {"green_entanglement": "fixed"},
             {"green_paths": "classical"}, {"green_paths": "quantum"}]


def window(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 12, 1000, generator=torch.Generator().manual_seed(seed))


def test_gated_model_is_the_gate_weighted_sum_of_the_classical_and_quantum_heads():
    model = build_model(RunConfig(model="gated"))
    with torch.no_grad():
        model.gate.logit.fill_(0.7)
    x = window()
    z = model.features(x)
    classical = model.classical_fc(torch.tanh(z))
    quantum = model.fc(model.quantum(z))
    alpha = 1 / (1 + math.exp(-0.7))
    assert model.fusion_alpha == pytest.approx(alpha)
    assert torch.allclose(model(x), (1 - alpha) * classical + alpha * quantum, atol=1e-6)
    assert model.layer_names() == ["conv1", "conv2", "conv3", "conv4", "proj", "quantum", "fc", "classical_fc", "gate"]


def test_green_model_computes_the_note_formula_with_one_bit_weights_and_stays_under_50k_parameters():
    model = build_model(RunConfig(model="green"))
    assert model.layer_names() == ["stage1", "stage2", "stage3", "classical_fc", "proj", "quantum", "fc", "gate"]
    assert count_parameters(model) < 50_000
    assert (model.quantum.n_qubits, model.quantum.n_layers) == (8, 3)
    x = window()
    out = model(x)
    rates = model.pooled(x)
    assert bool(((rates >= 0) & (rates <= 1)).all()) and model.spikes_per_sample > 0
    alpha = 0.5
    by_hand = (1 - alpha) * model.classical_fc(rates) + alpha * model.fc(model.quantum(model.proj(rates)))
    assert torch.allclose(out, by_hand, atol=1e-6)
    assert model.quantum.strengths.shape == (3, 28)  # a strength per qubit pair, per input
    # The convolutions see sign(W) * mean|W| per output channel; the latent weights are what state_dict holds.
    conv = model.stage2.conv
    assert isinstance(conv, BinaryConv1d)
    w = conv.weight.detach()
    assert torch.equal(binarise(w), torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(dim=(1, 2), keepdim=True))
    # deployed: one bit per convolution weight, so far fewer bits than 32 per parameter
    assert model.deployed_bits() < 32 * count_parameters(model) / 2


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()) or "full")
def test_every_ablation_trains_its_parameters(ablation):
    cfg = RunConfig(model="green", **ablation)
    model = build_model(cfg)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (8, 12, 1000)).astype(np.float32)
    y = (rng.random((8, 5)) < 0.3).astype(np.float32)
    result = train_local(model, x, y, epochs=1, batch_size=8, learning_rate=1e-2, seed=0, task="multilabel",
                         optimizer="adamw", weight_decay=1e-4, lr_schedule="cosine-restarts")
    assert math.isfinite(result["train_loss"])
    unmoved = [name for name, p in model.named_parameters() if torch.equal(p.detach(), before[name])]
    assert unmoved == []
    paths = cfg.green_paths
    assert hasattr(model, "gate") == (paths == "both") and (model.fusion_alpha is None) == (paths != "both")
    assert hasattr(model, "quantum") == (paths != "classical")
    if cfg.green_spiking:
        assert model.spikes_per_sample > 0
    else:
        assert model.spikes_per_sample == 0.0
    assert isinstance(model.stage1.conv, BinaryConv1d) == cfg.green_binary


def test_fixed_entanglement_has_no_attention_and_the_quantum_layer_never_freezes():
    fixed = build_model(RunConfig(model="green", green_entanglement="fixed"))
    assert not any("query" in name for name, _ in fixed.named_parameters())
    freezer = EMALayerFreezer(alpha=0.0, threshold=1.0, never_freeze=QUANTUM_LAYERS)
    layers = {layer: np.zeros(3) for layer in fixed.layer_names()}  # nothing changes: everything could freeze
    freezer.observe(layers)
    freezer.observe(layers)
    assert "quantum" not in freezer.frozen and {"stage1", "stage2", "stage3", "gate"} <= freezer.frozen


def test_cosine_restarts_runs_one_cosine_per_call_and_adamw_decays_weights_decoupled():
    rates = []

    class Recorder(torch.optim.AdamW):
        def step(self, closure=None):
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    model = torch.nn.Linear(4, 2)
    x = np.zeros((10, 4), np.float32)
    y = np.zeros((10, 2), np.float32)
    original = torch.optim.AdamW
    torch.optim.AdamW = Recorder
    try:
        train_local(model, x, y, epochs=2, batch_size=4, learning_rate=0.1, seed=0, task="multilabel",
                    optimizer="adamw", weight_decay=0.5, lr_schedule="cosine-restarts")
    finally:
        torch.optim.AdamW = original
    steps = 6  # 2 epochs x 3 batches
    assert rates == pytest.approx([0.05 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)])
    # zero inputs and targets: the bias gets gradients, the weight only decoupled decay w <- w (1 - lr wd)
    fresh = torch.nn.Linear(4, 2)
    with torch.no_grad():
        fresh.weight.copy_(model.weight)  # compare one step by hand on a copy
    w0 = fresh.weight.detach().clone()
    train_local(fresh, x[:4], y[:4], epochs=1, batch_size=4, learning_rate=0.1, seed=0, task="multilabel",
                optimizer="adamw", weight_decay=0.5)
    assert torch.allclose(fresh.weight.detach(), w0 * (1 - 0.1 * 0.5), atol=1e-7)


def test_mixed_precision_is_ignored_on_the_cpu():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = (rng.random((8, 2)) < 0.5).astype(np.float32)
    for model, amp in ((a, False), (b, True)):
        train_local(model, x, y, epochs=2, batch_size=4, learning_rate=0.1, seed=0, task="multilabel",
                    mixed_precision=amp)
    assert torch.equal(a.weight, b.weight)


@pytest.mark.parametrize("update, fragment", [
    ({"model": "hybrid", "green_binary": False}, "green-binary at their defaults with model 'hybrid'"),
    ({"model": "green", "mode": "split"}, "'stage3' with model 'green'"),
    ({"model": "gated", "mode": "split", "split_cut": "stage3"}, "one of 'conv2', 'conv3', 'conv4'"),
    ({"model": "gated", "mode": "split", "split_variant": "u-shaped"}, "'plain' with model 'gated'"),
    ({"model": "green", "green_paths": "classical", "mode": "split", "split_cut": "stage3"}, "green-paths"),
    ({"optimizer": "lion"}, "'adam' or 'adamw'"),
])
def test_model_choices_are_checked_against_each_other(update, fragment):
    raw = {k.replace("_", "-"): v for k, v in update.items()}
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_flower(raw)
    assert RunConfig(model="green", mode="split", split_cut="stage3").split_cut == "stage3"


@pytest.mark.parametrize("model", ["gated", "green"])
def test_every_parameter_travels_through_a_message_and_loads_back(model):
    from common.model import load_arrays, state_by_layer
    from common.wire import from_array_record, to_array_record

    sender, receiver = build_model(RunConfig(model=model, seed=1)), build_model(RunConfig(model=model, seed=2))
    arrays = from_array_record(to_array_record(state_by_layer(sender)))
    assert set(arrays) == set(receiver.state_dict())  # the spiking neurons' constants stay off the wire
    load_arrays(receiver, arrays)
    for name, value in sender.state_dict().items():
        assert torch.equal(receiver.state_dict()[name], value), name
