"""Variational quantum layer: amplitude embedding + PennyLane StronglyEntanglingLayers + <Z_i>.

For an input row x in R^(2^n) and weights w of shape (L, n, 3) the layer computes

    |psi(x)>  = a(x) = x / ||x||_2                      (amplitude embedding; zero row -> |0...0>)
    U_l       = C_l (Rot(w[l,0]) (x) Rot(w[l,1]) (x) ... (x) Rot(w[l,n-1]))
    y_i       = <psi(x)| U_1^+ ... U_L^+  Z_i  U_L ... U_1 |psi(x)>,    i = 0..n-1

with PennyLane's exact conventions:

* ``Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi)`` and ``w[l, i] = (phi, theta, omega)``, i.e.
  ``Rot = [[e^{-i(phi+omega)/2} cos(theta/2), -e^{i(phi-omega)/2} sin(theta/2)],
          [e^{-i(phi-omega)/2} sin(theta/2),  e^{i(phi+omega)/2} cos(theta/2)]]``.
* ``C_l = CNOT(n-1, (n-1+r_l) % n) ... CNOT(1, (1+r_l) % n) CNOT(0, r_l % n)`` (CNOT(0, .) applied first) with
  PennyLane's default range ``r_l = (l mod (n-1)) + 1`` for n > 1; for n == 1 there is no CNOT.
* Wire 0 is the most significant bit of the basis-state index, so the state vector of ``n`` wires is
  ``kron(wire 0, wire 1, ..., wire n-1)`` and ``Z_i`` has eigenvalue ``1 - 2 * bit_i(k)`` on basis state ``k``
  with ``bit_i(k) = (k >> (n-1-i)) & 1``.

Zero-row convention (both backends): a row whose squared norm is not larger than the smallest positive normal
float of its dtype is embedded as the basis state |0...0>, with zero gradient with respect to that row. Non-zero
rows are embedded exactly as ``qml.AmplitudeEmbedding(x, normalize=True)`` does.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor, nn

BACKENDS = ("torch", "pennylane")
PENNYLANE_DEVICES = ("default.qubit", "lightning.qubit", "lightning.gpu")
# Above this many qubits a 2^n x 2^n layer unitary (4^n entries) costs more than applying gates one by one.
FUSED_MAX_QUBITS = 10
DEFAULT_INIT_SCALE = 0.1

SimulationMethod = Literal["auto", "fused", "gatewise"]


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def normalized_amplitudes(x: Tensor) -> Tensor:
    """Rows of ``x`` divided by their L2 norm; rows with ``||x||^2 <= finfo.tiny`` become e_0 = |0...0>.

    The zero-row branch never divides by zero, so neither the value nor the gradient can be NaN
    (the gradient with respect to a zero row is exactly zero).
    """
    squared_norm = (x * x).sum(dim=-1, keepdim=True)
    is_zero = squared_norm <= torch.finfo(x.dtype).tiny
    # Substitute 1 before rsqrt so the discarded branch has a finite derivative, not 0 * inf.
    unit_rows = x * torch.where(is_zero, torch.ones_like(squared_norm), squared_norm).rsqrt()
    return unit_rows + nn.functional.pad(is_zero.to(x.dtype), (0, x.shape[-1] - 1))


def rot_matrices(weights: Tensor) -> Tensor:
    """PennyLane ``Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi)`` for weights (..., 3) -> complex (..., 2, 2).

    Entries ``[[e^{-i(phi+omega)/2} c, -e^{i(phi-omega)/2} s], [e^{-i(phi-omega)/2} s, e^{i(phi+omega)/2} c]]`` with
    ``c = cos(theta/2)``, ``s = sin(theta/2)``; the minus sign of entry (0, 1) is written as a phase of pi.
    """
    phi, theta, omega = (weights * 0.5).unbind(dim=-1)
    half_sum = phi + omega
    half_diff = phi - omega
    phases = torch.stack((-half_sum, half_diff + math.pi, -half_diff, half_sum), dim=-1)
    cos_half = torch.cos(theta)
    sin_half = torch.sin(theta)
    magnitudes = torch.stack((cos_half, sin_half, sin_half, cos_half), dim=-1)
    entries = torch.complex(magnitudes * torch.cos(phases), magnitudes * torch.sin(phases))
    return entries.reshape(weights.shape[:-1] + (2, 2))


def cnot_ranges(n_qubits: int, n_layers: int) -> tuple[int, ...]:
    """PennyLane's default StronglyEntanglingLayers ranges: r_l = (l mod (n-1)) + 1, or 0 (no CNOT) for n == 1."""
    if n_qubits == 1:
        return (0,) * n_layers
    return tuple((layer % (n_qubits - 1)) + 1 for layer in range(n_layers))


