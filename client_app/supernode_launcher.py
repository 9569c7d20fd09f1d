"""Start ``flower-supernode`` on an edge device only after its node config checks out.

A SuperNode with a wrong data folder or key file connects fine and fails only when the
first round reaches it, on a remote device, in a log nobody watches. This launcher checks
at start what the ClientApp will need and exits with status 2 and one message naming the
key or file and what was expected:

- ``--node-config`` parses with Flower's own parser (``flwr.common.config.parse_config_args``)
  and names ``partition-id``, ``num-partitions``, ``data-path`` and ``key-path``, all four
  present, and optionally ``dataset``, and passes ``common.config.NodeConfig``;
- ``data-path`` has the layout of the node's ``dataset`` (default ``ptbxl``: ``ptbxl_database.csv``,
  ``scp_statements.csv``, ``records100/``; see ``data_prep.registry``);
- ``key-path`` loads as a *private* CKKS context, readable by its owner only (the server
  picks the strategy per run, so a device cannot know that no key will be needed);
- ``--root-certificates`` is a PEM certificate file and ``--auth-supernode-private-key``
  an OpenSSH elliptic-curve private key, when given.

Then it replaces itself with ``flower-supernode`` from the same environment, with the same
arguments::

    python -m client_app.supernode_launcher --superlink HOST:PORT [--root-certificates CA]
        [--auth-supernode-private-key KEY]
        --node-config "partition-id=0 num-partitions=3 data-path='/data/ptbxl' key-path='/keys/client.ctx'"
        [any other flower-supernode argument, passed through]
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Sequence

from click import ClickException
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.common.config import parse_config_args

from common.config import ConfigError, NodeConfig
from common.keys import load_client_context
from data_prep.registry import DATASETS, DEFAULT_DATASET, check_data_folder

EXIT_INVALID = 2
NODE_CONFIG_KEYS = ("partition-id", "num-partitions", "data-path", "key-path")
OPTIONAL_NODE_CONFIG_KEYS = ("dataset",)
# the key=value pattern of flwr.common.config.parse_config_args: text it does not match is silently dropped
FLWR_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


class LaunchError(ValueError):
    """The SuperNode must not start; the message names the key or file and what was expected."""


def parse_node_config(raw: str) -> dict[str, Any]:
    """``--node-config`` as flower-supernode will read it; refuse text Flower would ignore."""
    leftover = FLWR_PAIR.sub("", raw).strip()
    if leftover:
        raise LaunchError(f"--node-config: '{leftover}' is not a key=value pair; expected "
                          "space-separated pairs like \"partition-id=0 data-path='/data/ptbxl'\"")
    try:
        values = parse_config_args([raw])
    except ClickException as err:
        raise LaunchError(f"--node-config '{raw}' does not parse: {err.message}") from None
    unknown = sorted(set(values) - set(NODE_CONFIG_KEYS) - set(OPTIONAL_NODE_CONFIG_KEYS))
    if unknown:
        raise LaunchError(f"--node-config: unknown key(s) {unknown}; expected only "
                          f"{list(NODE_CONFIG_KEYS + OPTIONAL_NODE_CONFIG_KEYS)}")
    missing = [key for key in NODE_CONFIG_KEYS if key not in values]
    if missing:
        raise LaunchError(f"--node-config: missing key(s) {missing}; a device needs all of {list(NODE_CONFIG_KEYS)} "
                          "(without data-path and key-path the ClientApp would fall back to simulation data and keys)")
    return values


def check_node_config(raw: str) -> NodeConfig:
    """The parsed node config, with its data folder and CKKS secret key checked."""
    values = parse_node_config(raw)
    for key in ("data-path", "key-path"):
        if not isinstance(values[key], str) or not values[key]:
            raise LaunchError(f"node config: key '{key}' has value {values[key]!r}; expected a non-empty quoted path")
    dataset = values.get("dataset") or DEFAULT_DATASET
    if dataset not in DATASETS:
        raise LaunchError(f"node config: key 'dataset' has value {dataset!r}; expected one of {', '.join(DATASETS)}")
    try:
        rates = DATASETS[dataset].sampling_rates  # the rate a run reads by default (run config sampling-rate 0)
        check_data_folder(dataset, values["data-path"], rates[0] if rates else 0)
    except ValueError as err:
        raise LaunchError(f"node config: key 'data-path' has value '{values['data-path']}'; expected {err}") from None
    check_client_key(Path(values["key-path"]))
    try:
        return NodeConfig.from_flower(values)
    except ConfigError as err:
        raise LaunchError(str(err)) from None


def check_client_key(path: Path) -> None:
    """``path`` holds a private CKKS context that only its owner can read."""
    if not path.is_file():
        raise LaunchError(f"node config: key 'key-path' has value '{path}', which does not exist; expected "
                          "this device's copy of the CKKS secret context (client.ctx)")
    try:
        load_client_context(path)
    except (ValueError, OSError) as err:
        raise LaunchError(f"node config: key 'key-path' has value '{path}'; expected a private CKKS context "
                          f"(client.ctx, never server.ctx): {err}") from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise LaunchError(f"node config: key 'key-path' file '{path}' has mode {mode:04o}; expected 0600 "
                          f"(it holds the CKKS secret key: chmod 600 '{path}')")


def check_root_certificates(path: Path) -> None:
    if not path.is_file():
        raise LaunchError(f"--root-certificates '{path}' does not exist; expected the federation's CA "
                          "certificate (ca.crt) in PEM format")
    if PEM_CERTIFICATE not in path.read_bytes():
        raise LaunchError(f"--root-certificates '{path}' holds no PEM certificate; expected the federation's "
                          "CA certificate (ca.crt), which starts with '-----BEGIN CERTIFICATE-----'")


def check_auth_key(path: Path) -> None:
    if not path.is_file():
        raise LaunchError(f"--auth-supernode-private-key '{path}' does not exist; expected this SuperNode's "
                          "OpenSSH private key (auth_key, made by docker/generate_supernode_keys.sh)")
    try:
        key = load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise LaunchError(f"--auth-supernode-private-key '{path}' is not an unencrypted OpenSSH private key: "
                          f"{err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise LaunchError(f"--auth-supernode-private-key '{path}' holds a {type(key).__name__}; expected an "
                          "elliptic-curve key (ssh-keygen -t ecdsa -b 384)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client_app.supernode_launcher", allow_abbrev=False,
        description="Check the node config, then exec flower-supernode with the same arguments "
                    "(every other flower-supernode argument is passed through).")
    parser.add_argument("--superlink", required=True, help="SuperLink address HOST:PORT")
    parser.add_argument("--root-certificates", type=Path, help="CA certificate (PEM) of the SuperLink")
    parser.add_argument("--auth-supernode-private-key", type=Path, help="this SuperNode's OpenSSH private key")
    parser.add_argument("--node-config", required=True,
                        help="\"partition-id=0 num-partitions=3 data-path='/data/ptbxl' key-path='/keys/client.ctx'\"")
    return parser


def check_arguments(argv: Sequence[str]) -> NodeConfig:
    """Every check above, on the command line flower-supernode will get; raises LaunchError."""
    args, _ = _parser().parse_known_args(list(argv))
    if args.root_certificates is not None:
        check_root_certificates(args.root_certificates)
    if args.auth_supernode_private_key is not None:
        check_auth_key(args.auth_supernode_private_key)
    return check_node_config(args.node_config)


def supernode_executable() -> Path:
    """``flower-supernode`` of this Python environment (not whichever one PATH finds first)."""
    return Path(sys.executable).parent / "flower-supernode"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        node = check_arguments(argv)
        exe = supernode_executable()
        if not os.access(exe, os.X_OK):
            raise LaunchError(f"{exe} is not an executable; expected flwr installed in this environment")
    except LaunchError as err:
        print(f"supernode_launcher: error: {err}", file=sys.stderr)
        return EXIT_INVALID
    print(f"supernode_launcher: node config OK (partition {node.partition_id} of {node.num_partitions}, "
          f"data {node.data_path}); starting {exe}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    # flower-supernode starts flower-superexec and flwr-clientapp from PATH: use this environment's
    env["PATH"] = f"{exe.parent}{os.pathsep}{env.get('PATH', '')}"
    os.execve(exe, [str(exe), *argv], env)
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
