"""Example-level differentially private local training (DP-SGD) with Opacus.

Per step, every training example is drawn independently with probability ``q = sample_rate`` (Poisson
sampling), each drawn example's gradient over the trainable parameters is clipped to L2 norm ``C``
(flat clipping), the clipped gradients are summed, Gaussian noise ``N(0, (sigma C)^2 I)`` is added, and the
sum is divided by the expected batch size ``int(q N)`` before the optimiser's step (Abadi et al., CCS 2016;
Opacus, Yousefpour et al. 2021). With ``q = 1 / ceil(N / batch_size)`` one round's local training is
``steps = epochs * int(1 / q)`` such steps (counted, not computed, for the accountant), an adaptive composition of
Poisson-subsampled Gaussian mechanisms on the client's training set (add/remove one example). The training set's
size ``N``, hence ``q``, is public: the client sends it as ``num-examples``.

Opacus computes per-example gradients with hooks for ``Linear``, ``Conv1d`` and ``GroupNorm``; the two layers
of ours with their own parameters get grad samplers here: ``QuantumLayer`` (vmap of the autograd-only
"gatewise" simulation) and ``FusionGate`` (closed form). The green model's one-bit weights and spiking neurons
have none, so it is refused.

Noise and sampling draw from torch generators seeded from OS entropy, not from the run seed: a guarantee must
not rest on a public seed. They are not cryptographically secure generators (Opacus's ``secure_mode`` needs
``torchcsprng``, which does not build for this torch), so a floating-point or generator-state attack is out of scope.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.model import ECGNet, FusionGate
from common.quantum import QuantumLayer, circuit_tables, simulate_expvals
from common.task import loss_function, optimiser_for, unfrozen_parameters


@register_grad_sampler(QuantumLayer)
def quantum_grad_sample(layer: QuantumLayer, activations: list[torch.Tensor], backprops: torch.Tensor
                        ) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example d(backprop_i . <Z>(x_i, w))/dw, (B, L, n, 3): vmap of the autograd-only simulation."""
    if not layer.weights.requires_grad:
        return {}
    x = activations[0]
    dtype = torch.promote_types(x.dtype, layer.weights.dtype)
    tables = circuit_tables(layer.n_qubits, layer.n_layers)

    def weighted_output(weights: torch.Tensor, row: torch.Tensor, grad_row: torch.Tensor) -> torch.Tensor:
        return (simulate_expvals(row[None], weights, "gatewise", tables)[0] * grad_row).sum()

    if x.shape[0] == 0:
        return {layer.weights: torch.zeros((0, *layer.weights.shape), dtype=layer.weights.dtype, device=x.device)}
    per_example = torch.func.vmap(torch.func.grad(weighted_output), in_dims=(None, 0, 0))(
        layer.weights.detach().to(dtype), x.detach().to(dtype), backprops.to(dtype))
    return {layer.weights: per_example.to(layer.weights.dtype)}


@register_grad_sampler(FusionGate)
def gate_grad_sample(gate: FusionGate, activations: list[torch.Tensor], backprops: torch.Tensor
                     ) -> dict[nn.Parameter, torch.Tensor]:
    """d/dlogit of backprop_i . ((1 - a) c_i + a q_i) = a (1 - a) backprop_i . (q_i - c_i), a = sigmoid(logit)."""
    if not gate.logit.requires_grad:
        return {}
    classical, quantum = activations[0], activations[1].to(activations[0].dtype)
    alpha = torch.sigmoid(gate.logit.detach())
    per_example = alpha * (1 - alpha) * (backprops * (quantum - classical)).sum(dim=1, keepdim=True)
    return {gate.logit: per_example.to(gate.logit.dtype)}


def check_dp_sgd_model(model: nn.Module) -> None:
    """ValueError unless every trainable module of ``model`` has a per-example gradient (hybrid/classical/gated)."""
    if not isinstance(model, ECGNet):
        raise ValueError(f"update-dp = 'example' needs per-example gradients, which the {type(model).__name__} "
                         "model's one-bit weights and spiking neurons do not have in Opacus; expected model = "
                         "'hybrid', 'classical' or 'gated'")


def _os_seeded_generator(device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


def train_local_dp(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                   learning_rate: float, task: str, noise_multiplier: float, max_grad_norm: float,
                   accountant_history: list | None = None, frozen_layers: frozenset[str] = frozenset(),
                   device: str = "cpu", optimizer: str = "adam", weight_decay: float = 0.0) -> dict:
    """One round of DP-SGD on (x, y); ``model`` ends with the noisy weights (its parameters, not a copy).

    The expected batch is ``int(q N) <= batch_size`` (q = 1 / ceil(N / batch_size), Opacus's rate); frozen layers
    get no gradient and are neither clipped nor noised. ``accountant_history``: Opacus's RDP accountant history of the
    earlier rounds, extended here (``opacus_epsilon`` of the returned history covers every round so far). Returns
    the mean training loss of the last epoch over the examples drawn, the number of examples, the sample rate,
    the number of steps and the history.
    """
    check_dp_sgd_model(model)
    if len(x) == 0:
        raise ValueError("cannot train on an empty partition")
    model.to(device).train()
    optim = optimiser_for(unfrozen_parameters(model, frozen_layers), optimizer, learning_rate, weight_decay)
    loader = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=batch_size,
                        generator=_os_seeded_generator())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # the trade-off is in the docstring
        engine = PrivacyEngine(accountant="rdp")
    if accountant_history:
        engine.accountant.load_state_dict({"history": [tuple(h) for h in accountant_history], "mechanism": "rdp"})
    private_model, private_optim, private_loader = engine.make_private(
        module=model, optimizer=optim, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm, poisson_sampling=True, noise_generator=_os_seeded_generator(device))
    loss_fn = loss_function(task)
    sample_rate = 1.0 / len(loader)
    steps, last_loss = 0, math.nan
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in private_loader:
            private_optim.zero_grad()
            loss = loss_fn(private_model(xb.to(device)).float(), yb.to(device))
            if len(xb) == 0:
                loss = loss.nan_to_num(0.0)  # an empty Poisson batch: the step still adds the noise
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")  # the input needs none
                loss.backward()
            private_optim.step()
            steps += 1
            total += float(loss.detach()) * len(xb)
            count += len(xb)
        last_loss = total / count if count else math.nan
    private_model.remove_hooks()
    for param in model.parameters():
        param.requires_grad_(True)
    return {"train_loss": last_loss, "num_examples": int(len(x)), "sample_rate": sample_rate, "steps": steps,
            "accountant_history": [list(h) for h in engine.accountant.history]}


def opacus_epsilon(history: list, delta: float) -> float:
    """Opacus's own RDP epsilon at ``delta`` for an accountant ``history`` [(sigma, q, steps), ...]."""
    accountant = RDPAccountant()
    accountant.history = [tuple(h) for h in history]
    return float(accountant.get_epsilon(delta)) if history else 0.0
