"""Variational quantum layer: amplitude embedding + PennyLane StronglyEntanglingLayers + <Z_i>.

For an input row x in R^(2^n) and weights w of shape (L, n, 3) the layer computes

    |psi(x)>  = x / ||x||_2                              (amplitude embedding; zero row -> |0...0>)
    U_l       = C_l (Rot(w[l,0]) (x) Rot(w[l,1]) (x) ... (x) Rot(w[l,n-1]))
    y_i       = <psi(x)| U_1^+ ... U_L^+  Z_i  U_L ... U_1 |psi(x)>,    i = 0..n-1

with PennyLane's exact conventions:

* ``Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi)`` and ``w[l, i] = (phi, theta, omega)``, i.e.
  ``Rot = [[e^{-i(phi+omega)/2} cos(theta/2), -e^{i(phi-omega)/2} sin(theta/2)],
          [e^{-i(phi-omega)/2} sin(theta/2),  e^{i(phi+omega)/2} cos(theta/2)]]``.
* ``C_l = CNOT(n-1, (n-1+r_l) % n) ... CNOT(1, (1+r_l) % n) CNOT(0, r_l % n)`` (CNOT(0, .) applied first) with
  PennyLane's default range ``r_l = (l mod (n-1)) + 1`` for n > 1; for n == 1 there is no CNOT.
* Wire 0 is the most significant bit of the basis-state index, so the state vector of ``n`` wires is
  ``kron(wire 0, wire 1, ..., wire n-1)`` and ``Z_i`` has eigenvalue ``z_i(k) = 1 - 2 * bit_i(k)`` on basis
  state ``k`` with ``bit_i(k) = (k >> (n-1-i)) & 1``.

Zero-row convention (both backends): a row whose squared norm is not larger than the smallest positive normal
float of its dtype (``torch.finfo(dtype).tiny``) is embedded as the basis state |0...0>, with zero gradient
with respect to that row. Other rows are embedded exactly as ``qml.AmplitudeEmbedding(x, normalize=True)`` does.

Simulation (torch backend): RZ is diagonal, so layer l acts as ``psi -> P_l Y_l D(gamma_l) psi`` with
``Y_l = kron_i RY(theta_li)`` real, ``P_l`` the CNOT permutation and ``D(gamma_l)`` a diagonal phase that
collects RZ(phi_l) and the previous layer's RZ(omega_{l-1}) moved through ``P_{l-1}``
(``P D(a) = D(a[source]) P``). The last layer's RZ(omega) is a phase right before the measurement and cannot
change <Z_i> (its gradient is exactly 0). The complex state is kept as real [re, im] tensors, so every
product is a real matmul.

Factored simulation (torch backend, n >= FACTORED_MIN_QUBITS): a layer's single-wire gates are
``kron(A_l, B_l)`` with A_l the kron of Rot over the h = n // 2 most significant wires and B_l over the others,
so ``(kron(A, B) psi)[a, b] = (A Psi B^T)[a, b]`` for psi viewed as the 2^h x 2^(n-h) matrix Psi[a, b]. A acts
on the state laid out as (b, re/im, a) and B on it laid out as (a, re/im, b), each as one real matmul over all
rows with the real 2^(h+1)- or 2^(n-h+1)-square form of the block; the layout changes, with the CNOT block folded
into one of them, are gathers. Per layer and batch row that is 2^(n+1) (2^(h+1) + 2^(n-h+1)) multiply-adds against
the dense block's 2^(2n+1): 4x fewer at 8 qubits, and no 2^n x 2^n matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

BACKENDS = ("torch", "pennylane")
PENNYLANE_DEVICES = ("default.qubit", "lightning.qubit", "lightning.gpu")
# From this many qubits "auto" takes the factored simulation (kron(A, B) per layer); below, the dense block is faster.
FACTORED_MIN_QUBITS = 7
DEFAULT_INIT_SCALE = 0.1

SimulationMethod = Literal["auto", "fused", "factored", "gatewise"]


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _unit_rows(x: Tensor, ground_state: Tensor) -> tuple[Tensor, Tensor]:
    """(a, s) with a = x * s, or ground_state on rows with ||x||^2 <= tiny, and s = 1/||x|| (0 there), (B, 1)."""
    squared_norm = (x * x).sum(dim=-1, keepdim=True)
    tiny = torch.finfo(x.dtype).tiny
    is_zero = squared_norm <= tiny
    # The clamp keeps rsqrt (and its derivative) finite on the rows the where discards.
    inverse_norm = torch.where(is_zero, 0.0, squared_norm.clamp_min(tiny).rsqrt())
    return torch.where(is_zero, ground_state, x * inverse_norm), inverse_norm


def normalized_amplitudes(x: Tensor) -> Tensor:
    """Rows of ``x`` divided by their L2 norm; rows with ``||x||^2 <= finfo.tiny`` become e_0 = |0...0>.

    Neither the value nor the gradient can be NaN; the gradient with respect to a zero row is exactly zero.
    """
    ground_state = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
    ground_state[0] = 1.0
    return _unit_rows(x, ground_state)[0]


def cnot_ranges(n_qubits: int, n_layers: int) -> tuple[int, ...]:
    """PennyLane's default StronglyEntanglingLayers ranges: r_l = (l mod (n-1)) + 1, or 0 (no CNOT) for n == 1."""
    if n_qubits == 1:
        return (0,) * n_layers
    return tuple((layer % (n_qubits - 1)) + 1 for layer in range(n_layers))


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


