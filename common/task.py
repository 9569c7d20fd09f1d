"""Local training and evaluation of an ``ECGNet`` on in-memory arrays (Flower's ``task.py``)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from common.metrics import classification_report, exact_match_correct
from common.model import layer_of


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                learning_rate: float, seed: int, frozen_layers: frozenset[str] = frozenset(),
                device: str = "cpu") -> dict[str, float]:
    """Adam on binary cross-entropy over the 5 labels; frozen layers get no gradient at all.

    Returns the mean training loss of the last epoch and the number of examples.
    """
    if len(x) == 0:
        raise ValueError("cannot train on an empty partition")
    model.to(device).train()
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(layer_of(name) not in frozen_layers)
        if param.requires_grad:
            trainable.append(param)
    optimizer = torch.optim.Adam(trainable, lr=learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    xt = torch.as_tensor(x)
    yt = torch.as_tensor(y)
    last_loss = math.nan
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in _batches(len(x), batch_size, rng):
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last_loss = total / count
    for param in model.parameters():
        param.requires_grad_(True)
    return {"train_loss": last_loss, "num_examples": int(len(x))}


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Sigmoid probabilities (N, 5)."""
    model.to(device).eval()
    out = [torch.sigmoid(model(torch.as_tensor(x[idx]).to(device))).cpu().numpy()
           for idx in _batches(len(x), batch_size, None)]
    return np.concatenate(out) if out else np.zeros((0, 5), dtype=np.float32)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, device: str = "cpu") -> dict[str, float]:
    """Loss and metrics over every record once (see ``common.metrics``)."""
    probs = predict(model, x, device=device)
    if len(x) == 0:
        return classification_report(y, probs, math.nan)
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return classification_report(y, probs, loss)


def count_correct(model: nn.Module, x: np.ndarray, y: np.ndarray, device: str = "cpu") -> int:
    """Exact-match correct records: the numerator of the accuracy a client privatises."""
    return exact_match_correct(y, predict(model, x, device=device))
