"""The SuperNode launcher refuses a bad node config with exit status 2 and one message, else execs flower-supernode."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from client_app import supernode_launcher
from client_app.supernode_launcher import EXIT_INVALID, LaunchError, check_node_config, main
from common.config import ConfigError, NodeConfig, RunConfig
from common.keys import generate_keys
from data_prep.synth_toniot import write_synthetic_toniot

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A PTB-XL layout, a CKKS key pair, a CA certificate and SuperNode auth keys."""
    root = tmp_path_factory.mktemp("launcher")
    data = root / "ptbxl"
    (data / "records100").mkdir(parents=True)
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        (data / name).write_text("ecg_id\n")  # the launcher checks the layout; the loader checks the content
    client_ctx, server_ctx = generate_keys(root / "keys")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    ca = root / "ca.crt"
    ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def openssh(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())

    auth_key = root / "auth_key"
    auth_key.write_bytes(openssh(ec.generate_private_key(ec.SECP384R1())))
    ed_key = root / "ed25519_key"
    ed_key.write_bytes(openssh(ed25519.Ed25519PrivateKey.generate()))
    return {"data": data, "client": client_ctx, "server": server_ctx, "ca": ca, "auth": auth_key, "ed25519": ed_key,
            "root": root}


@pytest.fixture
def execs(monkeypatch) -> list[tuple[str, list[str], dict[str, str]]]:
    """Record os.execve calls instead of replacing the test process."""
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(supernode_launcher.os, "execve", lambda exe, args, env: calls.append((str(exe), args, env)))
    return calls


def node_config(files, **overrides) -> str:
    values = {"partition-id": "0", "num-partitions": "3", "data-path": f"'{files['data']}'",
              "key-path": f"'{files['client']}'"} | overrides
    return " ".join(f"{k}={v}" for k, v in values.items() if v is not None)


def launch(files, config: str, *extra: str) -> list[str]:
    return ["--superlink", "127.0.0.1:9092", "--root-certificates", str(files["ca"]),
            "--auth-supernode-private-key", str(files["auth"]), "--node-config", config, *extra]


def refused(capsys, argv: list[str], execs) -> str:
    """Run the launcher, expect exit 2 without exec, return its one error line."""
    assert main(argv) == EXIT_INVALID
    assert execs == []
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("supernode_launcher: error: ")
    return err


def test_valid_config_execs_flower_supernode_with_the_same_arguments(files, execs, capsys):
    argv = launch(files, node_config(files, **{"partition-id": "2"}), "--port", "9194", "--max-retries", "3")
    assert main(argv) == 0
    [(exe, args, env)] = execs
    expected = Path(sys.executable).parent / "flower-supernode"
    assert exe == str(expected) and args == [str(expected), *argv]
    assert env["PATH"].split(os.pathsep)[0] == str(expected.parent)
    assert "partition 2 of 3" in capsys.readouterr().err


@pytest.mark.parametrize("override,fragment", [
    ({"data-path": "'/nonexistent/ptbxl'"}, "key 'data-path' has value '/nonexistent/ptbxl'; expected an existing "
                                            "PTB-XL folder, but '/nonexistent/ptbxl' does not exist"),
    ({"data-path": "'relative/ptbxl'"}, "expected an absolute path to a PTB-XL folder"),
    ({"data-path": "''"}, "key 'data-path' has value ''; expected a non-empty quoted path"),
    ({"key-path": "'/nonexistent/client.ctx'"}, "key 'key-path' has value '/nonexistent/client.ctx', which does "
                                                "not exist; expected this device's copy of the CKKS secret context"),
    ({"key-path": None}, "missing key(s) ['key-path']"),
    ({"partition-id": "3"}, "partition-id 3 to be < num-partitions 3"),
    ({"partition-id": "-1"}, "key 'partition-id' has value -1; expected"),
    ({"partition-id": "'first'"}, "key 'partition-id' has value 'first'"),
    ({"num-partitions": "0"}, "key 'num-partitions' has value 0"),
    ({"partition_id": "0"}, "unknown key(s) ['partition_id']"),
])
def test_bad_node_config_exits_2_naming_the_key(files, execs, capsys, override, fragment):
    err = refused(capsys, launch(files, node_config(files, **override)), execs)
    assert fragment in err


