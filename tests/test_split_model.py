"""Split learning is the unsplit model: same outputs, and N split SGD steps give the same parameters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from client_app.split_client import SplitClientTrainer
from common.config import RunConfig
from common.model import build_model
from common.split_model import CUT_POINTS, client_layers, split_model
from common.task import loss_function
from server_app.split_head import SplitHeadTrainer, SplitInputError

STEPS, BATCH, LR = 4, 6, 0.05


def _batches(task: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        x = rng.normal(0, 1, (BATCH, 12, 1000)).astype(np.float32)
        y = (rng.random((BATCH, 5)) < 0.3).astype(np.float32)
        yield x, y


CASES = ([("hybrid", cut, variant) for cut in CUT_POINTS[:3] for variant in ("plain", "u-shaped")]
         + [("gated", "conv3", "plain"), ("green", "stage3", "plain")])


@pytest.mark.parametrize(("model", "cut", "variant"), CASES)
def test_split_sgd_steps_equal_unsplit_steps(model, cut, variant):
    cfg = RunConfig(model=model)  # PTB-XL shape: 12 leads, 5 labels, multi-label
    reference = build_model(cfg)
    initial = copy.deepcopy(reference.state_dict())
    cut_model = copy.deepcopy(reference)
    parts = split_model(cut_model, cut, variant)  # the parts share cut_model's modules
    optimiser = torch.optim.SGD(reference.parameters(), lr=LR)
    loss_fn = loss_function("multilabel")
    shape = tuple(parts.extractor(torch.zeros(1, 12, 1000)).shape[1:])
    server = SplitHeadTrainer(parts.head, shape, "multilabel", optimiser="sgd", learning_rate=LR, device="cpu")
    client = SplitClientTrainer(parts.extractor, parts.top, "multilabel", optimiser="sgd", learning_rate=LR)
    for x, y in _batches("multilabel"):
        optimiser.zero_grad()
        loss = loss_fn(reference(torch.as_tensor(x)), torch.as_tensor(y))
        loss.backward()
        optimiser.step()
        activations = client.forward(x)  # numpy float32: what a message carries
        if variant == "plain":
            grad, split_loss = server.plain_step(activations, y, node=7)
        else:
            readouts = server.forward(activations, node=7)
            grad_z, split_loss = client.top_step(readouts, y)
            grad = server.backward(grad_z, node=7)
            server.step()
        client.backward(grad)
        assert split_loss == pytest.approx(float(loss.detach()), abs=1e-6)
    moved = 0.0
    for name, value in reference.named_parameters():
        split_value = dict(cut_model.named_parameters())[name]
        np.testing.assert_allclose(split_value.detach().numpy(), value.detach().numpy(), atol=1e-5, rtol=0,
                                   err_msg=name)
        moved = max(moved, float((value.detach() - initial[name]).abs().max()))
    assert moved > 1e-3  # the steps did change the weights


def test_the_client_holds_its_blocks_and_the_server_everything_after_them():
    green = build_model(RunConfig(model="green"))
    parts = split_model(green, "stage3")
    assert client_layers(green, "stage3") == ["stage1", "stage2", "stage3"]
    head_params = {name.split(".")[0] for name, _ in parts.head.named_parameters()}
    assert head_params == {"classical_fc", "proj", "quantum", "fc", "gate"}
    assert tuple(parts.extractor(torch.zeros(2, 12, 1000)).shape) == (2, 32)  # firing rates
    gated = build_model(RunConfig(model="gated"))
    assert {n.split(".")[0] for n, _ in split_model(gated, "conv4").head.named_parameters()} == {
        "proj", "quantum", "fc", "classical_fc", "gate"}
    for model, cut, variant, message in ((green, "conv4", "plain", "expected one of stage3"),
                                         (gated, "stage3", "plain", "expected one of conv2, conv3, conv4"),
                                         (gated, "conv4", "u-shaped", "needs the hybrid model"),
                                         (build_model(RunConfig(model="classical")), "conv4", "plain", "quantum head")):
        with pytest.raises(ValueError, match=message):
            split_model(model, cut, variant)


def test_bad_activations_and_gradients_name_the_node():
    parts = split_model(build_model(RunConfig()), "conv4", "u-shaped")
    server = SplitHeadTrainer(parts.head, (64,), "multilabel", device="cpu")
    with pytest.raises(SplitInputError, match=r"node 3: activations of shape \(2, 32\); expected \('batch', 64\)"):
        server.forward(np.zeros((2, 32), np.float32), node=3)
    bad = np.zeros((2, 64), np.float32)
    bad[1, 5] = np.nan
    with pytest.raises(SplitInputError, match="node 3: activations holds non-finite values"):
        server.forward(bad, node=3)
    with pytest.raises(SplitInputError, match="node 4: gradient without a forward pass"):
        server.backward(np.zeros((2, 4), np.float32), node=4)
    server.forward(np.zeros((2, 64), np.float32), node=3)
    with pytest.raises(SplitInputError, match=r"node 3: read-out gradient of shape \(2, 5\); expected \(2, 4\)"):
        server.backward(np.zeros((2, 5), np.float32), node=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_head_on_cuda_matches_the_cpu():
    model = build_model(RunConfig())
    heads = [SplitHeadTrainer(copy.deepcopy(split_model(model).head), (64,), "multilabel", optimiser="sgd",
                              learning_rate=LR, device=device) for device in ("cpu", "cuda")]
    rng = np.random.default_rng(1)
    for _ in range(3):
        a = rng.normal(0, 1, (16, 64)).astype(np.float32)
        y = (rng.random((16, 5)) < 0.3).astype(np.float32)
        (g_cpu, l_cpu), (g_gpu, l_gpu) = (head.plain_step(a, y, node=1) for head in heads)
        np.testing.assert_allclose(g_gpu, g_cpu, atol=1e-5)
        assert l_gpu == pytest.approx(l_cpu, abs=1e-5)
