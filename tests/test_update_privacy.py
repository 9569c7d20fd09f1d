"""Client-level update noise (common.update_noise) and the one accountant of a run (common.privacy_ledger)."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from common.privacy import PrivacyAccountant
from common.privacy_ledger import ClientLedger, PrivacyLedger
from common.update_noise import DistributedGaussianUpdate


def _layers(rng, scale: float) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict([("a.weight", (scale * rng.normal(size=(40, 30))).astype(np.float32)),
                        ("b.bias", (scale * rng.normal(size=(50,))).astype(np.float32))])


def test_a_large_update_is_clipped_to_the_norm_and_a_small_one_kept():
    rng = np.random.default_rng(0)
    base = _layers(rng, 1.0)
    mechanism = DistributedGaussianUpdate(noise_multiplier=1e-12, clip=0.5, shares=4)  # noise negligible
    for scale, expected in ((3.0, 0.5), (1e-3, None)):
        step = _layers(rng, scale)
        trained = OrderedDict((n, base[n] + step[n]) for n in base)
        sent, measured = mechanism.privatise(trained, base, rng)
        before = math.sqrt(sum(float(np.sum(step[n].astype(np.float64) ** 2)) for n in step))
        after = math.sqrt(sum(float(np.sum((sent[n].astype(np.float64) - base[n]) ** 2)) for n in base))
        assert measured == pytest.approx(before, rel=1e-5)
        assert after == pytest.approx(expected if expected is not None else before, rel=1e-4)
        assert all(sent[n].dtype == np.float32 for n in sent)


def test_each_share_has_std_sigma_c_over_root_n_and_n_shares_sum_to_sigma_c():
    rng = np.random.default_rng(1)
    zeros = OrderedDict([("w", np.zeros(200_000, dtype=np.float64))])
    sigma, clip, n = 2.0, 0.3, 8
    mechanism = DistributedGaussianUpdate(sigma, clip, n)
    shares = [mechanism.privatise(zeros, zeros, rng)[0]["w"] for _ in range(n)]
    assert np.std(shares[0]) == pytest.approx(sigma * clip / math.sqrt(n), rel=0.01)
    assert np.std(np.sum(shares, axis=0)) == pytest.approx(sigma * clip, rel=0.01)


def test_effective_noise_multiplier_of_the_weighted_sum():
    sigma, n = 1.5, 4
    uniform = np.full(n, 1 / n)
    assert DistributedGaussianUpdate.effective_noise_multiplier(uniform, sigma, n) == pytest.approx(sigma)
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    # noise std sigma C sqrt(sum w^2 / n) over sensitivity C max w
    expected = sigma * math.sqrt((0.16 + 0.09 + 0.04 + 0.01) / n) / 0.4
    assert DistributedGaussianUpdate.effective_noise_multiplier(weights, sigma, n) == pytest.approx(expected)
    # a client that dropped out took its share with it: 3 of 4 shares left
    assert DistributedGaussianUpdate.effective_noise_multiplier(np.full(3, 1 / 3), sigma, n) == pytest.approx(
        sigma * math.sqrt(3 / 4))
    with pytest.raises(ValueError, match="sum to 1"):
        DistributedGaussianUpdate.effective_noise_multiplier(np.array([0.5, 0.2]), sigma, n)
    with pytest.raises(ValueError, match="shares must be an integer >= 1, got 0"):
        DistributedGaussianUpdate(1.0, 1.0, 0)


def _gaussian_epsilon(z: float, delta: float) -> float:
    """Exact epsilon of the Gaussian mechanism (Balle and Wang, ICML 2018, Theorem 8), sensitivity 1, std z."""
    def excess(eps: float) -> float:
        return norm.cdf(-eps * z + 1 / (2 * z)) - math.exp(eps) * norm.cdf(-eps * z - 1 / (2 * z)) - delta
    return brentq(excess, 1e-9, 100.0)


def test_client_level_rounds_compose_to_the_exact_gaussian_epsilon():
    ledger = ClientLedger()
    for z in (1.0, 2.0, 1.5, 3.0):
        ledger.record_gaussian(z)
    combined = (1 + 1 / 4 + 1 / 2.25 + 1 / 9) ** -0.5
    assert ledger.client_level_noise_multiplier() == pytest.approx(combined)
    assert ledger.epsilon_by_mechanism(1e-5)["client_level"] == pytest.approx(_gaussian_epsilon(combined, 1e-5),
                                                                              rel=2e-3)


def test_a_record_sees_the_client_level_mechanism_at_half_its_noise_multiplier():
    ledger = ClientLedger()
    ledger.record_gaussian(3.0)
    # the client's whole data set: sensitivity C; one of its records with the client present: 2C, so z / 2
    assert ledger.epsilon_by_mechanism(1e-5)["client_level"] == pytest.approx(_gaussian_epsilon(3.0, 1e-5), rel=2e-3)
    assert ledger.epsilon(1e-5) == pytest.approx(_gaussian_epsilon(1.5, 1e-5), rel=2e-3)


def test_dp_sgd_epsilon_against_published_values():
    ledger = ClientLedger()
    ledger.record_dp_sgd(0.04, 1.5, 1000)
    ledger.record_dp_sgd(0.04, 1.5, 1250)
    # Opacus's tests/accountants_test.py: sigma 1.5, q 0.04, 2250 steps, delta 1e-5: PRV 6.777 (RDP 7.329);
    # PLD is tight too, so the two agree closely and both lie below RDP
    eps = ledger.epsilon(1e-5)
    assert eps == pytest.approx(6.7774, abs=0.03) and eps < 7.32911117143
    ledger = ClientLedger()
    ledger.record_dp_sgd(256 / 60000, 1.1, 14063)
    # TensorFlow Privacy's MNIST tutorial: sigma 1.1, batch 256 of 60000, 60 epochs, delta 1e-5: eps 3.01 by its
    # RDP accountant, an upper bound; the PLD figure is tighter, and dp_accounting's own PLD gives 2.3818
    assert ledger.epsilon(1e-5) == pytest.approx(2.3818, abs=0.01) and ledger.epsilon(1e-5) < 3.01


def test_accuracy_releases_equal_the_accuracy_accountant_and_composition_is_bounded():
    ledger = PrivacyLedger(1e-5)
    for _ in range(20):
        ledger.client("a").record_accuracy_release(1.0)
        ledger.client("b").record_accuracy_release(1.0)
    ledger.client("a").record_dp_sgd(0.25, 2.0, 80)
    report = ledger.report()
    a, b = report["per_client"]["a"], report["per_client"]["b"]
    assert a["accuracy_release"] == pytest.approx(PrivacyAccountant(1.0, 1e-5).pld(20), rel=1e-6)
    assert b["dp_sgd"] == 0.0 and b["composed"] == pytest.approx(b["accuracy_release"], rel=1e-6)
    assert max(a["accuracy_release"], a["dp_sgd"]) < a["composed"] < a["accuracy_release"] + a["dp_sgd"]
    assert report["total"]["composed"] == a["composed"]
    with pytest.raises(ValueError, match="0 < sample rate <= 1"):
        ClientLedger().record_dp_sgd(1.5, 1.0, 3)


def test_run_config_refuses_update_dp_where_it_does_not_apply():
    from common.config import RunConfig

    with pytest.raises(ValueError, match="update-dp-noise set with update-dp = 'none'"):
        RunConfig.from_flower({"update-dp-noise": 2.0})
    with pytest.raises(ValueError, match="with mode = 'split'"):
        RunConfig.from_flower({"update-dp": "client", "mode": "split"})
    with pytest.raises(ValueError, match="update-dp = 'example' with model = 'green'"):
        RunConfig.from_flower({"update-dp": "example", "model": "green"})
    with pytest.raises(ValueError, match="DP-SGD's loop has neither"):
        RunConfig.from_flower({"update-dp": "example", "lr-schedule": "cosine-restarts"})
    assert RunConfig.from_flower({"update-dp": "client", "update-dp-noise": 0.5}).update_dp_noise == 0.5


def test_train_instructions_carry_update_dp_and_refuse_bad_values():
    from common.instructions import InstructionError, TrainInstructions

    orders = TrainInstructions(3, update_dp="client", update_dp_noise=1.2, update_dp_clip=0.1, update_dp_shares=5)
    assert TrainInstructions.from_config(orders.to_config(), ["fc"]) == orders
    plain = TrainInstructions(3)
    assert TrainInstructions.from_config(plain.to_config(), ["fc"]).update_dp == "none"
    config = orders.to_config()
    config["update-dp-shares"] = 0
    with pytest.raises(InstructionError, match="'update-dp-shares' has value 0"):
        TrainInstructions.from_config(config, ["fc"])
    config = orders.to_config()
    config["update-dp"] = "central"
    with pytest.raises(InstructionError, match="'update-dp' has value 'central'"):
        TrainInstructions.from_config(config, ["fc"])


def test_a_client_told_client_level_dp_sends_the_global_model_plus_its_clipped_update():
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client_app.client_app import train
    from common.config import RunConfig
    from common.model import build_model, state_by_layer
    from common.wire import from_array_record
    from strategies.layerwise import LayerwiseStrategy
    from strategies.presets import options_for

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a running ServerApp sets
    clip = 0.05
    cfg = RunConfig.from_flower({"strategy": "fedavg", "local-epochs": 1, "synthetic-records": 300,
                                 "update-dp": "client", "update-dp-noise": 1e-9, "update-dp-clip": clip})
    model = build_model(cfg)
    initial = state_by_layer(model)

    class Grid:
        def get_node_ids(self):
            return [1, 2, 3]

    strategy = LayerwiseStrategy(options_for(cfg, model.layer_names()), model.layer_names(), initial, frozenset())
    request = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), Grid()))[0]
    request.metadata.__dict__["_message_id"] = "message-0"
    context = Context(1, 1, {"partition-id": 0, "num-partitions": 3}, RecordDict(), cfg.as_flat_dict())
    reply = train(request, context)
    sent = from_array_record(reply.content["arrays"])
    moved = math.sqrt(sum(float(np.sum((sent[n].astype(np.float64) - initial[n]) ** 2)) for n in initial))
    # one local epoch moves the weights by ~0.4 in norm (a plain run's), so the clip binds
    assert moved == pytest.approx(clip, rel=1e-3)
    # neither the update's norm nor the exact training loss leaves the client under update DP
    assert set(reply.content["metrics"]) == {"num-examples", "train-seconds"}
