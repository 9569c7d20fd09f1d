"""The hybrid classical-quantum ECG classifier and its classical twin.

``ECGNet`` = Conv1D feature extractor over a (channels, T) window -> global average pool ->
``proj`` (linear map to 2**n_qubits features) -> head -> ``fc`` (one logit per class). The
channel and class counts come from the data set's ``DatasetSpec``.
Hybrid head: amplitude embedding + StronglyEntanglingLayers + Pauli-Z read-out
(``common.quantum.QuantumLayer``), so ``fc`` maps n_qubits read-outs to the classes.
Classical head: tanh on the 2**n_qubits features, so ``fc`` maps 2**n_qubits to the classes.

Parameters are grouped into named *layers* (``conv1`` .. ``conv4``, ``proj``, ``quantum``,
``fc``): the unit the strategy encrypts, freezes and leaves off the wire.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from common.quantum import QuantumLayer
from data_prep.registry import dataset_spec

QUANTUM_LAYERS = frozenset({"quantum"})


def _conv_block(c_in: int, c_out: int, kernel: int, pool: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: no running statistics to average across non-IID clients.
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
        nn.GroupNorm(4, c_out),
        nn.ReLU(),
        nn.MaxPool1d(pool),
    )


class ECGNet(nn.Module):
    """Conv1D extractor + hybrid (quantum) or classical head for multi-label ECG."""

    def __init__(self, in_channels: int, num_classes: int, head: str = "hybrid", n_qubits: int = 4,
                 n_layers: int = 2, quantum_backend: str = "torch", width: int = 32) -> None:
        super().__init__()
        if head not in ("hybrid", "classical"):
            raise ValueError(f"head must be 'hybrid' or 'classical', got {head!r}")
        self.head = head
        self.n_qubits = n_qubits
        self.conv1 = _conv_block(in_channels, width, 7, 4)
        self.conv2 = _conv_block(width, width, 5, 4)
        self.conv3 = _conv_block(width, 2 * width, 5, 2)
        self.conv4 = _conv_block(2 * width, 2 * width, 3, 1)
        self.proj = nn.Linear(2 * width, 2 ** n_qubits)
        if head == "hybrid":
            self.quantum = QuantumLayer(n_qubits, n_layers, backend=quantum_backend)
            self.fc = nn.Linear(n_qubits, num_classes)
        else:
            self.fc = nn.Linear(2 ** n_qubits, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Classical part up to the quantum input: (B, channels, T) -> (B, 2**n_qubits)."""
        h = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.proj(h.mean(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        z = self.quantum(z) if self.head == "hybrid" else torch.tanh(z)
        return self.fc(z)

    def layer_names(self) -> list[str]:
        return list(OrderedDict.fromkeys(name.split(".")[0] for name, _ in self.named_parameters()))


def build_model(cfg) -> ECGNet:
    """Model for a ``RunConfig``, shaped by its data set's spec; the seed gives every client the same start."""
    spec = dataset_spec(cfg.dataset)
    torch.manual_seed(cfg.seed)
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
