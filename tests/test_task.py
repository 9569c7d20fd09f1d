"""The task picks the loss and the output map: checked against torch's own functions and by learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.model import build_model
from common.task import evaluate, loss_function, predict, train_local
from common.validation_scores import ValidationScore


def test_multiclass_loss_is_cross_entropy_of_the_true_class():
    rng = np.random.default_rng(0)
    logits = torch.as_tensor(rng.normal(size=(8, 4)), dtype=torch.float32)
    truth = torch.as_tensor(rng.integers(0, 4, size=8))
    onehot = torch.nn.functional.one_hot(truth, 4).float()
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(8), truth].mean()
    assert float(loss_function("multiclass")(logits, onehot)) == pytest.approx(float(expected), rel=1e-6)
    bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), onehot)
    assert float(loss_function("multilabel")(logits, onehot)) == pytest.approx(float(bce), rel=1e-5)
    with pytest.raises(ValueError, match="task 'regression'"):
        loss_function("regression")


def test_multiclass_training_learns_a_separable_task_and_reports_softmax():
    model = build_model(RunConfig(model="classical", seed=1))
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, size=200)
    x = rng.normal(0, 0.3, size=(200, 12, 100)).astype(np.float32)
    x[np.arange(200), truth, :] += 1.5  # the class is the lead that carries an offset
    y = np.eye(5, dtype=np.float32)[truth]
    before = evaluate(model, x, y, "multiclass")
    train_local(model, x, y, epochs=15, batch_size=32, learning_rate=3e-3, seed=0, task="multiclass")
    after = evaluate(model, x, y, "multiclass")
    probs = predict(model, x, "multiclass")
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.9, (before, after)
    assert ValidationScore("exact-match", "multiclass").total(probs, y) == round(after["accuracy"] * 200)
    assert sum(after["confusion_matrix"]) == 200
