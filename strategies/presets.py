"""The three methods compared in the paper, as choices of one ``LayerwiseStrategy``.

| strategy     | client weights                         | encrypted layers | freezing |
|--------------|----------------------------------------|------------------|----------|
| fedavg       | sample counts (Standard-FedQNN)        | none             | off      |
| fhe-fedqnn   | uniform                                | all              | off      |
| adeptheq     | tempered softmax of DP val. accuracies | ``he-layers``    | on       |

One switch each turns a part off for ablations: ``weighting`` (another weighting), ``he-layers = "none"``
(no encryption) and ``freeze-threshold = 0`` (no freezing).
"""

from __future__ import annotations

from common.config import ConfigError, RunConfig
from strategies.layerwise import StrategyOptions


def encrypted_layers_for(cfg: RunConfig, layers: list[str]) -> frozenset[str]:
    """Layers the clients encrypt; the server derives it from the run config and tells the clients."""
    if cfg.strategy == "fedavg" or cfg.he_layer_names == ["none"]:
        return frozenset()
    if cfg.strategy == "fhe-fedqnn" or cfg.he_layer_names == ["all"]:
        return frozenset(layers)
    unknown = sorted(set(cfg.he_layer_names) - set(layers))
    if unknown:
        raise ConfigError(f"run config: key 'he-layers' has value {cfg.he_layers!r}; expected 'all', 'none' or a "
                          f"comma-separated list of this model's layers {layers} (unknown: {', '.join(unknown)})")
    return frozenset(cfg.he_layer_names)


def weighting_for(cfg: RunConfig) -> str:
    """The strategy's client weights, unless the run config's ``weighting`` names others (an ablation)."""
    return cfg.weighting or {"fedavg": "samples", "fhe-fedqnn": "uniform", "adeptheq": "dp-softmax"}[cfg.strategy]


def options_for(cfg: RunConfig, layers: list[str]) -> StrategyOptions:
    return StrategyOptions(
        name=cfg.strategy,
        weighting=weighting_for(cfg),
        encrypted_layers=encrypted_layers_for(cfg, layers),
        freezing=cfg.strategy == "adeptheq" and cfg.freeze_threshold > 0,
        min_clients=cfg.min_clients,
        softmax_tau=cfg.softmax_tau,
        weight_by_samples=cfg.weight_by_samples,
        freeze_threshold=cfg.freeze_threshold,
        freeze_ema_alpha=cfg.freeze_ema_alpha,
        num_rounds=cfg.num_server_rounds,
        timeout_s=cfg.round_timeout,
        dp_epsilon=cfg.dp_epsilon,
        dp_score=cfg.dp_score,
        dp_loss_clip=cfg.dp_loss_clip,
        update_dp=cfg.update_dp,
        update_dp_noise=cfg.update_dp_noise,
        update_dp_clip=cfg.update_dp_clip,
    )