def test_data_folder_without_ptbxl_layout_is_refused(files, execs, capsys):
    empty = files["root"] / "not-ptbxl"
    empty.mkdir(exist_ok=True)
    err = refused(capsys, launch(files, node_config(files, **{"data-path": f"'{empty}'"})), execs)
    assert f"'{empty}' lacks ptbxl_database.csv, scp_statements.csv, records100/" in err


def test_public_server_context_as_key_path_is_refused(files, execs, capsys):
    err = refused(capsys, launch(files, node_config(files, **{"key-path": f"'{files['server']}'"})), execs)
    assert f"key 'key-path' has value '{files['server']}'; expected a private CKKS context" in err
    assert "holds no secret key" in err


def test_secret_key_readable_by_others_is_refused(files, execs, capsys):
    shared = files["root"] / "shared-client.ctx"
    shared.write_bytes(files["client"].read_bytes())
    shared.chmod(0o644)
    err = refused(capsys, launch(files, node_config(files, **{"key-path": f"'{shared}'"})), execs)
    assert "has mode 0644; expected 0600" in err


def test_text_flower_would_silently_drop_is_refused(files, execs, capsys):
    err = refused(capsys, launch(files, node_config(files) + " partition-id 1"), execs)
    assert "'partition-id 1' is not a key=value pair" in err


def test_missing_or_wrong_tls_and_auth_files_are_refused(files, execs, capsys):
    config = node_config(files)
    argv = launch(files, config)
    missing_ca = [a if a != str(files["ca"]) else "/nonexistent/ca.crt" for a in argv]
    assert "--root-certificates '/nonexistent/ca.crt' does not exist" in refused(capsys, missing_ca, execs)
    not_pem = [a if a != str(files["ca"]) else str(files["auth"]) for a in argv]
    assert "holds no PEM certificate" in refused(capsys, not_pem, execs)
    missing_key = [a if a != str(files["auth"]) else "/nonexistent/auth_key" for a in argv]
    assert "--auth-supernode-private-key '/nonexistent/auth_key' does not exist" in refused(capsys, missing_key, execs)
    ed_key = [a if a != str(files["auth"]) else str(files["ed25519"]) for a in argv]
    assert "expected an elliptic-curve key" in refused(capsys, ed_key, execs)


def test_as_a_process_a_bad_config_exits_2_with_one_line(files):
    argv = launch(files, node_config(files, **{"data-path": "'/nonexistent/ptbxl'"}))
    proc = subprocess.run([sys.executable, "-m", "client_app.supernode_launcher", *argv], cwd=PROJECT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "supernode_launcher: error: node config: key 'data-path' has value '/nonexistent/ptbxl'; expected an "
        "existing PTB-XL folder, but '/nonexistent/ptbxl' does not exist"]


def test_node_dataset_is_checked_against_its_own_layout_and_the_run(tmp_path):
    toniot = write_synthetic_toniot(tmp_path / "toniot", n_windows=14, seed=0)
    with pytest.raises(LaunchError, match="key 'dataset' has value 'mnist'; expected one of ptbxl, wesad, pamap2, toniot, mimic"):
        check_node_config(f"partition-id=0 num-partitions=2 dataset='mnist' data-path='{toniot}' key-path='/k'")
    with pytest.raises(LaunchError, match=f"key 'data-path' has value '{toniot}'; expected a PTB-XL folder"):
        check_node_config(f"partition-id=0 num-partitions=2 data-path='{toniot}' key-path='/k'")
    with pytest.raises(LaunchError, match="key-path"):  # the TON_IoT folder passes; the key is checked next
        check_node_config(f"partition-id=0 num-partitions=2 dataset='toniot' data-path='{toniot}' key-path='/k'")
    node = NodeConfig.from_flower({"partition-id": 0, "num-partitions": 2, "dataset": "toniot"})
    assert node.dataset_for(RunConfig(dataset="toniot")) == "toniot"
    with pytest.raises(ConfigError, match="key 'dataset' has value 'toniot'; expected the run's dataset 'ptbxl'"):
        node.dataset_for(RunConfig())
