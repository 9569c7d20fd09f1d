"""Local training and evaluation of a model (``common.model``) on in-memory arrays (Flower's ``task.py``).

The data set's task picks the loss and the output map (``data_prep.spec``):
- ``multilabel``: binary cross-entropy per class on the logits; probabilities are sigmoids;
- ``multiclass``: cross-entropy over the classes (targets are one-hot rows); probabilities are
  the softmax.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from common.metrics import classification_report
from common.model import layer_of

TASKS = ("multilabel", "multiclass")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {TASKS}")


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def loss_function(task: str):
    """BCE-with-logits on multi-hot targets, or cross-entropy on the class index of one-hot targets."""
    _check_task(task)
    if task == "multilabel":
        return nn.BCEWithLogitsLoss()
    cross_entropy = nn.CrossEntropyLoss()
    return lambda logits, onehot: cross_entropy(logits, onehot.argmax(dim=1))


OPTIMISERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine-restarts")


def optimiser_for(params, name: str, learning_rate: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (the default everywhere; weight_decay is an L2 penalty), AdamW (decoupled weight decay, the ECG design
    note's) or plain SGD (no momentum: what the split equivalence test compares)."""
    if name not in OPTIMISERS:
        raise ValueError(f"optimiser {name!r}: expected one of {OPTIMISERS}")
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=learning_rate, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=learning_rate, weight_decay=weight_decay)


def unfrozen_parameters(model: nn.Module, frozen_layers: frozenset[str]) -> list[nn.Parameter]:
    """Switch gradients off for the frozen layers' parameters and on for the rest; return the rest."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(layer_of(name) not in frozen_layers)
        if param.requires_grad:
            trainable.append(param)
    return trainable


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                learning_rate: float, seed: int, task: str,
                frozen_layers: frozenset[str] = frozenset(), device: str = "cpu", optimizer: str = "adam",
                weight_decay: float = 0.0, lr_schedule: str = "constant",
                mixed_precision: bool = False) -> dict[str, float]:
    """The optimiser on the task's loss; frozen layers get no gradient at all.

    ``lr_schedule="cosine-restarts"``: the learning rate follows one cosine from ``learning_rate`` to 0 over this
    call's batches (``CosineAnnealingWarmRestarts`` with the cycle one round's local training), so every round
    restarts it: SGDR (Loshchilov and Hutter, ICLR 2017) with the round as the cycle. ``mixed_precision``: float16
    autocast with a gradient scaler on CUDA; ignored on the CPU. Returns the mean training loss of the last epoch
    and the number of examples.
    """
    if len(x) == 0:
        raise ValueError("cannot train on an empty partition")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {lr_schedule!r}: expected one of {LR_SCHEDULES}")
    model.to(device).train()
    optim = optimiser_for(unfrozen_parameters(model, frozen_layers), optimizer, learning_rate, weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optim, T_0=steps)
                if lr_schedule == "cosine-restarts" else None)
    amp = mixed_precision and str(device).startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = loss_function(task)
    rng = np.random.default_rng(seed)
    xt = torch.as_tensor(x)
    yt = torch.as_tensor(y)
    last_loss = math.nan
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in _batches(len(x), batch_size, rng):
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            optim.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                loss = loss_fn(model(xb).float(), yb)
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
            if schedule is not None:
                schedule.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last_loss = total / count
    for param in model.parameters():
        param.requires_grad_(True)
    return {"train_loss": last_loss, "num_examples": int(len(x))}


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, task: str, batch_size: int = 256,
            device: str = "cpu") -> np.ndarray:
    """(N, classes) probabilities: sigmoids (multi-label) or softmax rows (multi-class)."""
    _check_task(task)
    model.to(device).eval()
    squash = torch.sigmoid if task == "multilabel" else (lambda z: torch.softmax(z, dim=1))
    out = [squash(model(torch.as_tensor(x[idx]).to(device))).cpu().numpy()
           for idx in _batches(len(x), batch_size, None)]
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), dtype=np.float32)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, task: str,
             device: str = "cpu") -> dict[str, float]:
    """Loss and metrics over every record once (see ``common.metrics``)."""
    return report_from_probabilities(predict(model, x, task, device=device), y, task)


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Sigmoids (multi-label) or softmax rows (multi-class) of logits computed elsewhere (split learning)."""
    _check_task(task)
    z = torch.as_tensor(logits, dtype=torch.float32)
    return (torch.sigmoid(z) if task == "multilabel" else torch.softmax(z, dim=1)).numpy()


def report_from_probabilities(probs: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """The task's loss on the probabilities, and the metrics of ``common.metrics``."""
    if len(probs) == 0:
        return classification_report(y, probs, math.nan, task)
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    if task == "multilabel":
        loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    else:
        loss = float(-np.mean(np.log(p[np.arange(len(y)), y.argmax(axis=1)])))
    return classification_report(y, probs, loss, task)
