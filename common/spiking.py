"""The design note's path A: a three-stage temporal pyramid of one-bit convolutions and spiking neurons.

``BinaryConv1d`` (one-bit weights, XNOR-Net scaling; Rastegari et al., ECCV 2016). The layer keeps latent real
weights W (what the strategies aggregate and what ``state_dict`` holds) and convolves with

    W_b[o] = alpha_o * sign(W[o]),   alpha_o = mean(|W[o]|),   sign(0) = +1,

so a deployed layer stores one bit per weight plus one float per output channel. Gradient: the clipped
straight-through estimator of BinaryConnect (Courbariaux et al., NeurIPS 2015), dL/dW = dL/dW_b * 1{|W| <= 1}
(alpha_o is treated as a constant of the step). The bias stays real.

Spiking neurons: leaky integrate-and-fire from ``snntorch.Leaky`` with reset by subtraction,

    U[t] = beta U[t-1] + I[t] - S[t-1] theta,    S[t] = H(U[t] - theta),

and the fast-sigmoid surrogate gradient ``dS/dU = 1 / (1 + k |U - theta|)^2`` (snntorch's ``fast_sigmoid``).

``SpikingPyramid`` (stages ``PyramidStage``, run by ``pyramid_forward``): the window (B, C, T) is presented
for ``num_steps`` steps as a constant current (direct encoding). Stage s is BinaryConv1d (kernel k_s, padding
k_s // 2) -> GroupNorm -> LIF -> max-pool by p_s over time (a pool of spikes is an OR), so the three stages
see the signal at T, T/p_1 and T/(p_1 p_2). Stage s + 1 takes stage s's spikes of the same step. The output is
each last-stage channel's firing rate, averaged over steps and time: (B, C_3) in [0, 1]. ``spikes_per_sample``
of the last forward pass counts every spike of every stage (the sparsity the note's energy argument rests on).
For ablations a stage can keep real weights (``binary=False``: ``nn.Conv1d``) or use ReLU instead of LIF
neurons (``spiking=False``; then one step is run, since a stateless stage gives the same output at every step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _BinariseWeights(torch.autograd.Function):
    """alpha_o * sign(W[o]) forward; the clipped straight-through gradient backward."""

    @staticmethod
    def forward(ctx, weight: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(weight)
        alpha = weight.abs().mean(dim=tuple(range(1, weight.ndim)), keepdim=True)
        return alpha * torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:  # noqa: D102
        (weight,) = ctx.saved_tensors
        return grad_out * (weight.abs() <= 1).to(grad_out.dtype)


def binarise(weight: Tensor) -> Tensor:
    """The one-bit weights a ``BinaryConv1d`` convolves with (see the module docstring)."""
    return _BinariseWeights.apply(weight)


class BinaryConv1d(nn.Conv1d):
    """``nn.Conv1d`` whose forward pass uses one-bit weights (``binarise``); the latent weights stay real."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, binarise(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def deployed_bits(self) -> int:
        """Bits a deployment stores: one per weight, 32 per channel scale and per bias value."""
        return self.weight.numel() + 32 * self.out_channels + (32 * self.bias.numel() if self.bias is not None else 0)