@lru_cache(maxsize=64)
def cnot_source_indices(n_qubits: int, n_layers: int) -> Tensor:
    """LongTensor (L, 2^n): the CNOT block C_l of layer l maps amplitudes as ``(C_l psi)[j] = psi[source[l, j]]``."""
    dim = 2**n_qubits
    shifts = torch.arange(n_qubits - 1, -1, -1)
    basis = torch.arange(dim)
    sources = []
    for r in cnot_ranges(n_qubits, n_layers):
        bits = (basis[:, None] >> shifts) & 1  # bits[k, i] = bit of wire i in basis state k
        if n_qubits > 1:
            for control in range(n_qubits):
                target = (control + r) % n_qubits
                bits[:, target] ^= bits[:, control]
        image = (bits << shifts).sum(dim=1)  # C_l |k> = |image[k]>
        source = torch.empty_like(image)
        source[image] = basis
        sources.append(source)
    return torch.stack(sources)


@lru_cache(maxsize=64)
def pauli_z_signs(n_qubits: int) -> Tensor:
    """Float64 (2^n, n): eigenvalue of Z_i on basis state k, i.e. 1 - 2 * ((k >> (n-1-i)) & 1)."""
    basis = torch.arange(2**n_qubits)[:, None]
    shifts = torch.arange(n_qubits - 1, -1, -1)
    return (1 - 2 * ((basis >> shifts) & 1)).to(torch.float64)


def _probabilities_to_expvals(state: Tensor, z_signs: Tensor) -> Tensor:
    """<Z_i> = sum_k |state_k|^2 z_signs[k, i] for a complex state (B, 2^n)."""
    return torch.view_as_real(state).square().sum(dim=-1) @ z_signs


def _expvals_fused(amplitudes: Tensor, rotations: Tensor, source: Tensor, z_signs: Tensor) -> Tensor:
    """All layers' 2^n x 2^n unitaries ``U_l = C_l kron(R_l0, ..., R_l(n-1))`` at once, then matmuls."""
    n_layers, n_qubits = rotations.shape[:2]
    kron = rotations[:, 0]
    for wire in range(1, n_qubits):
        # kron(A, R)[(a, b), (c, d)] = A[a, c] R[b, d], batched over layers.
        kron = kron[:, :, None, :, None] * rotations[:, wire, None, :, None, :]
        kron = kron.reshape(n_layers, 2 ** (wire + 1), 2 ** (wire + 1))
    dim = kron.shape[-1]
    # (C_l K)[j, :] = K[source[l, j], :]: a row gather.
    unitaries = kron.gather(1, source[:, :, None].expand(n_layers, dim, dim))
    state = amplitudes.to(rotations.dtype)
    if state.shape[0] > dim:
        # Multiplying the L unitaries first is cheaper than L (B x 2^n) @ (2^n x 2^n) products.
        total = unitaries[0]
        for layer in range(1, n_layers):
            total = unitaries[layer] @ total
        state = state @ total.mT
    else:
        for layer in range(n_layers):
            state = state @ unitaries[layer].mT
    return _probabilities_to_expvals(state, z_signs)


def _expvals_gatewise(amplitudes: Tensor, rotations: Tensor, source: Tensor, z_signs: Tensor) -> Tensor:
    """Each Rot mixes the two halves of one wire axis elementwise, each CNOT block is one gather."""
    n_layers, n_qubits = rotations.shape[:2]
    batch = amplitudes.shape[0]
    state = amplitudes.to(rotations.dtype)
    for layer in range(n_layers):
        for wire in range(n_qubits):
            # Axes (batch, wires before, this wire, wires after); wire 0 is the most significant bit.
            split = state.reshape(batch, 2**wire, 2, 2 ** (n_qubits - 1 - wire))
            low, high = split[:, :, 0], split[:, :, 1]
            r = rotations[layer, wire]
            state = torch.stack((r[0, 0] * low + r[0, 1] * high, r[1, 0] * low + r[1, 1] * high), dim=2)
        state = state.reshape(batch, -1)[:, source[layer]]
    return _probabilities_to_expvals(state, z_signs)


def simulate_expvals(
    amplitudes: Tensor,
    weights: Tensor,
    method: SimulationMethod = "auto",
    source: Tensor | None = None,
    z_signs: Tensor | None = None,
) -> Tensor:
    """<Z_i> (B, n) after StronglyEntanglingLayers(weights) on unit-norm real ``amplitudes`` (B, 2^n).

    Computes in complex64 for float32 inputs and complex128 for float64 (dtype promoted from both arguments).
    ``method``: "fused" (per-layer 2^n x 2^n unitary), "gatewise" (one 2x2 contraction per gate) or "auto"
    (fused for n <= FUSED_MAX_QUBITS). ``source``/``z_signs`` are the cached tables, passed to avoid copies.
    """
    n_layers, n_qubits = weights.shape[:2]
    real_dtype = torch.promote_types(amplitudes.dtype, weights.dtype)
    if source is None:
        source = cnot_source_indices(n_qubits, n_layers).to(amplitudes.device)
    if z_signs is None:
        z_signs = pauli_z_signs(n_qubits).to(amplitudes.device)
    rotations = rot_matrices(weights.to(real_dtype))
    amplitudes = amplitudes.to(real_dtype)
    z_signs = z_signs.to(real_dtype)
    if method == "auto":
        method = "fused" if n_qubits <= FUSED_MAX_QUBITS else "gatewise"
    if method == "fused":
        return _expvals_fused(amplitudes, rotations, source, z_signs)
    if method == "gatewise":
        return _expvals_gatewise(amplitudes, rotations, source, z_signs)
    raise ValueError(f"method must be one of 'auto', 'fused', 'gatewise', got {method!r}")


