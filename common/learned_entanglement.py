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

Backends: ``torch`` (state vector in PyTorch: per layer one diagonal phase and the RY block factored as
kron(A, B) over the two halves of the wires, two small real matmuls over the batch (see ``simulate``); follows
the input's device and dtype) and ``pennylane`` (a QNode with parameter
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
    """(B, g, 2) single-wire amplitudes -> (B, 2^g) product state, the first wire the most significant."""
    state = torch.ones_like(factors[:, :1, 0])
    for i in range(factors.shape[1]):
        state = (state[:, :, None] * factors[:, i, None, :]).reshape(state.shape[0], -1)
    return state


def _ry_matrix(thetas: Tensor) -> Tensor:
    """kron_i RY(theta_i) as a dense (2^g, 2^g) real matrix, the first wire the most significant."""
    c, s = torch.cos(thetas / 2), torch.sin(thetas / 2)
    out = torch.ones(1, 1, dtype=thetas.dtype, device=thetas.device)
    for i in range(thetas.shape[0]):
        out = torch.kron(out, torch.stack([torch.stack([c[i], -s[i]]), torch.stack([s[i], c[i]])]))
    return out


class _Gather(torch.autograd.Function):
    """Columns of a (B, m) tensor permuted by ``index``; the backward gathers with the inverse permutation (no
    scatter-add, which index_select's own backward would do)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:  # noqa: D102
        ctx.inverse = inverse
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return grad.index_select(1, ctx.inverse), None, None


@lru_cache(maxsize=16)
def _transposes(n_qubits: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Column permutations between the layouts Y = (2^h, 2, 2^(n-h)) [a, re/im, b] and X = (2^(n-h), 2, 2^h)
    [b, re/im, a], h = n // 2: X = Y[:, y_to_x] and Y = X[:, x_to_y]."""
    dim_a, dim_b = 2 ** (n_qubits // 2), 2 ** (n_qubits - n_qubits // 2)
    b, c, a = torch.meshgrid(torch.arange(dim_b), torch.arange(2), torch.arange(dim_a), indexing="ij")
    y_to_x = (a * 2 * dim_b + c * dim_b + b).reshape(-1)
    return y_to_x.to(device), torch.argsort(y_to_x).to(device)


def simulate(angles: Tensor, couplings: Tensor, weights: Tensor) -> Tensor:
    """<Z_i> (B, n) of the circuit in the module docstring; angles (B, n), couplings (B, L, P), weights (L, n, 2).

    Factored state-vector simulation: with h = n // 2, a layer's RY block is kron(A, B) (A over wires 0..h-1, B
    over the rest), applied as two real matmuls on the state laid out as [a, re/im, b] (B acts on b) and
    [b, re/im, a] (A acts on a); the layout alternates between layers, so each layer takes one gather. Per layer
    and row: 2^(n+1) (2^h + 2^(n-h)) multiply-adds instead of the dense RY block's 2^(2n+1).
    """
    batch, n = angles.shape
    high = n // 2
    dim_a, dim_b = 2**high, 2 ** (n - high)
    z, zz = (t.to(angles.device, angles.dtype) for t in _sign_tables(n))
    y_to_x, x_to_y = _transposes(n, angles.device)
    half = angles / 2
    factors = torch.stack([torch.cos(half), torch.sin(half)], dim=-1)
    real = _kron_rows(factors[:, :high])[:, :, None] * _kron_rows(factors[:, high:])[:, None, :]  # (B, a, b)
    state = torch.stack((real, torch.zeros_like(real)), dim=2)  # layout Y: (B, a, re/im, b)
    in_y = True
    for layer in range(weights.shape[0]):
        phase = (-0.5 * (weights[layer, :, 1] @ z.T + couplings[:, layer, :] @ zz.T)).view(batch, dim_a, dim_b)
        if not in_y:
            phase = phase.transpose(1, 2)  # X order (b, a)
        cos, sin = torch.cos(phase), torch.sin(phase)
        re, im = state.unbind(2)
        state = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=2)
        block_a, block_b = _ry_matrix(weights[layer, :high, 0]), _ry_matrix(weights[layer, high:, 0])
        first, second = (block_b, block_a) if in_y else (block_a, block_b)
        state = (state.reshape(-1, first.shape[0]) @ first.T).view(batch, -1)
        state = _Gather.apply(state, y_to_x, x_to_y) if in_y else _Gather.apply(state, x_to_y, y_to_x)
        state = (state.view(-1, second.shape[0]) @ second.T).view(batch, -1, 2, second.shape[0])
        in_y = not in_y
    probabilities = state.square().sum(dim=2)  # (B, a, b) in layout Y, (B, b, a) in X
    if not in_y:
        probabilities = probabilities.transpose(1, 2)
    return probabilities.reshape(batch, -1) @ z


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
    ``strengths`` holds s_ij (B, P) for ``wire_pairs(n)``, detached. ``learned=False`` (the ablation) drops the
    attention: every pair gets s_ij = 1/2, the same couplings for every input.
    """

    def __init__(self, n_qubits: int = 8, n_layers: int = 3, attention_dim: int = 8, backend: str = "torch",
                 device: str = "default.qubit", init_scale: float = 0.1,
                 generator: torch.Generator | None = None, learned: bool = True) -> None:
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

        self.learned = learned
        self.weights = draw(n_layers, n_qubits, 2, scale=init_scale)
        self.layer_gain = nn.Parameter(torch.ones(n_layers))
        if learned:
            self.feature_vector = draw(attention_dim, scale=1.0)
            self.wire_embedding = draw(n_qubits, attention_dim, scale=1.0)
            self.query = nn.Linear(attention_dim, attention_dim, bias=False)
            self.key = nn.Linear(attention_dim, attention_dim, bias=False)
            with torch.no_grad():
                for linear in (self.query, self.key):
                    scaled = torch.randn(linear.weight.shape, generator=generator) / math.sqrt(attention_dim)
                    linear.weight.copy_(scaled)
        pairs = wire_pairs(n_qubits)
        self.register_buffer("_first", torch.tensor([i for i, _ in pairs]), persistent=False)
        self.register_buffer("_second", torch.tensor([j for _, j in pairs]), persistent=False)
        self.strengths: Tensor | None = None
        self._circuit = _pennylane_qnode(n_qubits, n_layers, device) if backend == "pennylane" else None

    def pair_strengths(self, h: Tensor) -> Tensor:
        """s_ij (B, P) in (0, 1) from features h (B, n), symmetric in i and j (1/2 everywhere when not learned)."""
        if not self.learned:
            return torch.full((h.shape[0], self._first.numel()), 0.5, dtype=h.dtype, device=h.device)
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
                f"backend={self.backend!r}, learned={self.learned}")

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
