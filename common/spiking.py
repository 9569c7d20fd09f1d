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

``SpikingPyramid``: the window (B, C, T) is presented for ``num_steps`` steps as a constant current (direct
encoding). Stage s is BinaryConv1d (kernel k_s, padding k_s // 2) -> GroupNorm -> LIF -> max-pool by p_s over
time (a pool of spikes is an OR), so the three stages see the signal at T, T/p_1 and T/(p_1 p_2). Stage s + 1
takes stage s's spikes of the same step. The output is each last-stage channel's firing rate, averaged over
steps and time: (B, C_3) in [0, 1]. ``spikes_per_sample`` of the last forward pass counts every spike of every
stage (the sparsity the note's energy argument rests on).
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


class SpikingPyramid(nn.Module):
    """(B, C, T) -> last-stage firing rates (B, channels[-1]) through three binarised spiking stages."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int] = (16, 32, 32),
                 kernels: tuple[int, int, int] = (7, 5, 3), pools: tuple[int, int, int] = (4, 4, 2),
                 num_steps: int = 4, beta: float = 0.9, threshold: float = 1.0, surrogate_slope: float = 25.0) -> None:
        super().__init__()
        import snntorch as snn  # imported here: only the spiking model needs it
        from snntorch import surrogate

        if not (len(channels) == len(kernels) == len(pools) == 3):
            raise ValueError(f"three stages expected; got channels {channels}, kernels {kernels}, pools {pools}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must lie in (0, 1), got {beta!r}")
        self.num_steps, self.pools = num_steps, tuple(pools)
        widths = (in_channels, *channels)
        self.convs = nn.ModuleList(BinaryConv1d(widths[s], widths[s + 1], kernels[s], padding=kernels[s] // 2)
                                   for s in range(3))
        # GroupNorm, as in the Conv1D extractor: no running statistics to average across non-IID clients.
        self.norms = nn.ModuleList(nn.GroupNorm(4, c) for c in channels)
        self.neurons = nn.ModuleList(
            snn.Leaky(beta=beta, threshold=threshold, spike_grad=surrogate.fast_sigmoid(slope=surrogate_slope))
            for _ in range(3))
        self.out_channels = channels[-1]
        self.spikes_per_sample: float = 0.0

    def forward(self, x: Tensor) -> Tensor:
        currents_1 = self.norms[0](self.convs[0](x))  # the input is constant over steps: its current too
        membranes = [None, None, None]
        rate, spikes = 0.0, torch.zeros((), device=x.device)
        for _ in range(self.num_steps):
            h = currents_1
            for s in range(3):
                if s > 0:
                    h = self.norms[s](self.convs[s](h))
                if membranes[s] is None:
                    membranes[s] = torch.zeros_like(h)
                spike, membranes[s] = self.neurons[s](h, membranes[s])
                spikes = spikes + spike.detach().sum()
                h = F.max_pool1d(spike, self.pools[s]) if self.pools[s] > 1 else spike
            rate = rate + h.mean(dim=-1)
        self.spikes_per_sample = float(spikes) / x.shape[0]
        return rate / self.num_steps

    def deployed_bits(self) -> int:
        """One-bit convolutions plus the float32 GroupNorm parameters."""
        return sum(c.deployed_bits() for c in self.convs) + 32 * sum(p.numel() for p in self.norms.parameters())
