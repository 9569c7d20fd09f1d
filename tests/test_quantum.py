"""QuantumLayer against an independent PennyLane QNode (default.qubit, backprop, float64)."""

from __future__ import annotations

import copy
import math

import pennylane as qml
import pytest
import torch

from common.quantum import QuantumLayer, normalized_amplitudes, simulate_expvals

ATOL = 1e-5
BATCH = 3
TORCH_CASES = [(n, layers) for n in range(1, 9) for layers in range(1, 5)]
# Every qubit count once, every layer count twice: the pennylane path only wraps a QNode.
PENNYLANE_CASES = [(n, (n % 4) + 1) for n in range(1, 9)]
LIGHTNING_CASES = [(1, 2), (2, 1), (3, 3), (4, 2)]
GATEWISE_CASES = [(1, 1), (2, 3), (3, 2), (5, 4), (8, 3)]


def reference_outputs_and_grads(
    x: torch.Tensor, weights: torch.Tensor, cotangent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """<Z_i>, d(sum cotangent * out)/dx and /dweights from a fresh float64 default.qubit QNode."""
    n_qubits = weights.shape[1]
    device = qml.device("default.qubit", wires=n_qubits)

    @qml.qnode(device, interface="torch", diff_method="backprop")
    def circuit(features, w):
        qml.AmplitudeEmbedding(features, wires=range(n_qubits), normalize=True)
        qml.StronglyEntanglingLayers(w, wires=range(n_qubits))
        return [qml.expval(qml.PauliZ(wire)) for wire in range(n_qubits)]

    x64 = x.detach().to(torch.float64).requires_grad_(True)
    w64 = weights.detach().to(torch.float64).requires_grad_(True)
    out = torch.stack([o.reshape(x.shape[0]) for o in circuit(x64, w64)], dim=-1)
    grad_x, grad_w = torch.autograd.grad((out * cotangent.to(torch.float64)).sum(), (x64, w64))
    return out.detach(), grad_x, grad_w


def layer_outputs_and_grads(
    layer: QuantumLayer, x: torch.Tensor, cotangent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    grad_x, grad_w = torch.autograd.grad((out * cotangent.to(out.dtype)).sum(), (x, layer.weights))
    return out.detach(), grad_x, grad_w


def random_case(
    n_qubits: int, n_layers: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs (B, 2^n), weights uniform in [0, 2pi) (general angles, not the near-identity init), cotangent."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 2**n_qubits, generator=generator, dtype=dtype)
    weights = 2 * math.pi * torch.rand(n_layers, n_qubits, 3, generator=generator, dtype=dtype)
    cotangent = torch.randn(BATCH, n_qubits, generator=generator, dtype=dtype)
    return x, weights, cotangent


def make_layer(n_qubits: int, n_layers: int, weights: torch.Tensor, **kwargs) -> QuantumLayer:
    layer = QuantumLayer(n_qubits, n_layers, **kwargs)
    with torch.no_grad():
        layer.weights.copy_(weights)
    return layer


def assert_matches_reference(layer: QuantumLayer, x, weights, cotangent, atol: float = ATOL) -> None:
    actual = layer_outputs_and_grads(layer, x, cotangent)
    expected = reference_outputs_and_grads(x, weights, cotangent)
    for name, got, want in zip(("output", "grad_x", "grad_weights"), actual, expected):
        assert got.shape == want.shape, name
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got.to(torch.float64), want, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize(("n_qubits", "n_layers"), TORCH_CASES)
def test_torch_backend_matches_pennylane(n_qubits: int, n_layers: int) -> None:
    x, weights, cotangent = random_case(n_qubits, n_layers, seed=100 * n_qubits + n_layers)
    layer = make_layer(n_qubits, n_layers, weights)
    assert layer(x).dtype == torch.float32
    assert_matches_reference(layer, x, weights, cotangent)


@pytest.mark.parametrize(("n_qubits", "n_layers"), [(1, 3), (3, 2), (5, 3), (8, 4)])
def test_torch_backend_float64_matches_pennylane_to_1e10(n_qubits: int, n_layers: int) -> None:
    x, weights, cotangent = random_case(n_qubits, n_layers, seed=7 + n_qubits, dtype=torch.float64)
    layer = make_layer(n_qubits, n_layers, weights.float()).double()
    assert layer(x).dtype == torch.float64
    assert_matches_reference(layer, x, layer.weights.detach(), cotangent, atol=1e-10)


FACTORED_CASES = [(1, 2), (2, 1), (3, 3), (4, 2), (5, 4), (6, 1), (7, 2), (8, 3), (9, 2)]


METHOD_CASES = [("gatewise", *case) for case in GATEWISE_CASES] + [("factored", *case) for case in FACTORED_CASES]


@pytest.mark.parametrize(("method", "n_qubits", "n_layers"), METHOD_CASES)
def test_simulation_method_matches_pennylane(method: str, n_qubits: int, n_layers: int) -> None:
    x, weights, cotangent = random_case(n_qubits, n_layers, seed=3 * n_qubits + n_layers)
    x = x.requires_grad_(True)
    w = weights.clone().requires_grad_(True)
    out = simulate_expvals(x, w, method=method)
    grad_x, grad_w = torch.autograd.grad((out * cotangent).sum(), (x, w))
    expected = reference_outputs_and_grads(x, weights, cotangent)
    for got, want in zip((out, grad_x, grad_w), expected):
        torch.testing.assert_close(got.detach().to(torch.float64), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("n_qubits", "n_layers"), [(3, 2), (6, 3), (8, 2)])
def test_factored_simulation_float64_matches_fused_to_1e12(n_qubits: int, n_layers: int) -> None:
    x, weights, cotangent = random_case(n_qubits, n_layers, seed=n_qubits, dtype=torch.float64)
    results = []
    for method in ("factored", "fused"):
        xx, w = x.clone().requires_grad_(True), weights.clone().requires_grad_(True)
        out = simulate_expvals(xx, w, method=method)
        results.append((out.detach(), *torch.autograd.grad((out * cotangent).sum(), (xx, w))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("n_qubits", "n_layers"), [(10, 1), (11, 1)])
def test_torch_backend_at_ten_and_eleven_qubits_matches_pennylane(n_qubits: int, n_layers: int) -> None:
    x, weights, cotangent = random_case(n_qubits, n_layers, seed=n_qubits)
    layer = make_layer(n_qubits, n_layers, weights)
    assert_matches_reference(layer, x[:2], weights, cotangent[:2])


@pytest.mark.parametrize(("n_qubits", "n_layers"), PENNYLANE_CASES)
def test_pennylane_backend_matches_reference(n_qubits: int, n_layers: int) -> None:
    x, weights, cotangent = random_case(n_qubits, n_layers, seed=11 * n_qubits + n_layers)
    layer = make_layer(n_qubits, n_layers, weights, backend="pennylane")
    assert layer.diff_method == "backprop"
    assert_matches_reference(layer, x, weights, cotangent)


@pytest.mark.parametrize(("n_qubits", "n_layers"), LIGHTNING_CASES)
def test_lightning_backend_matches_reference(n_qubits: int, n_layers: int) -> None:
    x, weights, cotangent = random_case(n_qubits, n_layers, seed=13 * n_qubits + n_layers)
    layer = make_layer(n_qubits, n_layers, weights, backend="pennylane", device="lightning.qubit")
    assert layer.diff_method == "adjoint"
    assert_matches_reference(layer, x, weights, cotangent)


def outputs_and_grads(path: str, x: torch.Tensor, weights: torch.Tensor, cotangent: torch.Tensor):
    """Outputs and gradients through the torch or pennylane backend, or the gatewise or factored simulation."""
    if path in ("gatewise", "factored"):
        x = x.detach().clone().requires_grad_(True)
        w = weights.detach().clone().requires_grad_(True)
        out = simulate_expvals(x, w, method=path)
        return (out.detach(), *torch.autograd.grad((out * cotangent).sum(), (x, w)))
    layer = make_layer(weights.shape[1], weights.shape[0], weights, backend=path)
    return layer_outputs_and_grads(layer, x, cotangent)


@pytest.mark.parametrize("path", ["torch", "pennylane", "gatewise", "factored"])
def test_zero_row_acts_as_ground_state_with_zero_input_gradient(path: str) -> None:
    n_qubits, n_layers = 3, 2
    x, weights, cotangent = random_case(n_qubits, n_layers, seed=5)
    x[1] = 0.0
    out, grad_x, grad_w = outputs_and_grads(path, x, weights, cotangent)
    assert torch.isfinite(out).all() and torch.isfinite(grad_x).all() and torch.isfinite(grad_w).all()
    assert torch.equal(grad_x[1], torch.zeros_like(grad_x[1]))
    # Outputs and weight gradients are those of the batch with |000> in place of the zero row.
    with_ground = x.clone()
    with_ground[1, 0] = 1.0
    expected_out, expected_grad_x, expected_grad_w = reference_outputs_and_grads(with_ground, weights, cotangent)
    torch.testing.assert_close(out.double(), expected_out, atol=ATOL, rtol=0)
    torch.testing.assert_close(grad_w.double(), expected_grad_w, atol=ATOL, rtol=0)
    torch.testing.assert_close(grad_x[[0, 2]].double(), expected_grad_x[[0, 2]], atol=ATOL, rtol=0)


def test_all_zero_batch_gives_finite_output_and_zero_input_gradient() -> None:
    layer = QuantumLayer(4, 2, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(5, 16, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.isfinite(layer.weights.grad).all()


def test_normalized_amplitudes_matches_division_by_norm() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0], [-2.0, 0.0]])
    expected = torch.tensor([[0.6, 0.8], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    # 1e-30 squared underflows float32, so that row counts as zero under the documented convention.
    torch.testing.assert_close(normalized_amplitudes(x), expected)


@pytest.mark.parametrize("backend", ["torch", "pennylane"])
@pytest.mark.parametrize("shape", [(3, 15), (3, 32), (16,), (2, 3, 16)])
def test_wrong_input_shape_raises(backend: str, shape: tuple[int, ...]) -> None:
    layer = QuantumLayer(4, 1, backend=backend)
    with pytest.raises(ValueError, match=r"\(batch, 16\).*" + re_shape(shape)):
        layer(torch.ones(shape))


def re_shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_integer_input_raises() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        QuantumLayer(2, 1)(torch.ones(2, 4, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_qubits": 0, "n_layers": 1}, "n_qubits must be an integer >= 1, got 0"),
        ({"n_qubits": 2.0, "n_layers": 1}, "n_qubits must be an integer >= 1, got 2.0"),
        ({"n_qubits": True, "n_layers": 1}, "n_qubits must be an integer >= 1, got True"),
        ({"n_qubits": 2, "n_layers": 0}, "n_layers must be an integer >= 1, got 0"),
        ({"n_qubits": 2, "n_layers": -3}, "n_layers must be an integer >= 1, got -3"),
        ({"n_qubits": 2, "n_layers": 1, "backend": "qiskit"}, "backend must be one of .* got 'qiskit'"),
        ({"n_qubits": 2, "n_layers": 1, "init_scale": -0.1}, "init_scale must be .* got -0.1"),
        ({"n_qubits": 2, "n_layers": 1, "init_scale": float("nan")}, "init_scale must be .* got nan"),
        ({"n_qubits": 2, "n_layers": 1, "diff_method": "adjoint"}, "only diff_method 'backprop', got 'adjoint'"),
        (
            {"n_qubits": 2, "n_layers": 1, "backend": "pennylane", "device": "default.mixed"},
            "device must be one of .* got 'default.mixed'",
        ),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantumLayer(**kwargs)


@pytest.mark.skipif("lightning.gpu" in qml.plugin_devices, reason="lightning.gpu is installed here")
def test_missing_pennylane_device_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="'lightning.gpu' is not available"):
        QuantumLayer(2, 1, backend="pennylane", device="lightning.gpu")


@pytest.mark.parametrize("backend", ["torch", "pennylane"])
def test_exactly_one_parameter_named_weights(backend: str) -> None:
    layer = QuantumLayer(5, 3, backend=backend)
    params = dict(layer.named_parameters())
    assert list(params) == ["weights"]
    assert params["weights"].shape == (3, 5, 3)
    assert params["weights"].dtype == torch.float32
    assert list(layer.state_dict()) == ["weights"]


def test_initialisation_is_seeded_small_normal() -> None:
    def draw(seed: int, scale: float = 0.1) -> torch.Tensor:
        return QuantumLayer(8, 50, init_scale=scale, generator=torch.Generator().manual_seed(seed)).weights.detach()

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    assert torch.equal(draw(1, scale=0.0), torch.zeros(50, 8, 3))
    weights = draw(3)
    # 1200 draws of N(0, 0.1^2): the sample std is within 5 standard errors (~0.01) of 0.1.
    assert 0.09 < weights.std().item() < 0.11
    assert abs(weights.mean().item()) < 0.015


def test_deep_copy_and_dtype_moves_keep_outputs() -> None:
    layer = QuantumLayer(3, 2, init_scale=1.0, generator=torch.Generator().manual_seed(6))
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(7))
    expected = layer(x)
    torch.testing.assert_close(copy.deepcopy(layer)(x), expected, atol=0, rtol=0)
    doubled = layer.double()(x.double())
    assert doubled.dtype == torch.float64
    torch.testing.assert_close(doubled.float(), expected, atol=1e-6, rtol=0)


def test_state_dict_round_trip_between_backends() -> None:
    source = QuantumLayer(3, 2, init_scale=1.0, generator=torch.Generator().manual_seed(4))
    target = QuantumLayer(3, 2, backend="pennylane")
    target.load_state_dict(source.state_dict())
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(target(x), source(x), atol=ATOL, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda_matches_cpu() -> None:
    x, weights, cotangent = random_case(6, 3, seed=21)
    cpu_layer = make_layer(6, 3, weights)
    cuda_layer = make_layer(6, 3, weights).cuda()
    cpu = layer_outputs_and_grads(cpu_layer, x, cotangent)
    cuda = layer_outputs_and_grads(cuda_layer, x.cuda(), cotangent.cuda())
    assert cuda[0].device.type == "cuda"
    for got, want in zip(cuda, cpu):
        torch.testing.assert_close(got.cpu(), want, atol=ATOL, rtol=0)
