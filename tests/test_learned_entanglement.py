"""The attention-coupled circuit: both backends against a separate PennyLane circuit (outputs and gradients)."""

from __future__ import annotations

import math

import pennylane as qml
import pytest
import torch

from common.learned_entanglement import LearnedEntanglementHead, simulate, wire_pairs


def reference_expvals(angles, couplings, weights):
    """One input at a time, plain gates, IsingZZ written as CNOT . RZ(target) . CNOT: an independent circuit."""
    n, n_layers = angles.shape[1], weights.shape[0]
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev, interface="torch", diff_method="backprop")
    def circuit(a, phi, w):
        for wire in range(n):
            qml.RY(a[wire], wires=wire)
        for layer in range(n_layers):
            for wire in range(n):
                qml.RZ(w[layer, wire, 1], wires=wire)
            for p, (i, j) in enumerate(wire_pairs(n)):
                qml.CNOT(wires=[i, j])
                qml.RZ(phi[layer, p], wires=j)
                qml.CNOT(wires=[i, j])
            for wire in range(n):
                qml.RY(w[layer, wire, 0], wires=wire)
        return [qml.expval(qml.PauliZ(wire)) for wire in range(n)]

    return torch.stack([torch.stack(list(circuit(angles[b], couplings[b], weights))) for b in range(angles.shape[0])])


def random_inputs(n, n_layers, batch, seed):
    g = torch.Generator().manual_seed(seed)
    angles = (torch.rand(batch, n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    couplings = torch.rand(batch, n_layers, len(wire_pairs(n)), generator=g, dtype=torch.float64) * math.pi
    weights = torch.randn(n_layers, n, 2, generator=g, dtype=torch.float64)
    return angles, couplings, weights


def values_and_gradients(fn, angles, couplings, weights, cotangent):
    leaves = [t.clone().requires_grad_(True) for t in (angles, couplings, weights)]
    out = fn(*leaves)
    (out * cotangent).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("n, n_layers", [(2, 1), (3, 2), (8, 3)])
def test_torch_simulation_matches_the_reference_circuit_in_values_and_gradients(n, n_layers):
    angles, couplings, weights = random_inputs(n, n_layers, batch=3, seed=n)
    cotangent = torch.randn(3, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours, our_grads = values_and_gradients(simulate, angles, couplings, weights, cotangent)
    ref, ref_grads = values_and_gradients(reference_expvals, angles, couplings, weights, cotangent)
    assert torch.allclose(ours, ref, atol=1e-10)
    for g_ours, g_ref in zip(our_grads, ref_grads):
        assert torch.allclose(g_ours, g_ref, atol=1e-10)
    assert our_grads[1].abs().max() > 1e-3  # the couplings do change the read-out


def test_pennylane_backend_matches_the_reference_circuit_in_values_and_gradients():
    head = LearnedEntanglementHead(n_qubits=4, n_layers=2, backend="pennylane")
    angles, couplings, weights = random_inputs(4, 2, batch=3, seed=7)
    cotangent = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def qnode(a, phi, w):
        return torch.stack(list(head._circuit(a, phi, w)), dim=-1)

    ours, our_grads = values_and_gradients(qnode, angles, couplings, weights, cotangent)
    ref, ref_grads = values_and_gradients(reference_expvals, angles, couplings, weights, cotangent)
    assert torch.allclose(ours, ref, atol=1e-10)
    for g_ours, g_ref in zip(our_grads, ref_grads):
        assert torch.allclose(g_ours, g_ref, atol=1e-10)


def test_the_two_backends_of_the_head_agree_within_1e_5_in_float32():
    torch.manual_seed(0)
    heads = {b: LearnedEntanglementHead(n_qubits=8, n_layers=3, backend=b, generator=torch.Generator().manual_seed(3))
             for b in ("torch", "pennylane")}
    h = torch.randn(5, 8)
    outputs, grads = {}, {}
    for name, head in heads.items():
        out = head(h)
        out.sum().backward()
        outputs[name] = out.detach()
        grads[name] = {k: p.grad.clone() for k, p in head.named_parameters()}
    assert outputs["torch"].dtype == torch.float32 and outputs["torch"].shape == (5, 8)
    assert torch.allclose(outputs["torch"], outputs["pennylane"], atol=1e-5)
    for name in grads["torch"]:
        assert torch.allclose(grads["torch"][name], grads["pennylane"][name], atol=1e-5), name
    assert grads["torch"]["query.weight"].abs().max() > 0  # the attention learns through the circuit


def test_pair_strengths_are_symmetric_per_input_and_kept_for_inspection():
    head = LearnedEntanglementHead(n_qubits=4, n_layers=1, attention_dim=6,
                                   generator=torch.Generator().manual_seed(4))
    h = torch.randn(3, 4)
    head(h)
    s = head.strengths
    assert s.shape == (3, 6) and bool(((s > 0) & (s < 1)).all())
    assert not torch.allclose(s[0], s[1])  # per input
    # s_ij from the scores both ways: computing it with the query and key maps swapped gives the same strengths
    swapped = LearnedEntanglementHead(n_qubits=4, n_layers=1, attention_dim=6)
    swapped.load_state_dict(head.state_dict())
    with torch.no_grad():
        swapped.query.weight.copy_(head.key.weight)
        swapped.key.weight.copy_(head.query.weight)
    assert torch.allclose(swapped.pair_strengths(h), s, atol=1e-6)


def test_zero_couplings_leave_the_wires_unentangled():
    """With every coupling 0 the state stays a product state: <Z_i> = cos(a_i) cos(theta_i) - ... per wire alone."""
    angles, _, weights = random_inputs(3, 1, batch=2, seed=9)
    out = simulate(angles, torch.zeros(2, 1, 3, dtype=torch.float64), weights)
    # one wire: RY(theta) RZ(omega) RY(a)|0> has <Z> = cos(a) cos(theta) - sin(a) sin(theta) cos(omega)
    expected = (torch.cos(angles) * torch.cos(weights[0, :, 0])
                - torch.sin(angles) * torch.sin(weights[0, :, 0]) * torch.cos(weights[0, :, 1]))
    assert torch.allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [({"n_qubits": 1}, "n_qubits must be >= 2"),
                                             ({"n_layers": 0}, "n_layers must be an integer >= 1"),
                                             ({"backend": "qiskit"}, "backend must be one of")])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LearnedEntanglementHead(**kwargs)


def test_wrong_input_shape_raises():
    with pytest.raises(ValueError, match=r"shape \(batch, 8\)"):
        LearnedEntanglementHead()(torch.zeros(2, 7))


def test_fixed_entanglement_couples_every_pair_at_half_strength_for_every_input():
    head = LearnedEntanglementHead(4, 2, learned=False, generator=torch.Generator().manual_seed(4)).double()
    assert {name for name, _ in head.named_parameters()} == {"weights", "layer_gain"}
    h = torch.randn(3, 4, dtype=torch.float64)
    out = head(h)
    assert torch.equal(head.strengths, torch.full((3, 6), 0.5, dtype=torch.float64))
    couplings = (math.pi * 0.5 * head.layer_gain.detach())[None, :, None].expand(3, 2, 6)
    expected = simulate(math.pi * torch.tanh(h), couplings, head.weights.detach())
    assert torch.allclose(out, expected, atol=1e-12)
