"""The hybrid classical-quantum ECG classifier, its classical twin and the gated dual path.

``ECGNet`` = Conv1D feature extractor over a (channels, T) window -> global average pool ->
``proj`` (linear map to 2**n_qubits features) -> head -> one logit per class. The
channel and class counts come from the data set's ``DatasetSpec``.
Hybrid head: amplitude embedding + StronglyEntanglingLayers + Pauli-Z read-out
(``common.quantum.QuantumLayer``), so ``fc`` maps n_qubits read-outs to the classes.
Classical head: tanh on the 2**n_qubits features, so ``fc`` maps 2**n_qubits to the classes.
Gated head (the ECG design note's fusion on today's paths): both heads on the same features,
``out = (1 - alpha) * classical_fc(tanh(z)) + alpha * fc(quantum(z))`` with ``alpha = sigmoid(gate)``,
``gate`` (``FusionGate``) one learned number starting at 0 (alpha = 1/2).

Parameters are grouped into named *layers* (``conv1`` .. ``conv4``, ``proj``, ``quantum``,
``fc``, and ``classical_fc``, ``gate`` when gated): the unit the strategy encrypts, freezes and
leaves off the wire. ``build_model`` also builds the note's spiking model (``common.green_model``).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from common.quantum import QuantumLayer
from data_prep.registry import dataset_spec

QUANTUM_LAYERS = frozenset({"quantum"})  # every model's quantum circuit: never frozen


def in_float32(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) in float32 even under autocast: a state-vector simulation in float16 loses the read-out."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return module(x.float())
    return module(x)


class FusionGate(nn.Module):
    """``(1 - alpha) * classical + alpha * quantum`` with ``alpha = sigmoid(logit)``, ``logit`` learned from 0."""

    def __init__(self) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(1))

    @property
    def alpha(self) -> float:
        return float(torch.sigmoid(self.logit.detach()))

    def forward(self, classical: torch.Tensor, quantum: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.logit)
        return (1 - alpha) * classical + alpha * quantum.to(classical.dtype)


def _conv_block(c_in: int, c_out: int, kernel: int, pool: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: no running statistics to average across non-IID clients.
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
        nn.GroupNorm(4, c_out),
        nn.ReLU(),
        nn.MaxPool1d(pool),
    )


class LayeredModel(nn.Module):
    """A model whose parameters group into named layers: the first component of each parameter's name."""

    def layer_names(self) -> list[str]:
        return list(OrderedDict.fromkeys(name.split(".")[0] for name, _ in self.named_parameters()))


