"""Variational circuit whose entangling strengths are chosen per input by attention (the ECG design note's path B).

Circuit on n wires, L layers, for one input row (angles a in R^n, couplings phi in R^(L, P) over the
P = n(n-1)/2 wire pairs (i, j), i < j, in lexicographic order) and weights w of shape (L, n, 2):

    |psi_0>  = RY(a_0) (x) ... (x) RY(a_{n-1}) |0...0>                 (qml.AngleEmbedding, rotation="Y")
    layer l:   RZ(w[l, i, 1]) on every wire i,
               IsingZZ(phi[l, p]) on every pair p = (i, j), in order,
               RY(w[l, i, 0]) on every wire i
    y_i      = <psi_L| Z_i |psi_L>,   i = 0..n-1

with PennyLane's conventions: ``RY(t) = [[cos t/2, -sin t/2], [sin t/2, cos t/2]]``,
``RZ(t) = diag(e^{-it/2}, e^{it/2})``, ``IsingZZ(t) = exp(-i t/2 Z_i Z_j)``; wire 0 is the most significant bit
of the basis-state index and ``Z_i`` has eigenvalue ``z_i(k) = 1 - 2 bit_i(k)`` on basis state k. The RZ and
IsingZZ gates of a layer are diagonal, so together they are one phase ``exp(-i/2 (sum_i w[l,i,1] z_i(k) +
sum_p phi[l,p] z_i(k) z_j(k)))``; the RY after them is what turns those phases into entanglement, which is why
a layer ends with RY (a diagonal gate right before the Z read-out would change nothing).

Learned entanglement (``LearnedEntanglementHead``): from features h in R^n (one per wire) each wire gets a token
``t_i = h_i u + e_i`` in R^d (u and the wire embeddings e_i learned), queries ``q_i = W_q t_i`` and keys
``k_i = W_k t_i``; the strength of pair (i, j) is ``s_ij = sigmoid((q_i . k_j + q_j . k_i) / (2 sqrt(d)))`` in
(0, 1), symmetric, one per input, and layer l couples the pair with ``phi[l, p] = pi * g_l * s_ij`` (g_l learned,
starting at 1). The angles are ``a_i = pi * tanh(h_i)``. ``strengths`` of the last forward pass are kept for
inspection: which pairs of features (for ECG, which leads) the circuit connected for each input.

Backends: ``torch`` (state vector in PyTorch: one diagonal phase and one dense 2^n x 2^n real RY matrix per layer,
batched as real matmuls, follows the input's device and dtype) and ``pennylane`` (a QNode with parameter
broadcasting over the batch, float64). Both are tested against a separate PennyLane circuit built with
``IsingZZ`` decomposed as CNOT . RZ . CNOT.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations

import torch
from torch import Tensor, nn

BACKENDS = ("torch", "pennylane")


def wire_pairs(n_qubits: int) -> tuple[tuple[int, int], ...]:
    """The P = n(n-1)/2 pairs (i, j), i < j, in lexicographic order."""
    return tuple(combinations(range(n_qubits), 2))


@lru_cache(maxsize=16)
def _sign_tables(n_qubits: int) -> tuple[Tensor, Tensor]:
    """z (2^n, n) with z_i(k) = 1 - 2 bit_i(k), wire 0 the most significant bit, and zz (2^n, P) = z_i z_j per
    pair, in float64 on the CPU (cast per call)."""
    k = torch.arange(2**n_qubits)
    z = (1 - 2 * torch.stack([(k >> (n_qubits - 1 - i)) & 1 for i in range(n_qubits)], dim=1)).to(torch.float64)
    pairs = wire_pairs(n_qubits)
    zz = torch.stack([z[:, i] * z[:, j] for i, j in pairs], dim=1) if pairs else z[:, :0]
    return z, zz


def _kron_rows(factors: Tensor) -> Tensor:
    """(B, n, 2) single-wire amplitudes -> (B, 2^n) product state, wire 0 the most significant."""
    state = factors[:, 0, :]
    for i in range(1, factors.shape[1]):
        state = (state[:, :, None] * factors[:, i, None, :]).reshape(state.shape[0], -1)
    return state


def _ry_matrix(thetas: Tensor) -> Tensor:
    """kron_i RY(theta_i) as a dense (2^n, 2^n) real matrix, wire 0 the most significant."""
    c, s = torch.cos(thetas / 2), torch.sin(thetas / 2)
    out = None
    for i in range(thetas.shape[0]):
        block = torch.stack([torch.stack([c[i], -s[i]]), torch.stack([s[i], c[i]])])
        out = block if out is None else torch.kron(out, block)
    return out


def simulate(angles: Tensor, couplings: Tensor, weights: Tensor) -> Tensor:
    """<Z_i> (B, n) of the circuit in the module docstring; angles (B, n), couplings (B, L, P), weights (L, n, 2)."""
    batch, n = angles.shape
    n_layers = weights.shape[0]
    z, zz = (t.to(angles.device, angles.dtype) for t in _sign_tables(n))
    half = angles / 2
    re = _kron_rows(torch.stack([torch.cos(half), torch.sin(half)], dim=-1))
    im = torch.zeros_like(re)
    for layer in range(n_layers):
        phase = -0.5 * (weights[layer, :, 1] @ z.T + couplings[:, layer, :] @ zz.T)  # (B, 2^n)
        c, s = torch.cos(phase), torch.sin(phase)
        re, im = re * c - im * s, re * s + im * c
        ry = _ry_matrix(weights[layer, :, 0])
        re, im = re @ ry.T, im @ ry.T
    return (re * re + im * im) @ z


def _pennylane_qnode(n_qubits: int, n_layers: int, device: str):
    """QNode(angles (B, n), couplings (B, L, P), weights (L, n, 2)) -> n tensors <Z_i> (B,), broadcast over B."""
    import pennylane as qml

    try:
        qdevice = qml.device(device, wires=n_qubits)
    except Exception as error:  # PennyLane raises DeviceError/ImportError depending on the plugin
        raise ValueError(f"PennyLane device {device!r} is not available: {error}") from error
    pairs = wire_pairs(n_qubits)

    @qml.qnode(qdevice, interface="torch", diff_method="backprop")
    def circuit(angles: Tensor, couplings: Tensor, weights: Tensor):
        qml.AngleEmbedding(angles, wires=range(n_qubits), rotation="Y")
        for layer in range(n_layers):
            for wire in range(n_qubits):
                qml.RZ(weights[layer, wire, 1], wires=wire)
            for p, (i, j) in enumerate(pairs):
                qml.IsingZZ(couplings[:, layer, p], wires=[i, j])
            for wire in range(n_qubits):
                qml.RY(weights[layer, wire, 0], wires=wire)
        return [qml.expval(qml.PauliZ(wire)) for wire in range(n_qubits)]

    return circuit


class LearnedEntanglementHead(nn.Module):
    """Features (B, n) -> <Z_0..Z_{n-1}> (B, n) through the attention-coupled circuit of the module docstring.

    Parameters: ``weights`` (L, n, 2) ~ init_scale * N(0, 1); ``layer_gain`` (L,) = 1; the attention's
    ``feature_vector`` u (d,), ``wire_embedding`` (n, d), ``query`` and ``key`` (d x d, no bias). After a forward pass
    ``strengths`` holds s_ij (B, P) for ``wire_pairs(n)``, detached.
    """

    def __init__(self, n_qubits: int = 8, n_layers: int = 3, attention_dim: int = 8, backend: str = "torch",
                 device: str = "default.qubit", init_scale: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        for name, value in (("n_qubits", n_qubits), ("n_layers", n_layers), ("attention_dim", attention_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if n_qubits < 2:
            raise ValueError(f"n_qubits must be >= 2 for a pair to entangle, got {n_qubits}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.n_qubits, self.n_layers, self.attention_dim, self.backend = n_qubits, n_layers, attention_dim, backend

        def draw(*shape: int, scale: float) -> nn.Parameter:
            return nn.Parameter(scale * torch.randn(shape, generator=generator))

        self.weights = draw(n_layers, n_qubits, 2, scale=init_scale)
        self.layer_gain = nn.Parameter(torch.ones(n_layers))
        self.feature_vector = draw(attention_dim, scale=1.0)
        self.wire_embedding = draw(n_qubits, attention_dim, scale=1.0)
        self.query = nn.Linear(attention_dim, attention_dim, bias=False)
        self.key = nn.Linear(attention_dim, attention_dim, bias=False)
        with torch.no_grad():
            for linear in (self.query, self.key):
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) / math.sqrt(attention_dim))
        pairs = wire_pairs(n_qubits)
        self.register_buffer("_first", torch.tensor([i for i, _ in pairs]), persistent=False)
        self.register_buffer("_second", torch.tensor([j for _, j in pairs]), persistent=False)
        self.strengths: Tensor | None = None
        self._circuit = _pennylane_qnode(n_qubits, n_layers, device) if backend == "pennylane" else None

    def pair_strengths(self, h: Tensor) -> Tensor:
        """s_ij (B, P) in (0, 1) from features h (B, n), symmetric in i and j."""
        tokens = h[:, :, None] * self.feature_vector + self.wire_embedding  # (B, n, d)
        q, k = self.query(tokens), self.key(tokens)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(self.attention_dim)  # (B, n, n)
        symmetric = (scores + scores.transpose(1, 2)) / 2
        return torch.sigmoid(symmetric[:, self._first, self._second])

    def circuit_inputs(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(angles (B, n), couplings (B, L, P)) that the features h give the circuit."""
        strengths = self.pair_strengths(h)
        self.strengths = strengths.detach()
        couplings = math.pi * self.layer_gain[None, :, None] * strengths[:, None, :]
        return math.pi * torch.tanh(h), couplings

    def extra_repr(self) -> str:
        return (f"n_qubits={self.n_qubits}, n_layers={self.n_layers}, attention_dim={self.attention_dim}, "
                f"backend={self.backend!r}")

    def forward(self, h: Tensor) -> Tensor:
        if h.ndim != 2 or h.shape[-1] != self.n_qubits or not h.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor of shape (batch, {self.n_qubits}), got "
                             f"{tuple(h.shape)} {h.dtype}")
        angles, couplings = self.circuit_inputs(h)
        if self.backend == "torch":
            dtype = torch.promote_types(h.dtype, self.weights.dtype)
            return simulate(angles.to(dtype), couplings.to(dtype), self.weights.to(dtype)).to(h.dtype)
        outputs = self._circuit(angles.to(torch.float64), couplings.to(torch.float64), self.weights.to(torch.float64))
        return torch.stack([out.reshape(h.shape[0]) for out in outputs], dim=-1).to(h.dtype)