def pauli_z_signs(n_qubits: int) -> Tensor:
    """Float64 (2^n, n): eigenvalue of Z_i on basis state k, i.e. 1 - 2 * ((k >> (n-1-i)) & 1)."""
    basis = torch.arange(2**n_qubits)[:, None]
    shifts = torch.arange(n_qubits - 1, -1, -1)
    return (1 - 2 * ((basis >> shifts) & 1)).to(torch.float64)


def ry_factor_index(n_qubits: int, n_layers: int, first_wire: int, n_wires: int) -> Tensor:
    """LongTensor (L, 2^g, 2^g, g), g = n_wires: index[l, j, k, t] = 4 (l n + first_wire + t) + 2 j_t + k_t, where
    j_t is bit t of j (most significant first), so that
    kron_t RY(theta_(l, first_wire+t))[j, k] = prod_t F[index[l, j, k, t]] with
    F[4 (l n + i): 4 (l n + i) + 4] = (cos, -sin, sin, cos)(theta_li / 2), the row-major entries of RY(theta_li).
    """
    basis = torch.arange(2**n_wires)
    bits = (basis[:, None] >> torch.arange(n_wires - 1, -1, -1)) & 1
    wires = torch.arange(n_layers)[:, None] * n_qubits + first_wire + torch.arange(n_wires)
    return 4 * wires[:, None, None, :] + 2 * bits[None, :, None, :] + bits[None, None, :, :]


