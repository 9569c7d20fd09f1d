"""The client's half of split learning: its extractor (and, U-shaped, its final layer and loss).

A step on one batch ``x, y``: :meth:`forward` runs the extractor and keeps the graph; the client
sends the activations ``a`` (plain: with ``y``). U-shaped, the server answers with its quantum
read-outs ``z``; :meth:`top_step` computes ``L = loss(fc(z), y)`` here, steps ``fc`` and returns
``dL/dz`` for the server. Either way the server finally returns ``dL/da`` and :meth:`backward`
back-propagates it through the extractor and steps. Raw signals and (U-shaped) labels never leave
the client; gradients from the network are checked (shape, finite) before use.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.task import loss_function, optimiser_for


class SplitClientTrainer:
    """The extractor, the optional final layer, one optimiser over both, and the pending graph."""

    def __init__(self, extractor: nn.Module, top: nn.Module | None, task: str, *, optimiser: str = "adam",
                 learning_rate: float = 1e-3, device: str = "cpu") -> None:
        self.device = device
        self.extractor = extractor.to(device).train()
        self.top = top.to(device).train() if top is not None else None
        params = list(self.extractor.parameters()) + (list(self.top.parameters()) if self.top is not None else [])
        self.optimiser = optimiser_for(params, optimiser, learning_rate)
        self.loss_fn = loss_function(task)
        self._activations: torch.Tensor | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The activations to send for batch ``x``; the graph waits for :meth:`backward`."""
        self.optimiser.zero_grad()
        self._activations = self.extractor(torch.as_tensor(x, device=self.device))
        return self._activations.detach().cpu().numpy()

    def top_step(self, readouts: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """U-shaped: (dL/dz, L) from the server's read-outs; ``fc``'s gradient waits for the step."""
        if self.top is None:
            raise ValueError("top_step is for the U-shaped variant; this client has no final layer")
        expected = (len(y), self.top.in_features)
        if readouts.shape != expected or not np.all(np.isfinite(readouts)):
            raise ValueError(f"read-outs of shape {readouts.shape}; expected finite values of shape {expected}")
        z = torch.as_tensor(readouts, device=self.device).requires_grad_(True)
        loss = self.loss_fn(self.top(z), torch.as_tensor(y, device=self.device))
        loss.backward()
        return z.grad.detach().cpu().numpy(), float(loss.detach())

    def backward(self, grad_activations: np.ndarray) -> None:
        """Back-propagate the server's dL/da through the extractor and step (``fc`` too, U-shaped)."""
        if self._activations is None:
            raise ValueError("a gradient arrived without a forward pass")
        expected = tuple(self._activations.shape)
        if grad_activations.shape != expected or not np.all(np.isfinite(grad_activations)):
            raise ValueError(f"activation gradient of shape {grad_activations.shape}; expected finite values of "
                             f"shape {expected}")
        self._activations.backward(torch.as_tensor(grad_activations, dtype=self._activations.dtype,
                                                   device=self.device))
        self.optimiser.step()
        self._activations = None
