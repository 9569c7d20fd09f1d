"""One-bit convolutions and the spiking pyramid, against computations written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.spiking import BinaryConv1d, SpikingPyramid, binarise


def test_binary_conv_uses_scaled_signs_of_its_latent_weights():
    torch.manual_seed(0)
    conv = BinaryConv1d(3, 4, 5, padding=2)
    with torch.no_grad():
        conv.weight[0, 0, 0] = 0.0  # sign(0) counts as +1
    w = conv.weight.detach()
    alpha = w.abs().mean(dim=(1, 2))
    by_hand = torch.where(w >= 0, 1.0, -1.0) * alpha[:, None, None]
    x = torch.randn(2, 3, 20)
    assert torch.allclose(conv(x), F.conv1d(x, by_hand, conv.bias, padding=2), atol=1e-6)
    assert torch.equal(binarise(w)[0, 0, 0], alpha[0])
    for o in range(4):  # two values per output channel: +alpha_o and -alpha_o
        assert torch.allclose(binarise(w)[o].abs(), alpha[o].expand(3, 5))


def test_latent_weights_get_the_clipped_straight_through_gradient():
    torch.manual_seed(1)
    conv = BinaryConv1d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight[0, 0] = torch.tensor([1.5, -2.0, 0.3])  # two latent weights beyond the clip
    x, target = torch.randn(4, 2, 10), torch.randn(4, 3, 10)
    ((conv(x) - target) ** 2).sum().backward()
    w_b = binarise(conv.weight.detach()).requires_grad_(True)
    ((F.conv1d(x, w_b, conv.bias.detach(), padding=1) - target) ** 2).sum().backward()
    expected = w_b.grad * (conv.weight.detach().abs() <= 1)
    assert torch.allclose(conv.weight.grad, expected, atol=1e-5)
    assert conv.weight.grad[0, 0, 0] == 0 and conv.weight.grad[0, 0, 1] == 0 and conv.weight.grad[0, 0, 2] != 0


def test_the_neurons_follow_leaky_integrate_and_fire_with_reset_by_subtraction():
    pyramid = SpikingPyramid(4, channels=(4, 4, 4), num_steps=1, beta=0.8)
    neuron = pyramid.stage1.neuron
    current = torch.full((1, 1), 0.45)
    mem, spikes = torch.zeros(1, 1), []
    u, s_prev, by_hand = 0.0, 0.0, []
    for _ in range(12):
        spike, mem = neuron(current, mem)
        spikes.append(int(spike.item()))
        u = 0.8 * u + 0.45 - s_prev * 1.0  # U[t] = beta U[t-1] + I - S[t-1] theta
        s_prev = float(u > 1.0)
        by_hand.append(int(s_prev))
        assert mem.item() == pytest.approx(u, abs=1e-6)
    assert spikes == by_hand and sum(spikes) >= 2


def test_pyramid_gives_firing_rates_counts_its_spikes_and_trains_its_latent_weights():
    torch.manual_seed(2)
    pyramid = SpikingPyramid(12, num_steps=3)
    x = torch.randn(5, 12, 1000) * 2
    rates = pyramid(x)
    assert rates.shape == (5, 32) and bool(((rates >= 0) & (rates <= 1)).all())
    assert 0 < pyramid.spikes_per_sample < 3 * (16 * 1000 + 32 * 250 + 32 * 63)
    rates.sum().backward()
    for stage in pyramid.stages:
        assert stage.conv.weight.grad is not None and stage.conv.weight.grad.abs().sum() > 0  # through the surrogate
    # deployed size: one bit per convolution weight instead of 32
    conv_weights = sum(stage.conv.weight.numel() for stage in pyramid.stages)
    assert pyramid.deployed_bits() < 32 * sum(p.numel() for p in pyramid.parameters())
    assert pyramid.deployed_bits() >= conv_weights


@pytest.mark.parametrize("kwargs, message", [({"num_steps": 0}, "num_steps"), ({"beta": 1.0}, "beta"),
                                             ({"channels": (8, 8)}, "three stages")])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpikingPyramid(12, **kwargs)


def test_ablations_keep_real_weights_or_use_relu_in_one_step():
    torch.manual_seed(3)
    x = torch.randn(2, 12, 200)
    real = SpikingPyramid(12, binary=False)
    assert all(type(stage.conv) is torch.nn.Conv1d for stage in real.stages)
    assert real.deployed_bits() == 32 * sum(p.numel() for p in real.parameters())
    relu = SpikingPyramid(12, spiking=False, num_steps=4)
    rates = relu(x)
    assert relu.spikes_per_sample == 0.0
    h = x
    for stage in relu.stages:  # by hand: conv -> norm -> ReLU -> pool, once
        h = F.max_pool1d(F.relu(stage.norm(stage.conv(h))), stage.pool)
    assert torch.allclose(rates, h.mean(dim=-1), atol=1e-6)
