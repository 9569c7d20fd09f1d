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

A gated ``ECGNet`` splits the same way with its classical path and gate on the server too; the green model
(``common.green_model``) splits after its spiking pyramid (``stage3``): the client sends its firing rates. Both
take the plain variant only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.green_model import GreenNet
from common.spiking import pyramid_forward

CUT_POINTS = ("conv2", "conv3", "conv4", "stage3")  # the client's last block; stage3: the green model's only cut
DEFAULT_CUT = "conv4"
VARIANTS = ("plain", "u-shaped")


def model_cuts(model: nn.Module) -> tuple[str, ...]:
    """The cut points ``model`` offers: after conv2, conv3 or conv4 (ECGNet); after the whole spiking pyramid
    (green: an earlier cut would send spike trains per time step, which is not built)."""
    return ("stage3",) if _is_green(model) else CUT_POINTS[:3]


def _is_green(model: nn.Module) -> bool:
    return isinstance(model, GreenNet)


class ClientExtractor(nn.Module):
    """The client's blocks up to the cut; at the last block it also averages over time (the green model: its
    spiking pyramid, which gives firing rates)."""

    def __init__(self, model: nn.Module, cut: str) -> None:
        super().__init__()
        blocks = model.BLOCKS
        self.blocks = nn.ModuleDict({name: getattr(model, name) for name in blocks[:blocks.index(cut) + 1]})
        self.pool = cut == blocks[-1]
        self.spiking_steps = model.num_steps if _is_green(model) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spiking_steps:
            return pyramid_forward(list(self.blocks.values()), x, self.spiking_steps)[0]
        for block in self.blocks.values():
            x = block(x)
        return x.mean(dim=-1) if self.pool else x


class ServerHead(nn.Module):
    """The blocks after the cut, the time average and the model's head layers (``proj``, the quantum layer and,
    when plain, ``fc``; a gated model's classical path and gate too), sharing the model's modules."""

    def __init__(self, model: nn.Module, cut: str, variant: str) -> None:
        super().__init__()
        blocks = model.BLOCKS
        self.blocks = nn.ModuleDict({name: getattr(model, name) for name in blocks[blocks.index(cut) + 1:]})
        self.pooled_input = cut == blocks[-1]
        self.num_classes = model.num_classes
        self.variant = variant
        self.head_forward = type(model).head_forward  # a plain function of (holder of the head layers, features)
        for attribute in ("head", "paths"):  # what head_forward reads to pick its path
            if hasattr(model, attribute):
                setattr(self, attribute, getattr(model, attribute))
        for name in model.head_layers:
            if variant == "plain" or name != "fc":
                setattr(self, name, getattr(model, name))

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        h = activations
        for block in self.blocks.values():
            h = block(h)
        if not self.pooled_input:
            h = h.mean(dim=-1)
        if self.variant == "plain":
            return self.head_forward(self, h)
        return self.quantum(self.proj(h))  # U-shaped (hybrid only): the read-outs


@dataclass
class SplitParts:
    """``top`` is the client's final layer in the U-shaped variant, else None."""

    extractor: ClientExtractor
    head: ServerHead
    top: nn.Module | None


def check_split(cut: str, variant: str, model: nn.Module | None = None) -> None:
    cuts = model_cuts(model) if model is not None else CUT_POINTS
    if cut not in cuts:
        raise ValueError(f"split cut {cut!r}: expected one of {', '.join(cuts)}")
    if variant not in VARIANTS:
        raise ValueError(f"split variant {variant!r}: expected one of {', '.join(VARIANTS)}")


def split_model(model: nn.Module, cut: str = DEFAULT_CUT, variant: str = "plain") -> SplitParts:
    """Cut ``model`` at ``cut``; the parts share its modules (and so its weights)."""
    check_split(cut, variant, model)
    if not hasattr(model, "quantum"):
        raise ValueError("split learning needs a model with a quantum head on the server (hybrid, gated or green "
                         "with its quantum path)")
    if variant == "u-shaped" and getattr(model, "head", None) != "hybrid":
        raise ValueError("the U-shaped variant needs the hybrid model (the client's final layer reads the quantum "
                         "read-outs alone)")
    return SplitParts(ClientExtractor(model, cut), ServerHead(model, cut, variant),
                      model.fc if variant == "u-shaped" else None)


def client_layers(model: nn.Module, cut: str = DEFAULT_CUT, variant: str = "plain") -> list[str]:
    """The model's layers a client holds at ``cut`` (its blocks, and ``fc`` when U-shaped), in model order:
    the layers the round-end averaging weights, encrypts and freezes."""
    check_split(cut, variant, model)
    blocks = model.BLOCKS
    held = set(blocks[:blocks.index(cut) + 1]) | ({"fc"} if variant == "u-shaped" else set())
    return [layer for layer in model.layer_names() if layer in held]
