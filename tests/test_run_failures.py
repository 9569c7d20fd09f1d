"""A run that fails says so: exit status, one last line naming the cause, nothing started for bad input.

One test per case a new user met (issue 7): each bad value stops the runner with status 2 before any
Flower or Ray process exists; a client failure found only during the run (no runner checks in
front, as in a deployment) ends with status 1 and the failing nodes and their reason; a second
simulation refuses to start while a first owns the Flower home or the SuperLink's ports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from data_prep.synth_ptbxl import write_synthetic_ptbxl
from server_app.simulation_runner import (EXIT_FAILED, EXIT_INVALID, EXIT_OK, cmdline, descendants, run_simulation,
                                          stop_process_tree, superlink_pids)

PROJECT = Path(__file__).resolve().parents[1]
FLOWER_OR_RAY = ("flwr", "flower-", "ray", "raylet", "gcs_server")


def run_cli(tmp_path: Path, run_config: str, home: Path | None = None, timeout: float = 180.0,
            cmd: list[str] | None = None) -> tuple[int, list[str], list[str]]:
    """Run the runner (or ``cmd``) to the end; return its status, its output lines and every child it started."""
    home = home or tmp_path / "flwr_home"
    cmd = cmd or [sys.executable, "-m", "server_app.simulation_runner", "--supernodes", "3",
                  "--flwr-home", str(home), "--run-config", run_config]
    out_path = tmp_path / f"out-{time.monotonic_ns()}.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT, text=True)
        children: set[str] = set()
        deadline = time.time() + timeout
        while proc.poll() is None:
            children.update(line for pid in descendants(proc.pid) if (line := cmdline(pid)))
            if time.time() > deadline:
                proc.kill()
                pytest.fail(f"{cmd} did not finish within {timeout} s")
            time.sleep(0.05)
    lines = [line for line in out_path.read_text().splitlines() if line.strip()]
    return proc.returncode, lines, sorted(children)


def assert_stopped_before_flower(tmp_path: Path, status: int, lines: list[str], children: list[str],
                                 message: str) -> None:
    assert status == EXIT_INVALID, lines[-20:]
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]
    assert not any("Traceback" in line for line in lines), lines
    started = [c for c in children if any(name in c for name in FLOWER_OR_RAY)]
    assert started == [], f"Flower or Ray processes were started: {started}"
    assert not (tmp_path / "flwr_home" / "local-superlink").exists()


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_ptbxl(tmp_path_factory.mktemp("ptbxl"), n_records=200, seed=2)


def test_missing_data_path_through_make_run(tmp_path):
    status, lines, children = run_cli(tmp_path, "", cmd=["make", "--no-print-directory", "run", "SUPERNODES=3",
                                                         "RUN_CONFIG=data-path='/nonexistent'"])
    assert status == 2  # make passes the runner's status on
    ours = [line for line in lines if not line.startswith(("make:", "make[", ".venv/"))]
    assert ours[-1] == ("error: run config: key 'data-path' has value '/nonexistent'; expected an existing PTB-XL "
                        "folder, but '/nonexistent' does not exist")
    assert not any("Traceback" in line for line in lines)
    assert not [c for c in children if any(name in c for name in FLOWER_OR_RAY)]


def test_every_bad_key_is_named_in_one_last_line(tmp_path):
    status, lines, children = run_cli(tmp_path, "n-qubits=0 dataset='mnist' strategy='fedprox' num-server-rounds=-1")
    assert_stopped_before_flower(tmp_path, status, lines, children, "run config: key 'dataset' has value 'mnist'")
    for fragment in ("key 'n-qubits' has value 0; expected a value greater than or equal to 1",
                     "key 'strategy' has value 'fedprox'; expected one of 'fedavg', 'adeptheq' or 'fhe-fedqnn'",
                     "key 'num-server-rounds' has value -1; expected a value greater than or equal to 1"):
        assert fragment in lines[-1]


def test_unknown_encrypted_layer_is_named(tmp_path):
    status, lines, children = run_cli(tmp_path, "he-layers='fc,bogus'")
    assert_stopped_before_flower(tmp_path, status, lines, children,
                                 "key 'he-layers' has value 'fc,bogus'; expected 'all', 'none' or a comma-separated "
                                 "list of this model's layers ['conv1', 'conv2', 'conv3', 'conv4', 'proj', 'quantum', "
                                 "'fc'] (unknown: bogus)")


@pytest.mark.parametrize("run_config,nodes,message", [
    ("dataset='mnist'", 3, "key 'dataset' has value 'mnist'; expected one of ptbxl"),
    ("min-clients=4", 3, "key 'min-clients' has value 4; expected at most the 3 simulated SuperNodes"),
    ("synthetic-records=100", 8, "8 clients need at least 10 training records each, but synthetic-records 100 gives "
                                 "78 training records (strat_fold 1-8)"),
    ("num-server-rounds=two", 3, "--run-config 'num-server-rounds=two': expected space-separated key=value pairs"),
    ("n-qubit=4", 3, "unknown key 'n-qubit'"),
])
def test_checks_before_the_federation_return_status_2(tmp_path, run_config, nodes, message):
    home = tmp_path / "flwr_home"
    result = run_simulation(run_config, num_supernodes=nodes, flwr_home=home, capture=True)
    assert result.returncode == EXIT_INVALID and message in result.reason, result.reason
    assert "\n" not in result.reason and result.run_id is None
    # not even the federation file: nothing of Flower's was started (the runner's own lock file may exist)
    assert not (home / "config.toml").exists() and not (home / "local-superlink").exists()


def test_database_without_strat_fold_is_named(tmp_path, synthetic_root):
    root = Path(shutil.copytree(synthetic_root, tmp_path / "ptbxl"))
    table = pd.read_csv(root / "ptbxl_database.csv")
    table.drop(columns=["strat_fold"]).to_csv(root / "ptbxl_database.csv", index=False)
    status, lines, children = run_cli(tmp_path, f"data-path='{root}'")
    assert_stopped_before_flower(tmp_path, status, lines, children,
                                 f"{root}/ptbxl_database.csv lacks column(s) ['strat_fold']")


def truncated_copy(synthetic_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = Path(shutil.copytree(synthetic_root, tmp_path / "ptbxl"))
    dat = root / "records100" / "00000" / "00006_lr.dat"
    dat.write_bytes(dat.read_bytes()[:1000])
    return root, dat


def test_truncated_record_is_named_with_its_bytes(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.setenv("ADEPTHEQ_CACHE", str(tmp_path / "cache"))
    root, dat = truncated_copy(synthetic_root, tmp_path)
    status, lines, children = run_cli(tmp_path, f"data-path='{root}'")
    assert_stopped_before_flower(tmp_path, status, lines, children,
                                 f"{dat} is truncated: 1000 bytes, expected 24000 "
                                 "(1000 samples x 12 signals x 2 bytes, format 16)")


def test_client_failure_without_a_runner_check_names_nodes_and_cause(tmp_path, synthetic_root, monkeypatch):
    """As in a deployment, nothing checks the data first: the ServerApp reports what the clients said."""
    monkeypatch.setenv("ADEPTHEQ_CACHE", str(tmp_path / "cache"))
    root, dat = truncated_copy(synthetic_root, tmp_path)
    home = tmp_path / "flwr_home"
    result = run_simulation(f"data-path='{root}' num-server-rounds=1 local-epochs=1 results-dir='{tmp_path / 'r'}'",
                            num_supernodes=3, flwr_home=home, timeout=300, capture=True, check=False)
    assert superlink_pids(home.resolve()) == []
    assert result.returncode == EXIT_FAILED and result.status == "finished:failed", result.stdout[-3000:]
    assert result.reason.startswith(f"run {result.run_id} ended as finished:failed: round 1: 0 of 3 clients replied "
                                    "without an error, min-clients is 2; nodes ")
    assert result.reason.endswith(f"failed: {dat} is truncated: 1000 bytes, expected 24000 "
                                  "(1000 samples x 12 signals x 2 bytes, format 16)")
    assert "server.ctx" not in result.reason  # the cause, not a consequence


def test_second_simulation_refuses_to_start_and_leaves_the_first_alone(tmp_path):
    first_home, other_home = tmp_path / "first_home", tmp_path / "other_home"
    first_out = open(tmp_path / "first.txt", "w")
    first = subprocess.Popen([sys.executable, "-m", "server_app.simulation_runner", "--supernodes", "2",
                              "--flwr-home", str(first_home), "--run-config",
                              "num-server-rounds=3 local-epochs=1 synthetic-records=300 strategy='fedavg' "
                              f"results-dir='{tmp_path / 'results'}'"],
                             cwd=PROJECT, stdout=first_out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (superlinks := superlink_pids(first_home.resolve())):
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.txt").read_text()[-3000:]
            time.sleep(0.2)
        # a built-in set of another size: home and ports are checked before any data is built, so this stops at once
        status, lines, children = run_cli(tmp_path, "synthetic-records=5000", home=first_home)
        assert status == EXIT_FAILED, lines[-5:]
        assert lines[-1] == (f"error: another simulation (runner pid {first.pid}) is running in the Flower home "
                             f"{first_home.resolve()}; wait for it to finish or stop it first")
        assert not [c for c in children if any(name in c for name in FLOWER_OR_RAY)]
        status, lines, children = run_cli(tmp_path, "synthetic-records=5000", home=other_home)
        assert status == EXIT_FAILED
        port = os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091")  # the runner honours Flower's override
        assert lines[-1].startswith(f"error: port {port} on 127.0.0.1, which the local SuperLink needs, is in use "
                                    f"by pid {superlinks[0]}: ")
        assert not [c for c in children if any(name in c for name in FLOWER_OR_RAY)]
        assert superlink_pids(first_home.resolve()) == superlinks  # untouched
        assert first.wait(timeout=300) == EXIT_OK, (tmp_path / "first.txt").read_text()[-3000:]
    finally:
        if first.poll() is None:  # a failed check above: stop the first run and the SuperLink it started
            first.kill()
            first.wait()
            stop_process_tree(superlink_pids(first_home.resolve()))
        first_out.close()
    assert (tmp_path / "results" / "metrics.json").is_file()
    assert superlink_pids(first_home.resolve()) == []
