"""The hybrid model cut in two (or three) for split learning: client extractor, server head, client top.

``ECGNet`` computes ``fc(quantum(proj(mean_t(conv4(conv3(conv2(conv1(x))))))))``. A cut point names
the client's last convolution block; the client sends that block's output (the activations) and
the server runs the rest of the classical path, the map to ``2**n_qubits`` (``proj``) and the
quantum layer. Two variants:

- ``plain``: the server also holds the final layer ``fc``, receives the labels and computes the
  loss; it returns the gradient of the loss with respect to the activations.
- ``u-shaped`` (label-private): ``fc`` and the loss stay on the client; the server returns its
  quantum read-outs, the client returns their gradient, the server back-propagates it and returns
  the gradient with respect to the activations. Labels never leave the client.

At the default cut ``conv4`` the client also takes the mean over time, so it sends one vector of
``2 * width`` values per example; at an earlier cut it sends the block's (channels, time) map and
the server finishes the convolutions. The pieces share the modules of the ``ECGNet`` they are cut
from, so composing them is the unsplit model, exactly (``tests/test_split_model.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.model import ECGNet

CUT_POINTS = ("conv2", "conv3", "conv4")  # the client's last convolution block
DEFAULT_CUT = "conv4"
VARIANTS = ("plain", "u-shaped")
CONV_BLOCKS = ("conv1", "conv2", "conv3", "conv4")


class ClientExtractor(nn.Module):
    """The client's blocks up to the cut; at ``conv4`` it also averages over time."""

    def __init__(self, model: ECGNet, cut: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({name: getattr(model, name) for name in CONV_BLOCKS[:CONV_BLOCKS.index(cut) + 1]})
        self.pool = cut == CONV_BLOCKS[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x.mean(dim=-1) if self.pool else x


class ServerHead(nn.Module):
    """The blocks after the cut, the time average, ``proj``, the quantum layer and, when plain, ``fc``."""

    def __init__(self, model: ECGNet, cut: str, variant: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({name: getattr(model, name) for name in CONV_BLOCKS[CONV_BLOCKS.index(cut) + 1:]})
        self.pooled_input = cut == CONV_BLOCKS[-1]
        self.proj = model.proj
        self.quantum = model.quantum
        self.fc = model.fc if variant == "plain" else None

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        h = activations
        for block in self.blocks.values():
            h = block(h)
        if not self.pooled_input:
            h = h.mean(dim=-1)
        z = self.quantum(self.proj(h))
        return self.fc(z) if self.fc is not None else z


@dataclass
class SplitParts:
    """``top`` is the client's final layer in the U-shaped variant, else None."""

    extractor: ClientExtractor
    head: ServerHead
    top: nn.Module | None


def check_split(cut: str, variant: str) -> None:
    if cut not in CUT_POINTS:
        raise ValueError(f"split cut {cut!r}: expected one of {', '.join(CUT_POINTS)}")
    if variant not in VARIANTS:
        raise ValueError(f"split variant {variant!r}: expected one of {', '.join(VARIANTS)}")


def split_model(model: ECGNet, cut: str = DEFAULT_CUT, variant: str = "plain") -> SplitParts:
    """Cut a hybrid ``model`` at ``cut``; the parts share its modules (and so its weights)."""
    check_split(cut, variant)
    if model.head != "hybrid":
        raise ValueError(f"split learning needs the hybrid model (a quantum head on the server), got {model.head!r}")
    return SplitParts(ClientExtractor(model, cut), ServerHead(model, cut, variant),
                      model.fc if variant == "u-shaped" else None)


def client_layers(model: ECGNet, cut: str = DEFAULT_CUT, variant: str = "plain") -> list[str]:
    """The model's layers a client holds at ``cut`` (its blocks, and ``fc`` when U-shaped), in model order:
    the layers the round-end averaging weights, encrypts and freezes."""
    check_split(cut, variant)
    held = set(CONV_BLOCKS[:CONV_BLOCKS.index(cut) + 1]) | ({"fc"} if variant == "u-shaped" else set())
    return [layer for layer in model.layer_names() if layer in held]
