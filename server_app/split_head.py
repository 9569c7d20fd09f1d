"""The server's half of split learning: the shared head, stepped on the activations clients send.

Plain variant, one step per batch: the client's activations ``a`` and labels ``y`` arrive; the
server computes ``L = loss(head(a), y)``, steps its optimiser on ``dL/d head``, and returns
``dL/da``. U-shaped variant, two exchanges per batch: :meth:`forward` returns the quantum
read-outs ``z = head(a)`` and keeps the graph for that client; :meth:`backward` receives
``dL/dz`` from the client (whose final layer and loss never leave it), back-propagates it, steps
the optimiser (once per exchange, on the sum over its clients and micro-batches: their forwards
all used the same weights) and returns ``dL/da``. Every array from the network is checked (shape, finite) first
and a bad one raises :class:`SplitInputError` naming the node and what was expected.

The head runs on CUDA when there is one, else on the CPU (:func:`head_device`, logged by the
ServerApp), with the torch backend of the quantum layer.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from common.split_model import ServerHead
from common.task import loss_function, optimiser_for


class SplitInputError(ValueError):
    """Activations, labels or gradients from a client that the head cannot use; names the node."""


def head_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _checked(array: np.ndarray, shape: tuple[int | None, ...], what: str, node: int) -> np.ndarray:
    expected = tuple("batch" if s is None else s for s in shape)
    if not isinstance(array, np.ndarray) or array.ndim != len(shape) or any(
            s is not None and s != got for s, got in zip(shape, array.shape)):
        got = getattr(array, "shape", type(array).__name__)
        raise SplitInputError(f"node {node}: {what} of shape {got}; expected {expected}")
    if not np.all(np.isfinite(array)):
        raise SplitInputError(f"node {node}: {what} holds non-finite values; expected finite numbers")
    return array


class SplitHeadTrainer:
    """One head, its optimiser, and the graphs of U-shaped forwards awaiting their gradients."""

    def __init__(self, head: ServerHead, activation_shape: tuple[int, ...], task: str, *, optimiser: str = "adam",
                 learning_rate: float = 1e-3, weight_decay: float = 0.0, device: str | None = None) -> None:
        self.device = device or head_device()
        self.head = head.to(self.device).train()
        self.activation_shape = tuple(activation_shape)  # per example, as the client's cut gives it
        self.task, self.optimiser_name, self.learning_rate = task, optimiser, learning_rate
        self.weight_decay = weight_decay
        self.loss_fn = loss_function(task)
        self.optimiser = optimiser_for(self.head.parameters(), optimiser, learning_rate, weight_decay)
        self.optimiser.zero_grad()
        self._pending: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (node, micro-batch)

    def _activations(self, activations: np.ndarray, node: int) -> torch.Tensor:
        array = _checked(activations, (None, *self.activation_shape), "activations", node)
        return torch.as_tensor(array, dtype=torch.float32, device=self.device).requires_grad_(True)

    def copy(self) -> SplitHeadTrainer:
        """A copy of the head with a fresh optimiser (per-client heads, averaged at round end)."""
        return SplitHeadTrainer(copy.deepcopy(self.head), self.activation_shape, self.task,
                                optimiser=self.optimiser_name, learning_rate=self.learning_rate,
                                weight_decay=self.weight_decay, device=self.device)

    def load_average(self, copies: list[SplitHeadTrainer], weights: list[float]) -> None:
        """Set the head to the ``weights``-weighted mean of the copies' parameters."""
        total = float(sum(weights))
        states = [c.head.state_dict() for c in copies]
        self.head.load_state_dict({name: sum(w / total * state[name] for w, state in zip(weights, states))
                                   for name in states[0]})

    def plain_step(self, activations: np.ndarray, labels: np.ndarray, node: int) -> tuple[np.ndarray, float]:
        """(dL/da, L) for one batch; the head's optimiser has stepped."""
        a = self._activations(activations, node)
        out_dim = self.head.num_classes
        y = torch.as_tensor(_checked(labels, (a.shape[0], out_dim), "labels", node), dtype=torch.float32,
                            device=self.device)
        self.optimiser.zero_grad()
        loss = self.loss_fn(self.head(a), y)
        loss.backward()
        self.optimiser.step()
        return a.grad.detach().cpu().numpy(), float(loss.detach())

    def forward(self, activations: np.ndarray, node: int, micro: int = 0) -> np.ndarray:
        """U-shaped: the read-outs for this batch; the graph waits for :meth:`backward` from ``node``."""
        a = self._activations(activations, node)
        z = self.head(a)
        self._pending[(node, micro)] = (a, z)
        return z.detach().cpu().numpy()

    def backward(self, grad_readouts: np.ndarray, node: int, micro: int = 0) -> np.ndarray:
        """U-shaped: back-propagate the client's dL/dz (accumulating the head's gradient); return dL/da.

        Every forward of one exchange used the same head weights, so the head steps once, in
        :meth:`step`, after the gradients of all of them are in (their sum).
        """
        if (node, micro) not in self._pending:
            raise SplitInputError(f"node {node}: gradient without a forward pass; expected read-outs first")
        a, z = self._pending[(node, micro)]
        grad = torch.as_tensor(_checked(grad_readouts, tuple(z.shape), "read-out gradient", node),
                               dtype=z.dtype, device=self.device)
        del self._pending[(node, micro)]
        z.backward(grad)
        return a.grad.detach().cpu().numpy()

    def step(self) -> None:
        """U-shaped: one optimiser step on the gradients :meth:`backward` accumulated, then clear them."""
        self.optimiser.step()
        self.optimiser.zero_grad()

    def forget(self, node: int) -> None:
        """Drop the graphs a node left waiting (it was dropped from the round)."""
        for key in [k for k in self._pending if k[0] == node]:
            del self._pending[key]

    @torch.no_grad()
    def predict(self, activations: np.ndarray, node: int) -> np.ndarray:
        """Outputs (plain: logits; U-shaped: read-outs) without training, for evaluation."""
        self.head.eval()
        try:
            return self.head(self._activations(activations, node).detach()).cpu().numpy()
        finally:
            self.head.train()