class ECGNet(LayeredModel):
    """Conv1D extractor + hybrid (quantum), classical or gated (both) head for multi-label ECG."""

    BLOCKS = ("conv1", "conv2", "conv3", "conv4")
    HEADS = ("hybrid", "classical", "gated")

    def __init__(self, in_channels: int, num_classes: int, head: str = "hybrid", n_qubits: int = 4,
                 n_layers: int = 2, quantum_backend: str = "torch", width: int = 32) -> None:
        super().__init__()
        if head not in self.HEADS:
            raise ValueError(f"head must be one of {self.HEADS}, got {head!r}")
        self.head = head
        self.num_classes = num_classes
        self.n_qubits = n_qubits
        self.conv1 = _conv_block(in_channels, width, 7, 4)
        self.conv2 = _conv_block(width, width, 5, 4)
        self.conv3 = _conv_block(width, 2 * width, 5, 2)
        self.conv4 = _conv_block(2 * width, 2 * width, 3, 1)
        self.proj = nn.Linear(2 * width, 2 ** n_qubits)
        if head in ("hybrid", "gated"):
            self.quantum = QuantumLayer(n_qubits, n_layers, backend=quantum_backend)
            self.fc = nn.Linear(n_qubits, num_classes)
        else:
            self.fc = nn.Linear(2 ** n_qubits, num_classes)
        if head == "gated":
            self.classical_fc = nn.Linear(2 ** n_qubits, num_classes)
            self.gate = FusionGate()
        self.head_layers = tuple(n for n in ("proj", "quantum", "fc", "classical_fc", "gate") if hasattr(self, n))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The extractor's time-averaged output: (B, channels, T) -> (B, 2 * width)."""
        return self.conv4(self.conv3(self.conv2(self.conv1(x)))).mean(dim=-1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Classical part up to the quantum input: (B, channels, T) -> (B, 2**n_qubits)."""
        return self.proj(self.pooled(x))

    @staticmethod
    def head_forward(owner: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features through ``owner``'s head layers (an ECGNet, or a split head holding them)."""
        z = owner.proj(h)
        if owner.head == "classical":
            return owner.fc(torch.tanh(z))
        quantum = owner.fc(in_float32(owner.quantum, z))
        return quantum if owner.head == "hybrid" else owner.gate(owner.classical_fc(torch.tanh(z)), quantum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_forward(self, self.pooled(x))

    @property
    def fusion_alpha(self) -> float | None:
        """The gate's alpha (weight of the quantum path), or None without a gate."""
        return self.gate.alpha if self.head == "gated" else None


def build_model(cfg) -> nn.Module:
    """Model for a ``RunConfig``, shaped by its data set's spec; the seed gives every client the same start."""
    spec = dataset_spec(cfg.dataset)
    torch.manual_seed(cfg.seed)
    if cfg.model == "green":
        from common.green_model import GreenNet  # imports snntorch: only the green model needs it

        return GreenNet(spec.num_channels, spec.num_classes, n_qubits=cfg.green_qubits, n_layers=cfg.green_layers,
                        spiking=cfg.green_spiking, binary=cfg.green_binary, entanglement=cfg.green_entanglement,
                        paths=cfg.green_paths, num_steps=cfg.green_steps, quantum_backend=cfg.quantum_backend)
    return ECGNet(spec.num_channels, spec.num_classes, head=cfg.model, n_qubits=cfg.n_qubits, n_layers=cfg.n_layers,
                  quantum_backend=cfg.quantum_backend)


def layer_of(param_name: str) -> str:
    return param_name.split(".")[0]


def state_by_layer(model: nn.Module, layers: set[str] | None = None) -> "OrderedDict[str, np.ndarray]":
    """Parameter arrays keyed by full name, restricted to the given layers (all when None)."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, tensor in model.state_dict().items():
        if layers is None or layer_of(name) in layers:
            out[name] = tensor.detach().cpu().numpy().copy()
    return out


def load_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Overwrite the named parameters, checking names and shapes (arrays come from the network)."""
    state = model.state_dict()
    for name, value in arrays.items():
        if name not in state:
            raise ValueError(f"unknown parameter '{name}' for this model; expected one of {sorted(state)}")
        if tuple(value.shape) != tuple(state[name].shape):
            raise ValueError(f"parameter '{name}' has shape {tuple(value.shape)}; expected {tuple(state[name].shape)}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"parameter '{name}' holds non-finite values")
        state[name] = torch.as_tensor(value, dtype=state[name].dtype)
    model.load_state_dict(state)


def layer_vectors(arrays: "OrderedDict[str, np.ndarray]", layers: list[str]) -> dict[str, np.ndarray]:
    """Each layer's parameters concatenated in model order: the unit a freezing score is taken on."""
    return {layer: np.concatenate([v.ravel() for n, v in arrays.items() if layer_of(n) == layer]) for layer in layers}


def flatten_layers(arrays: "OrderedDict[str, np.ndarray]") -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([a.astype(np.float64).ravel() for a in arrays.values()])


def unflatten_like(flat: np.ndarray, template: "OrderedDict[str, np.ndarray]") -> "OrderedDict[str, np.ndarray]":
    expected = sum(a.size for a in template.values())
    if flat.size != expected:
        raise ValueError(f"flat vector has {flat.size} values; expected {expected}")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    offset = 0
    for name, arr in template.items():
        out[name] = flat[offset:offset + arr.size].reshape(arr.shape).astype(arr.dtype)
        offset += arr.size
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