def _pennylane_qnode(n_qubits: int, device: str, diff_method: str):
    """QNode(features (B, 2^n), weights (L, n, 3)) -> tuple of n tensors <Z_i> (B,), interface torch."""
    import pennylane as qml

    if device not in PENNYLANE_DEVICES:
        raise ValueError(f"device must be one of {PENNYLANE_DEVICES}, got {device!r}")
    try:
        qdevice = qml.device(device, wires=n_qubits)
    except Exception as error:  # PennyLane raises DeviceError/ImportError/RuntimeError depending on the plugin
        raise ValueError(f"PennyLane device {device!r} is not available: {error}") from error

    @qml.qnode(qdevice, interface="torch", diff_method=diff_method)
    def circuit(features: Tensor, weights: Tensor):
        qml.AmplitudeEmbedding(features, wires=range(n_qubits), normalize=True)
        qml.StronglyEntanglingLayers(weights, wires=range(n_qubits))
        return [qml.expval(qml.PauliZ(wire)) for wire in range(n_qubits)]

    return circuit


class QuantumLayer(nn.Module):
    """Hybrid-model quantum head: (B, 2^n) real features -> (B, n) Pauli-Z expectations in [-1, 1].

    Computes ``y_i = <psi(x)| U^+ Z_i U |psi(x)>`` with ``psi(x) = x / ||x||`` (zero row -> |0...0>) and
    ``U = StronglyEntanglingLayers(weights)`` in PennyLane's conventions (see the module docstring).

    Parameters: exactly one, ``weights`` of shape (n_layers, n_qubits, 3) holding (phi, theta, omega) per wire,
    initialised as ``init_scale * N(0, 1)`` (drawn with ``generator`` if given, else the global torch RNG).
    A near-identity start keeps gradients away from the barren-plateau regime of uniform [0, 2pi) angles.

    backend="torch": batched state-vector simulation in PyTorch (CPU or CUDA, follows the input's device),
    complex64 for float32 inputs. backend="pennylane": a PennyLane QNode on ``device`` (default.qubit,
    lightning.qubit, lightning.gpu) with diff_method "backprop" (default.qubit) or "adjoint" (lightning.*)
    unless given; it runs in float64 and returns the input's dtype.
    """

    def __init__(
        self,
        n_qubits: int,
        n_layers: int,
        backend: str = "torch",
        device: str = "default.qubit",
        diff_method: str | None = None,
        init_scale: float = DEFAULT_INIT_SCALE,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.n_qubits = _check_positive_int(n_qubits, "n_qubits")
        self.n_layers = _check_positive_int(n_layers, "n_layers")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not isinstance(init_scale, (int, float)) or not math.isfinite(init_scale) or init_scale < 0:
            raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
        self.backend = backend
        self.device_name = device
        self.weights = nn.Parameter(
            init_scale * torch.randn((n_layers, n_qubits, 3), generator=generator, dtype=torch.float32)
        )
        self._circuit = None
        if backend == "torch":
            if diff_method not in (None, "backprop"):
                raise ValueError(f"backend 'torch' supports only diff_method 'backprop', got {diff_method!r}")
            self.diff_method = "backprop"
            # Non-persistent: they follow .to(device) but stay out of state_dict (weights are the only state).
            self.register_buffer("_source", cnot_source_indices(n_qubits, n_layers).clone(), persistent=False)
            self.register_buffer("_z_signs", pauli_z_signs(n_qubits).clone(), persistent=False)
        else:
            if diff_method is None:
                diff_method = "backprop" if device == "default.qubit" else "adjoint"
            self.diff_method = diff_method
            self._circuit = _pennylane_qnode(n_qubits, device, diff_method)

    def extra_repr(self) -> str:
        return (
            f"n_qubits={self.n_qubits}, n_layers={self.n_layers}, backend={self.backend!r}"
            + (f", device={self.device_name!r}, diff_method={self.diff_method!r}" if self.backend != "torch" else "")
        )

    def forward(self, x: Tensor) -> Tensor:
        expected = 2**self.n_qubits
        if x.ndim != 2 or x.shape[-1] != expected:
            raise ValueError(
                f"input must have shape (batch, {expected}) for n_qubits={self.n_qubits}, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor, got dtype {x.dtype}")
        amplitudes = normalized_amplitudes(x)
        if self.backend == "torch":
            return simulate_expvals(amplitudes, self.weights, "auto", self._source, self._z_signs)
        # Re-normalising inside the QNode is idempotent on unit rows and keeps PennyLane's own embedding.
        outputs = self._circuit(amplitudes.to(torch.float64), self.weights.to(torch.float64))
        return torch.stack([torch.as_tensor(out).reshape(x.shape[0]) for out in outputs], dim=-1).to(x.dtype)
