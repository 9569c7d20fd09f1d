"""Example-level DP-SGD (common.dp_sgd): per-example gradients of our own layers, the step it takes, its accountant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from common.dp_sgd import check_dp_sgd_model, opacus_epsilon, train_local_dp
from common.green_model import GreenNet
from common.model import ECGNet, state_by_layer
from common.task import loss_function


def _data(n: int = 6, classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 64)).astype(np.float32)
    y = (rng.random((n, classes)) < 0.4).astype(np.float32)
    return x, y


@pytest.mark.parametrize("head", ["hybrid", "gated", "classical"])
def test_opacus_per_example_gradients_equal_one_backward_per_example(head):
    torch.manual_seed(1)
    model = ECGNet(12, 5, head=head)
    x, y = (torch.as_tensor(a) for a in _data())
    loss_fn = loss_function("multilabel")
    expected = []
    for i in range(len(x)):  # the independent computation: autograd on each example alone
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters()})
    wrapped = GradSampleModule(model)
    model.zero_grad()
    # Opacus scales the backprops of a mean loss by the batch size: grad_sample is each example's own gradient
    loss_fn(wrapped(x), y).backward()
    for name, param in model.named_parameters():
        per_example = param.grad_sample
        assert per_example.shape == (len(x), *param.shape), name
        for i in range(len(x)):
            torch.testing.assert_close(per_example[i], expected[i][name], rtol=1e-4, atol=1e-6, msg=name)
    wrapped.remove_hooks()


def test_without_noise_and_clipping_a_full_batch_step_is_plain_gradient_descent():
    torch.manual_seed(2)
    x, y = _data(n=8)
    model, reference = ECGNet(12, 5), ECGNet(12, 5)
    reference.load_state_dict(model.state_dict())
    # batch >= N: Poisson rate 1, every example in the one step; a huge clip never binds
    result = train_local_dp(model, x, y, epochs=1, batch_size=8, learning_rate=0.1, task="multilabel",
                            noise_multiplier=0.0, max_grad_norm=1e9, optimizer="sgd")
    assert result["sample_rate"] == 1.0 and result["steps"] == 1
    loss_function("multilabel")(reference(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


def test_the_step_is_the_mean_of_per_example_clipped_gradients_and_frozen_layers_do_not_move():
    torch.manual_seed(3)
    x, y = (a.astype(np.float64) for a in _data(n=8))
    model = ECGNet(12, 5).double()  # float64: the step (~1e-4) is not lost in the weights' rounding
    frozen = ("conv1.", "quantum.")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clip, lr = 1e-3, 1.0
    loss_fn = loss_function("multilabel")
    expected = {n: torch.zeros_like(p) for n, p in before.items()}
    for i in range(len(x)):  # each gradient over the trained layers clipped to C (Opacus: C / (norm + 1e-6)), mean
        model.zero_grad()
        loss_fn(model(torch.as_tensor(x[i:i + 1])), torch.as_tensor(y[i:i + 1])).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if not n.startswith(frozen)}
        scale = min(1.0, clip / float(torch.sqrt(sum((g ** 2).sum() for g in grads.values()))))
        for n, g in grads.items():
            expected[n] -= lr * scale * g / len(x)
    train_local_dp(model, x, y, epochs=1, batch_size=8, learning_rate=lr, task="multilabel", noise_multiplier=0.0,
                   max_grad_norm=clip, optimizer="sgd", frozen_layers=frozenset({"conv1", "quantum"}))
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach() - before[name], expected[name], rtol=1e-4, atol=1e-10, msg=name)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if n.startswith(frozen))


def test_noise_has_the_dp_sgd_standard_deviation():
    torch.manual_seed(4)
    x, y = _data(n=8)
    model = ECGNet(12, 5)
    before = state_by_layer(model)
    sigma, clip, lr = 50.0, 1e-3, 1.0  # noise dominates: the step is ~ N(0, (sigma C / (q N))^2) per coordinate
    train_local_dp(model, x, y, epochs=1, batch_size=8, learning_rate=lr, task="multilabel",
                   noise_multiplier=sigma, max_grad_norm=clip, optimizer="sgd")
    after = state_by_layer(model)
    steps = np.concatenate([(after[n] - before[n]).ravel() for n in before])
    assert np.std(steps) == pytest.approx(lr * sigma * clip / 8, rel=0.05)


def test_accountant_history_spans_rounds_and_matches_opacus_published_value():
    x, y = _data(n=16)
    model = ECGNet(12, 5)
    first = train_local_dp(model, x, y, epochs=2, batch_size=4, learning_rate=1e-3, task="multilabel",
                           noise_multiplier=1.0, max_grad_norm=1.0)
    second = train_local_dp(model, x, y, epochs=1, batch_size=4, learning_rate=1e-3, task="multilabel",
                            noise_multiplier=1.0, max_grad_norm=1.0, accountant_history=first["accountant_history"])
    assert first["steps"] == 8 and second["steps"] == 4 and first["sample_rate"] == 0.25
    assert second["accountant_history"] == [[1.0, 0.25, 12]]  # Opacus merges equal mechanisms: 8 + 4 steps
    assert opacus_epsilon(second["accountant_history"], 1e-5) > opacus_epsilon(first["accountant_history"], 1e-5)
    # Opacus's own test (tests/accountants_test.py): sigma 1.5, q 0.04, 2250 steps, delta 1e-5
    assert opacus_epsilon([[1.5, 0.04, 2250]], 1e-5) == pytest.approx(7.32911117143, abs=1e-6)


def test_the_green_model_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="one-bit weights and spiking neurons"):
        check_dp_sgd_model(GreenNet(12, 5))
