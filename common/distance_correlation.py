"""Sample distance correlation (Szekely, Rizzo and Bakirov, Ann. Statist. 2007), differentiable in torch.

For n paired samples x_i (p values) and y_i (q values): a_ij = ||x_i - x_j||, double-centred
A_ij = a_ij - mean_j a_ij - mean_i a_ij + mean_ij a_ij, likewise B from y. Then (V-statistics)
dCov^2 = mean_ij A_ij B_ij, dVar_x^2 = mean_ij A_ij^2, and

    dCor(x, y) = sqrt( dCov^2 / sqrt(dVar_x^2 * dVar_y^2) ),  0 <= dCor <= 1,

0 when x and y are independent (in the limit), 1 when one is a similarity map of the other. It is
what ``dcor.distance_correlation`` computes (checked in ``tests/test_distance_correlation.py``), and
what NoPeek (Vepakomma et al., 2020) adds to a split-learning client's loss so its activations say
less about its inputs.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def _centred_distances(z: torch.Tensor) -> torch.Tensor:
    flat = z.reshape(z.shape[0], -1).to(torch.float64)
    squared = (flat[:, None, :] - flat[None, :, :]).pow(2).sum(-1)
    distances = torch.sqrt(squared + EPS) - EPS ** 0.5  # smooth at 0 (the diagonal): finite gradients
    return distances - distances.mean(0, keepdim=True) - distances.mean(1, keepdim=True) + distances.mean()


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dCor of the rows of ``x`` and ``y`` (any trailing shape, flattened per row); a float64 scalar."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"distance correlation needs the same number (>= 2) of rows, got {x.shape[0]} and "
                         f"{y.shape[0]}")
    a, b = _centred_distances(x), _centred_distances(y)
    dcov2 = (a * b).mean()
    denominator = torch.sqrt((a * a).mean() * (b * b).mean())
    if float(denominator.detach()) <= 0:
        return torch.zeros((), dtype=torch.float64)
    return torch.sqrt(torch.clamp(dcov2 / denominator, min=0.0))


def activation_rms(a: torch.Tensor) -> torch.Tensor:
    """Each example's root-mean-square activation, shaped to broadcast over its values (noise scales)."""
    flat = a.reshape(a.shape[0], -1)
    rms = flat.pow(2).mean(dim=1).sqrt()
    return rms.reshape(-1, *([1] * (a.dim() - 1))).detach()