class PyramidStage(nn.Module):
    """One stage: convolution (one-bit or real) -> GroupNorm -> LIF neurons (or ReLU) -> max-pool over time."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, pool: int, *, spiking: bool = True,
                 binary: bool = True, beta: float = 0.9, threshold: float = 1.0, surrogate_slope: float = 25.0) -> None:
        super().__init__()
        conv = BinaryConv1d if binary else nn.Conv1d
        self.conv = conv(in_channels, out_channels, kernel, padding=kernel // 2)
        # GroupNorm, as in the Conv1D extractor: no running statistics to average across non-IID clients.
        self.norm = nn.GroupNorm(4, out_channels)
        self.pool = pool
        self.neuron = None
        if spiking:
            import snntorch as snn  # imported here: only the spiking model needs it
            from snntorch import surrogate

            self.neuron = snn.Leaky(beta=beta, threshold=threshold,
                                    spike_grad=surrogate.fast_sigmoid(slope=surrogate_slope))
            # beta, threshold and the reset constants are fixed by the configuration: keep them off the wire.
            self.neuron._non_persistent_buffers_set.update(self.neuron._buffers)

    def current(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))

    def fire(self, current: Tensor, membrane: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """(pooled output, new membrane, spike count): spikes of the LIF neurons, or ReLU of the current (no state,
        no spikes)."""
        if self.neuron is None:
            out, count = F.relu(current), torch.zeros((), device=current.device)
        else:
            out, membrane = self.neuron(current, torch.zeros_like(current) if membrane is None else membrane)
            count = out.detach().sum()
        return (F.max_pool1d(out, self.pool) if self.pool > 1 else out), membrane, count

    def deployed_bits(self) -> int:
        conv_bits = self.conv.deployed_bits() if isinstance(self.conv, BinaryConv1d) else \
            32 * sum(p.numel() for p in self.conv.parameters())
        return conv_bits + 32 * sum(p.numel() for p in self.norm.parameters())


def pyramid_stages(in_channels: int, channels: tuple[int, int, int] = (16, 32, 32),
                   kernels: tuple[int, int, int] = (7, 5, 3), pools: tuple[int, int, int] = (4, 4, 2), *,
                   spiking: bool = True, binary: bool = True, beta: float = 0.9, threshold: float = 1.0,
                   surrogate_slope: float = 25.0) -> list[PyramidStage]:
    """The three stages of the pyramid (module docstring), checked."""
    if not (len(channels) == len(kernels) == len(pools) == 3):
        raise ValueError(f"three stages expected; got channels {channels}, kernels {kernels}, pools {pools}")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must lie in (0, 1), got {beta!r}")
    widths = (in_channels, *channels)
    return [PyramidStage(widths[s], widths[s + 1], kernels[s], pools[s], spiking=spiking, binary=binary, beta=beta,
                         threshold=threshold, surrogate_slope=surrogate_slope) for s in range(3)]


def pyramid_forward(stages: list[PyramidStage], x: Tensor, num_steps: int) -> tuple[Tensor, float]:
    """(last-stage rates (B, C_3), spikes per sample) of the window x (B, C, T) presented for num_steps steps.

    Without spiking neurons the stages are stateless and every step gives the same output, so one step is run.
    """
    spiking = stages[0].neuron is not None
    steps = num_steps if spiking else 1
    first = stages[0].current(x)  # the input is constant over steps: its current too
    membranes: list[Tensor | None] = [None] * len(stages)
    rate, spikes = 0.0, torch.zeros((), device=x.device)
    for _ in range(steps):
        h = first
        for s, stage in enumerate(stages):
            current = h if s == 0 else stage.current(h)
            h, membranes[s], count = stage.fire(current, membranes[s])
            spikes = spikes + count
        rate = rate + h.mean(dim=-1)
    return rate / steps, float(spikes) / x.shape[0]


class SpikingPyramid(nn.Module):
    """(B, C, T) -> last-stage firing rates (B, channels[-1]) through three binarised spiking stages."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int] = (16, 32, 32),
                 kernels: tuple[int, int, int] = (7, 5, 3), pools: tuple[int, int, int] = (4, 4, 2),
                 num_steps: int = 4, beta: float = 0.9, threshold: float = 1.0, surrogate_slope: float = 25.0,
                 spiking: bool = True, binary: bool = True) -> None:
        super().__init__()
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        self.num_steps = num_steps
        self.stage1, self.stage2, self.stage3 = pyramid_stages(
            in_channels, channels, kernels, pools, spiking=spiking, binary=binary, beta=beta, threshold=threshold,
            surrogate_slope=surrogate_slope)
        self.out_channels = channels[-1]
        self.spikes_per_sample: float = 0.0

    @property
    def stages(self) -> list[PyramidStage]:
        return [self.stage1, self.stage2, self.stage3]

    def forward(self, x: Tensor) -> Tensor:
        rates, self.spikes_per_sample = pyramid_forward(self.stages, x, self.num_steps)
        return rates

    def deployed_bits(self) -> int:
        """One-bit convolutions plus the float32 GroupNorm parameters."""
        return sum(stage.deployed_bits() for stage in self.stages)