@dataclass(frozen=True)
class CircuitTables:
    """Weight-independent tables of an (n_qubits, n_layers) circuit, D = 2^n; sizes O(n D + L D) except the RY
    factor index (see below).

    angle_matrix (3n, 6D + 4n), angle_offset (6D + 4n): for layer l, ``w[l].flatten() @ angle_matrix + angle_offset``
      is [a(phi_l) + pi/2, a(phi_l), -a(phi_l), a(omega_l), a(omega_l), -a(omega_l), theta_li / 2 + s] with
      a(v)[k] = -1/2 sum_i v_i z_i(k), the phase angles of kron_i RZ(v_i), and s = (pi/2, pi, 0, pi/2) per wire,
      so that sines give [cos, sin, -sin](a) and the RY entries F = (cos, -sin, sin, cos)(theta_li / 2).
      The phase of layer l is gamma_l = a(phi_l) + a(omega_(l-1))[source_(l-1)], since P D(a) = D(a[source]) P.
    omega_source, omega_target (3 (L-1) D) long: flat positions in that (L, 6D + 4n) product of the
      [cos, sin, -sin]-rows of a(omega_l)[source_l] and of layer l+1's phase rows they are added to.
    gamma_adjoint (2D, 3n): [dL/dgamma_l, dL/da(omega_l)] @ gamma_adjoint = dL/dw[l] from the phases.
    source, inverse_source (L, D) long: (C_l psi)[j] = psi[source[l, j]], and the inverse permutation.
    z_signs (D, n): z_i(k); z_signs_t2 (n, D) = 2 z^T; z_half (D, n) = z / 2.
    flip_index (D n) long: entry (k, i) is flip_i(k) * D + k, where flip_i toggles wire i's bit.
    ground_state (D): e_0.
    high_factor_index / low_factor_index (L, d, d, g) long: kron of RY over the first h / last n-h wires of each
      layer as prod_t sin(product)[index[l, j, k, t]] (ry_factor_index, mapped to the flat positions of the RY
      entries); h = n // 2 for n > 5 (sizes O(L 2^n n)), else 0, and then the low index has its rows permuted by
      source already, so it gives P_l Y_l directly.
    """

    angle_matrix: Tensor
    angle_offset: Tensor
    omega_source: Tensor
    omega_target: Tensor
    gamma_adjoint: Tensor
    source: Tensor
    inverse_source: Tensor
    z_signs: Tensor
    z_signs_t2: Tensor
    z_half: Tensor
    flip_index: Tensor
    ground_state: Tensor
    high_factor_index: Tensor
    low_factor_index: Tensor

    @staticmethod
    def build(n_qubits: int, n_layers: int) -> CircuitTables:
        """All tables in float64 (float) and int64 (index) on the CPU."""
        dim = 2**n_qubits
        source = cnot_source_indices(n_qubits, n_layers)
        z_signs = pauli_z_signs(n_qubits)
        half_z = -0.5 * z_signs.mT  # (n, D): a(v) = v @ half_z
        angle_matrix = torch.zeros(n_qubits, 3, 6 * dim + 4 * n_qubits, dtype=torch.float64)
        for slot, start in ((0, 0), (2, 3 * dim)):  # phi -> first three blocks, omega -> next three
            angle_matrix[:, slot, start : start + dim] = half_z
            angle_matrix[:, slot, start + dim : start + 2 * dim] = half_z
            angle_matrix[:, slot, start + 2 * dim : start + 3 * dim] = -half_z
        for wire in range(n_qubits):
            angle_matrix[wire, 1, 6 * dim + 4 * wire : 6 * dim + 4 * wire + 4] = 0.5
        half_pi = math.pi / 2
        angle_offset = torch.zeros(6 * dim + 4 * n_qubits, dtype=torch.float64)
        angle_offset[:dim] = half_pi
        angle_offset[6 * dim :] = torch.tensor([half_pi, math.pi, 0.0, half_pi], dtype=torch.float64).repeat(n_qubits)
        gamma_adjoint = torch.zeros(2, dim, n_qubits, 3, dtype=torch.float64)
        gamma_adjoint[0, :, :, 0] = half_z.mT
        gamma_adjoint[1, :, :, 2] = half_z.mT
        basis = torch.arange(dim)[:, None]
        flip_index = (basis ^ (1 << torch.arange(n_qubits - 1, -1, -1))) * dim + basis
        ground_state = torch.zeros(dim, dtype=torch.float64)
        ground_state[0] = 1.0
        # Flat positions in the (L, 6D + 4n) product: omega blocks of layers 0..L-2 permuted by their source,
        # the phase blocks of layers 1..L-1 they are added to, and the RY entries.
        row_width = 6 * dim + 4 * n_qubits
        rows = torch.arange(n_layers - 1)[:, None, None] * row_width
        blocks = torch.arange(3)[None, :, None] * dim
        omega_source = rows + 3 * dim + blocks + source[:-1, None, :]
        omega_target = rows + row_width + blocks + torch.arange(dim)
        ry_positions = (torch.arange(n_layers)[:, None] * row_width + 6 * dim + torch.arange(4 * n_qubits)).reshape(-1)
        high = n_qubits // 2 if n_qubits > 5 else 0
        low_index = ry_positions[ry_factor_index(n_qubits, n_layers, high, n_qubits - high)]
        if high == 0:
            low_index = low_index.gather(1, source[:, :, None, None].expand_as(low_index))
        return CircuitTables(
            angle_matrix=angle_matrix.reshape(3 * n_qubits, -1),
            angle_offset=angle_offset,
            omega_source=omega_source.reshape(-1),
            omega_target=omega_target.reshape(-1),
            gamma_adjoint=gamma_adjoint.reshape(2 * dim, 3 * n_qubits),
            source=source,
            inverse_source=torch.argsort(source, dim=1),
            z_signs=z_signs,
            z_signs_t2=2 * z_signs.mT.contiguous(),
            z_half=0.5 * z_signs,
            flip_index=flip_index.reshape(-1),
            ground_state=ground_state,
            high_factor_index=ry_positions[ry_factor_index(n_qubits, n_layers, 0, high)],
            low_factor_index=low_index,
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> CircuitTables:
        """These tables on ``device`` with float tables in ``dtype`` (self when already there)."""
        if self.z_signs.dtype == dtype and self.z_signs.device == device:
            return self
        moved = {}
        for field in fields(self):
            value = getattr(self, field.name)
            moved[field.name] = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        return CircuitTables(**moved)


@lru_cache(maxsize=32)
def circuit_tables(n_qubits: int, n_layers: int) -> CircuitTables:
    """Cached CPU float64 tables for the functional API (cast to the compute dtype by simulate_expvals)."""
    return CircuitTables.build(n_qubits, n_layers)


def _layer_trig(weights: Tensor, tables: CircuitTables) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """cos(gamma) (L, 1, D), [sin; -sin](gamma) (L, 2, 1, D), [cos; sin](gamma_0) (2, 1, D), and the flat sines
    (L (6D + 4n)) whose RY-entry positions the factor indices address."""
    n_layers = weights.shape[0]
    dim = tables.ground_state.shape[0]
    pre = torch.addmm(tables.angle_offset, weights.reshape(n_layers, -1), tables.angle_matrix).view(-1)
    if n_layers > 1:
        # Add a(omega_(l-1))[source_(l-1)] to layer l's phase entries (in place: addmm saves no output).
        pre.index_add_(0, tables.omega_target, pre.index_select(0, tables.omega_source))
    flat = torch.sin(pre)
    phases = flat.view(n_layers, -1)[:, : 3 * dim].view(n_layers, 3, 1, dim)  # rows cos, sin, -sin
    return phases[:, 0], phases[:, 1:], phases[0, :2], flat


class _FusedExpvals(torch.autograd.Function):
    """<Z_i> of the circuit on rows of x with dense per-layer RY blocks and a hand-written backward.

    State rows psi (B, D) complex are stored as (2, B, D) [re, im]. Forward: a = unit rows of x,
    u_l = psi_l * exp(i gamma_l), psi_(l+1) = u_l Yhat_l^T with Yhat_l = P_l Y_l, out = |psi_L|^2 @ Z.
    Backward, with d = dL/dRe + i dL/dIm of a complex tensor and g = dL/dout:
    d_L = 2 (g Z^T) psi_L; du_l = d_(l+1) Yhat_l; dYhat_l = Re(d_(l+1))^T Re(u_l) + Im(...)^T Im(...);
    dgamma_l = sum_b (Im(du_l) Re(u_l) - Re(du_l) Im(u_l)); d_l = du_l exp(-i gamma_l); da = Re(d_0);
    dw from dgamma through gamma_adjoint, plus dtheta_li = 1/2 <dY_l, Y_l J_i> since dRY/dtheta = RY J / 2 with
    J = [[0, -1], [1, 0]] on wire i, i.e. dtheta_li = 1/2 sum_k (Y_l^T dY_l)[flip_i(k), k] z_i(k), where
    Y_l^T dY_l = Yhat_l^T dYhat_l (P_l is a permutation) = Yhat_l^T d_(l+1)^T u_l = du_l^T u_l;
    dx = s (da - a <a, da>) with s = 1/||x|| (0 for zero rows).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weights: Tensor, tables: CircuitTables) -> Tensor:  # noqa: D102
        n_layers = weights.shape[0]
        amplitudes, inverse_norm = _unit_rows(x, tables.ground_state)
        cos, sin_pm, first, sines = _layer_trig(weights, tables)
        blocks = _permuted_ry_blocks(sines, tables)
        blocks_t, cos_l, sin_pm_l = blocks.mT.unbind(0), cos.unbind(0), sin_pm.unbind(0)
        state = amplitudes * first  # u_0: (2, B, D)
        phased = [state]
        for layer in range(n_layers):
            if layer > 0:
                # u = psi exp(i gamma): [re c - im s, im c + re s] = psi * c - flip(psi) * [s; -s].
                state = torch.addcmul(state * cos_l[layer], state.flip(0), sin_pm_l[layer], value=-1)
                phased.append(state)
            state = state @ blocks_t[layer]
        ctx.save_for_backward(amplitudes, inverse_norm, cos, sin_pm, blocks, state, torch.stack(phased))
        ctx.tables = tables
        return state.square().sum(dim=0) @ tables.z_signs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # noqa: D102
        amplitudes, inverse_norm, cos, sin_pm, blocks, final, phased = ctx.saved_tensors
        tables: CircuitTables = ctx.tables
        n_layers, dim = blocks.shape[:2]
        blocks_l, cos_l, sin_pm_l = blocks.unbind(0), cos.unbind(0), sin_pm.unbind(0)
        phased_l = phased.unbind(0)
        need_weights = ctx.needs_input_grad[1]
        rows = 2 * amplitudes.shape[0]
        delta = (grad_out @ tables.z_signs_t2) * final
        overlaps, grad_us = [], []
        for layer in range(n_layers - 1, -1, -1):
            grad_u = delta @ blocks_l[layer]
            if need_weights:
                # Yhat^T dYhat = Yhat^T d^T u = du^T u (re and im rows together); one mm per layer rather than a
                # bmm, whose thread pool stalls on a busy machine.
                overlaps.append(grad_u.view(rows, dim).mT @ phased_l[layer].view(rows, dim))
                grad_us.append(grad_u)
            # d_l = du * exp(-i gamma): [re c + im s, im c - re s] = du * c + flip(du) * [s; -s].
            delta = torch.addcmul(grad_u * cos_l[layer], grad_u.flip(0), sin_pm_l[layer])
        grad_x = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_a = delta[0]
            grad_x = (grad_a - amplitudes * (amplitudes * grad_a).sum(dim=-1, keepdim=True)) * inverse_norm
        if need_weights:
            # cross[l] = [sum_b du_im u_re, sum_b du_re u_im]; dgamma = cross[:, 0] - cross[:, 1].
            cross = (torch.stack(grad_us[::-1]).flip(1) * phased).sum(dim=2)
            grad_gamma = torch.sub(*cross.unbind(1))
            # a(omega_l) enters gamma_(l+1) permuted by source_l: undo it with the inverse permutation.
            grad_omega = nn.functional.pad(grad_gamma[1:].gather(1, tables.inverse_source[:-1]), (0, 0, 0, 1))
            grad_phases = torch.cat((grad_gamma, grad_omega), dim=1)
            grad_weights = (grad_phases @ tables.gamma_adjoint).view(n_layers, -1, 3)
            overlap = torch.stack(overlaps[::-1]).view(n_layers, dim * dim)
            picked = overlap.index_select(1, tables.flip_index).view(n_layers, dim, -1)
            grad_weights[..., 1] += (picked * tables.z_half).sum(dim=1)
        return grad_x, grad_weights, None


def _factor_products(sines: Tensor, index: Tensor) -> Tensor:
    """(L, d, d): prod_t sines[index[l, j, k, t]] (index_select is cheaper than advanced indexing)."""
    return sines.index_select(0, index.view(-1)).view(index.shape).prod(dim=-1)


def _permuted_ry_blocks(sines: Tensor, tables: CircuitTables) -> Tensor:
    """Real (L, D, D): P_l kron_i RY(theta_li) from the flat sines of _layer_trig (see CircuitTables)."""
    blocks = _factor_products(sines, tables.low_factor_index)
    if tables.high_factor_index.shape[-1] == 0:
        return blocks  # rows already permuted by the index
    high = _factor_products(sines, tables.high_factor_index)
    n_layers, size = high.shape[0], high.shape[-1] * blocks.shape[-1]
    kron = (high[:, :, None, :, None] * blocks[:, None, :, None, :]).reshape(n_layers, size, size)
    return kron.gather(1, tables.source[:, :, None].expand_as(kron))


def _expvals_gatewise(x: Tensor, weights: Tensor, tables: CircuitTables) -> Tensor:
    """Same circuit through autograd, one 2x2 RY mixing per wire: memory O(B 2^n) instead of O(4^n)."""
    n_layers, n_qubits = weights.shape[:2]
    batch = x.shape[0]
    cos, sin_pm, first, sines = _layer_trig(weights, tables)
    dim = tables.ground_state.shape[0]
    ry = sines.view(n_layers, -1)[:, 6 * dim :].reshape(n_layers, n_qubits, 4)  # (cos, -sin, sin, cos)(theta / 2)
    state = _unit_rows(x, tables.ground_state)[0] * first
    for layer in range(n_layers):
        if layer > 0:
            state = state * cos[layer] - state.flip(0) * sin_pm[layer]
        for wire in range(n_qubits):
            # Axes (re/im x batch, wires before, this wire, wires after); wire 0 is the most significant bit.
            split = state.reshape(2 * batch, 2**wire, 2, 2 ** (n_qubits - 1 - wire))
            low, high = split[:, :, 0], split[:, :, 1]
            cos_half, sin_half = ry[layer, wire, 0], ry[layer, wire, 2]
            state = torch.stack((cos_half * low - sin_half * high, sin_half * low + cos_half * high), dim=2)
        state = state.reshape(2, batch, -1)[..., tables.source[layer]]
    return state.square().sum(dim=0) @ tables.z_signs


def rot_matrices(weights: Tensor) -> Tensor:
    """Complex (..., 2, 2) Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi) for weights (..., 3)."""
    phi, theta, omega = weights.unbind(-1)
    cos, sin = torch.cos(theta / 2), torch.sin(theta / 2)
    plus, minus = (phi + omega) / 2, (phi - omega) / 2
    real = torch.stack([torch.stack([torch.cos(plus) * cos, -torch.cos(minus) * sin], -1),
                        torch.stack([torch.cos(minus) * sin, torch.cos(plus) * cos], -1)], -2)
    imag = torch.stack([torch.stack([-torch.sin(plus) * cos, -torch.sin(minus) * sin], -1),
                        torch.stack([-torch.sin(minus) * sin, torch.sin(plus) * cos], -1)], -2)
    return torch.complex(real, imag)


def kron_wires(gates: Tensor) -> Tensor:
    """(L, g, 2, 2) per-wire gates -> (L, 2^g, 2^g) kron over the g wires, the first wire most significant."""
    n_layers = gates.shape[0]
    out = torch.ones(n_layers, 1, 1, dtype=gates.dtype, device=gates.device)
    for wire in range(gates.shape[1]):
        size = 2 * out.shape[-1]
        out = (out[:, :, None, :, None] * gates[:, wire, None, :, None, :]).reshape(n_layers, size, size)
    return out


@dataclass(frozen=True)
class FactoredTables:
    """Index tables of the factored simulation (module docstring) for (n_qubits, n_layers), D = 2^n, h = n // 2.

    The state is held in two layouts of 2D reals: X = (2^(n-h), 2, 2^h) with position (b, c, a) and
    Y = (2^h, 2, 2^(n-h)) with position (a, c, b), each holding the real (c = 0) or imaginary (c = 1) part of
    the amplitude of basis state a 2^(n-h) + b. A acts on X's last two axes, B on Y's. ``to_y`` (2D): Y = X[to_y];
    ``to_x[l]`` (L - 1, 2D): the state after layer l's rotations, moved by the CNOT block C_l and laid out as X,
    is Y[to_x[l]]; ``from_y`` and ``from_x`` are the inverse permutations (for the backward pass). The last
    layer's CNOT block only permutes the probabilities, so it is folded into ``z_last`` (D, n): z_i(source_L^-1(k))
    for the probability of basis state k before that block.
    """

    high: int
    to_y: Tensor
    from_y: Tensor
    to_x: Tensor
    from_x: Tensor
    z_last: Tensor

    @staticmethod
    def build(n_qubits: int, n_layers: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float64) -> FactoredTables:
        high = n_qubits // 2
        dim_a, dim_b = 2**high, 2 ** (n_qubits - high)

        def x_position(a: Tensor, c: Tensor, b: Tensor) -> Tensor:
            return b * 2 * dim_a + c * dim_a + a

        def y_position(a: Tensor, c: Tensor, b: Tensor) -> Tensor:
            return a * 2 * dim_b + c * dim_b + b

        a, c, b = torch.meshgrid(torch.arange(dim_a), torch.arange(2), torch.arange(dim_b), indexing="ij")
        to_y = x_position(a, c, b).reshape(-1)  # Y's position (a, c, b), in order, reads X's (a, c, b)
        b, c, a = torch.meshgrid(torch.arange(dim_b), torch.arange(2), torch.arange(dim_a), indexing="ij")
        sources = cnot_source_indices(n_qubits, n_layers)
        to_x = []
        for source in sources[:-1]:
            moved = source[a * dim_b + b]  # (C psi)[a, b] = psi[moved]
            to_x.append(y_position(moved // dim_b, c, moved % dim_b).reshape(-1))
        to_x = torch.stack(to_x) if to_x else torch.zeros(0, 4 * dim_a * dim_b, dtype=torch.long)
        z_last = pauli_z_signs(n_qubits)[torch.argsort(sources[-1])]
        return FactoredTables(high=high, to_y=to_y.to(device), from_y=torch.argsort(to_y).to(device),
                              to_x=to_x.to(device), from_x=torch.argsort(to_x, dim=1).to(device),
                              z_last=z_last.to(device, dtype))


@lru_cache(maxsize=64)
def factored_tables(n_qubits: int, n_layers: int, device: torch.device, dtype: torch.dtype) -> FactoredTables:
    return FactoredTables.build(n_qubits, n_layers, device, dtype)


class _FactoredExpvals(torch.autograd.Function):
    """<Z_i> from real amplitudes in X order (B, 2^(n-h) 2^h) through the factored layers, hand-written backward.

    Per layer, on rows of 2^(h+1) (X) and 2^(n-h+1) (Y) reals: s = x A_l^T; y = s[to_y]; t = y B_l^T;
    x' = t[to_x_l], with A_l, B_l the real forms [[Re, -Im], [Im, Re]] of the complex blocks; the first layer's
    input has no imaginary part, so it meets only A_0's left half. out = |t_L|^2 @ z_last. Backward, with
    g = dL/dx': dt = g[from_x_l]; dB_l = dt^T y; dy = dt B_l; ds = dy[from_y]; dA_l = ds^T x; dx = ds A_l;
    and dt_L = 2 t_L (dL/dout z_last^T). Every product is one plain matmul over all rows.
    """

    @staticmethod
    def forward(ctx, amplitudes: Tensor, blocks_a: Tensor, blocks_b: Tensor, tables: FactoredTables) -> Tensor:  # noqa: D102
        batch, width_a, width_b = amplitudes.shape[0], blocks_a.shape[-1], blocks_b.shape[-1]
        n_layers = blocks_a.shape[0]
        inputs, rotated = [amplitudes], []
        state = amplitudes.view(-1, width_a // 2) @ blocks_a[0, :, : width_a // 2].mT
        for layer in range(n_layers):
            if layer > 0:
                inputs.append(state)
                state = state.view(-1, width_a) @ blocks_a[layer].mT
            state = state.view(batch, -1).index_select(1, tables.to_y)
            rotated.append(state)
            state = state.view(-1, width_b) @ blocks_b[layer].mT
            if layer < n_layers - 1:
                state = state.view(batch, -1).index_select(1, tables.to_x[layer])
        final = state.view(batch, width_a // 2, 2, width_b // 2)
        ctx.save_for_backward(blocks_a, blocks_b, final, *inputs, *rotated)
        ctx.tables = tables
        return final.square().sum(dim=2).view(batch, -1) @ tables.z_last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # noqa: D102
        blocks_a, blocks_b, final, *saved = ctx.saved_tensors
        tables: FactoredTables = ctx.tables
        n_layers = blocks_a.shape[0]
        inputs, rotated = saved[:n_layers], saved[n_layers:]
        batch, width_a, width_b = grad_out.shape[0], blocks_a.shape[-1], blocks_b.shape[-1]
        grad_a, grad_b = torch.zeros_like(blocks_a), torch.empty_like(blocks_b)
        weights = (grad_out @ tables.z_last.mT).view(batch, width_a // 2, 1, width_b // 2)
        grad = (2 * final * weights).view(-1, width_b)
        for layer in range(n_layers - 1, -1, -1):
            if layer < n_layers - 1:
                grad = grad.view(batch, -1).index_select(1, tables.from_x[layer]).view(-1, width_b)
            torch.mm(grad.mT, rotated[layer].view(-1, width_b), out=grad_b[layer])
            grad = (grad @ blocks_b[layer]).view(batch, -1).index_select(1, tables.from_y).view(-1, width_a)
            if layer > 0:
                torch.mm(grad.mT, inputs[layer].view(-1, width_a), out=grad_a[layer])
                grad = grad @ blocks_a[layer]
        grad_a[0, :, : width_a // 2] = grad.mT @ inputs[0].view(-1, width_a // 2)
        grad_amplitudes = (grad @ blocks_a[0, :, : width_a // 2]).view(batch, -1)
        return grad_amplitudes, grad_a, grad_b, None


def _real_form(block: Tensor) -> Tensor:
    """Complex (..., d, d) M -> real (..., 2d, 2d) [[Re M, -Im M], [Im M, Re M]], acting on [re; im] vectors."""
    return torch.cat((torch.cat((block.real, -block.imag), -1), torch.cat((block.imag, block.real), -1)), -2)


def _expvals_factored(x: Tensor, weights: Tensor) -> Tensor:
    """Same circuit, factored per layer as kron(A_l, B_l) (module docstring); memory O(B 2^n)."""
    n_layers, n_qubits = weights.shape[:2]
    tables = factored_tables(n_qubits, n_layers, x.device, x.dtype)
    high = tables.high
    batch = x.shape[0]
    ground_state = torch.zeros(2**n_qubits, dtype=x.dtype, device=x.device)
    ground_state[0] = 1.0
    amplitudes = _unit_rows(x, ground_state)[0].view(batch, 2**high, -1).transpose(1, 2).reshape(batch, -1)
    gates = rot_matrices(weights)
    blocks_a, blocks_b = _real_form(kron_wires(gates[:, :high])), _real_form(kron_wires(gates[:, high:]))
    return _FactoredExpvals.apply(amplitudes, blocks_a, blocks_b, tables)


def simulate_expvals(
    x: Tensor, weights: Tensor, method: SimulationMethod = "auto", tables: CircuitTables | None = None
) -> Tensor:
    """<Z_i> (B, n) of StronglyEntanglingLayers(weights) on the amplitude embedding of the rows of x (B, 2^n).

    Computes in the promoted real dtype of x and weights (float32 in, float32 out). ``method``: "fused" (one
    real 2^n x 2^n matmul per layer, hand-written backward), "factored" (kron(A, B) per layer, hand-written
    backward), "gatewise" (2x2 mixing per wire through autograd) or "auto" (factored from FACTORED_MIN_QUBITS
    qubits, else fused). ``tables``: CircuitTables for "fused" and "gatewise", cast here to x's device and dtype.
    """
    n_layers, n_qubits = weights.shape[:2]
    dtype = torch.promote_types(x.dtype, weights.dtype)
    if method == "auto":
        method = "factored" if n_qubits >= FACTORED_MIN_QUBITS else "fused"
    if method == "factored":
        return _expvals_factored(x.to(dtype), weights.to(dtype))
    if tables is None:
        tables = circuit_tables(n_qubits, n_layers)
    tables = tables.to(x.device, dtype)
    if method == "fused":
        return _FusedExpvals.apply(x.to(dtype), weights.to(dtype), tables)
    if method == "gatewise":
        return _expvals_gatewise(x.to(dtype), weights.to(dtype), tables)
    raise ValueError(f"method must be one of 'auto', 'fused', 'factored', 'gatewise', got {method!r}")


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

    backend="torch": batched state-vector simulation in PyTorch (CPU or CUDA, follows the input's device), in the
    input's precision (float32 in, float32 out). backend="pennylane": a PennyLane QNode on ``device``
    (default.qubit, lightning.qubit, lightning.gpu) with diff_method "backprop" (default.qubit) or "adjoint"
    (lightning.*) unless given; it runs in float64 and returns the input's dtype. ``device`` and ``diff_method``
    only concern the pennylane backend. The torch backend's hand-written backward gives first-order gradients
    only (no double backward).
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
        self._tables: tuple | None = None  # (device, dtype, CircuitTables)
        if backend == "torch":
            if diff_method not in (None, "backprop"):
                raise ValueError(f"backend 'torch' supports only diff_method 'backprop', got {diff_method!r}")
            self.diff_method = "backprop"
            # The index tables are constants, cached per device and dtype rather than held as buffers: weights are
            # the only state, and Opacus refuses trainable modules with buffers (update-dp = "example").
        else:
            if diff_method is None:
                diff_method = "backprop" if device == "default.qubit" else "adjoint"
            self.diff_method = diff_method
            self._circuit = _pennylane_qnode(n_qubits, device, diff_method)

    def _current_tables(self, device: torch.device, dtype: torch.dtype) -> CircuitTables:
        """The cached float64 tables cast once to ``device`` and ``dtype`` (never rounded twice)."""
        cached = self._tables
        if cached is None or cached[0] != device or cached[1] != dtype:
            cached = self._tables = (device, dtype, circuit_tables(self.n_qubits, self.n_layers).to(device, dtype))
        return cached[2]

    def extra_repr(self) -> str:
        pennylane = f", device={self.device_name!r}, diff_method={self.diff_method!r}"
        return (
            f"n_qubits={self.n_qubits}, n_layers={self.n_layers}, backend={self.backend!r}"
            + (pennylane if self.backend == "pennylane" else "")
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 2^n) floating point -> <Z_0..Z_{n-1}> (B, n) in x's dtype; ValueError on any other shape."""
        expected = 2**self.n_qubits
        if x.ndim != 2 or x.shape[-1] != expected:
            raise ValueError(
                f"input must have shape (batch, {expected}) for n_qubits={self.n_qubits}, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor, got dtype {x.dtype}")
        weights = self.weights
        if self.backend == "torch":
            dtype = torch.promote_types(x.dtype, weights.dtype)
            if self.n_qubits >= FACTORED_MIN_QUBITS:
                return _expvals_factored(x.to(dtype), weights.to(dtype))
            return _FusedExpvals.apply(x.to(dtype), weights.to(dtype), self._current_tables(x.device, dtype))
        # Re-normalising inside the QNode is idempotent on unit rows and keeps PennyLane's own embedding.
        outputs = self._circuit(normalized_amplitudes(x).to(torch.float64), weights.to(torch.float64))
        return torch.stack([out.reshape(x.shape[0]) for out in outputs], dim=-1).to(x.dtype)
