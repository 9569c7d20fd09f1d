"""Every check of a run that needs no federation.

The simulation runner calls :func:`check_run` before any SuperLink or Ray process exists
(``parse_records=True``: the data are parsed into the cache the clients then open, so a bad file
stops the run there); the ServerApp calls it again on start (tables only), because in a
deployment no runner stands in front of it. Each check raises ``ConfigError`` or
``DataFormatError`` with one message naming the key or file, the value and what was expected.
"""

from __future__ import annotations

from pathlib import Path

from common.config import ConfigError, RunConfig
from common.model import build_model
from data_prep.client_data import check_federation_size
from strategies.presets import options_for
from strategies.layerwise import StrategyOptions


def check_run(cfg: RunConfig, num_nodes: int, parse_records: bool = False) -> StrategyOptions:
    """The strategy options of a valid run; raises on the first value that cannot work."""
    options = options_for(cfg, build_model(cfg).layer_names())  # he-layers against the model's layers
    check_federation_size(cfg, num_nodes, parse_records)
    return options


def check_simulated_nodes(cfg: RunConfig, num_nodes: int) -> None:
    """In simulation the node count is fixed: min-clients above it could never be met."""
    if num_nodes < cfg.min_clients:
        raise ConfigError(f"run config: key 'min-clients' has value {cfg.min_clients}; expected at most the "
                          f"{num_nodes} simulated SuperNodes")


def check_server_context(cfg: RunConfig, options: StrategyOptions) -> None:
    """A deployed public CKKS context must exist on the server machine when layers are encrypted."""
    if options.encrypted_layers and cfg.he_server_context and not Path(cfg.he_server_context).is_file():
        raise ConfigError(f"run config: key 'he-server-context' has value '{cfg.he_server_context}'; expected "
                          "an existing public CKKS context file (server.ctx) on the server machine")
