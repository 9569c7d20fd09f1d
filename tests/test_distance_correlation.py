"""Our differentiable distance correlation equals the dcor package's, and its gradient is usable."""

from __future__ import annotations

import dcor
import numpy as np
import pytest
import torch

from common.distance_correlation import distance_correlation


@pytest.mark.parametrize("shape_x, shape_y", [((40, 3), (40, 1)), ((25, 12, 50), (25, 64)), ((10, 5), (10, 5))])
def test_equals_the_dcor_package(shape_x, shape_y):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape_x)
    width = int(np.prod(shape_y[1:]))
    y = np.tanh(x.reshape(len(x), -1)[:, :width].reshape(shape_y)) + 0.3 * rng.normal(size=shape_y)
    ours = float(distance_correlation(torch.as_tensor(x), torch.as_tensor(y)))
    reference = dcor.distance_correlation(x.reshape(len(x), -1), y.reshape(len(y), -1))
    assert ours == pytest.approx(reference, abs=1e-6)


def test_bounds_and_gradient():
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(30, 8)))
    assert float(distance_correlation(x, 3 * x + 1)) == pytest.approx(1.0, abs=1e-6)  # a similarity map
    independent = float(distance_correlation(x, torch.as_tensor(rng.normal(size=(30, 8)))))
    dependent = float(distance_correlation(x, x[:, :4] + 0.1 * torch.as_tensor(rng.normal(size=(30, 4)))))
    assert 0 <= independent < dependent < 1  # the V-statistic is biased up at n = 30, hence no absolute bound
    y = torch.tensor(rng.normal(size=(30, 4)), requires_grad=True)
    distance_correlation(x, y).backward()
    assert torch.isfinite(y.grad).all() and float(y.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="same number"):
        distance_correlation(x, x[:3])
