"""A real Flower deployment on loopback: TLS, SuperNode authentication, three SuperNodes, faults.

One ``flower-superlink`` (TLS with a private CA, ``--enable-supernode-auth``, SQLite state)
and three ``flower-supernode`` processes, each with its own registered ECDSA P-384 key, its
own Flower home, runtime port and node config (partition, the shared synthetic PTB-XL folder,
the CKKS client key). SuperNode 1 is started through ``client_app.supernode_launcher``. The
operator's ``flwr`` CLI has its own Flower home with a ``deploy`` connection.

Tests, in this order (the last two change the federation): an unregistered key is refused;
a SuperNode without the CA certificate cannot connect; a 2-round AdeptHEQ run over the three
nodes; a 1-round run that loses its evaluator to SIGKILL mid-round and finishes with the
other two; and every process started here is gone afterwards. Wall times go to
``deployment_timing.json`` in the test's tmp folder (printed; see it with ``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.keys import generate_keys
from data_prep.synth_ptbxl import ensure_synthetic_ptbxl
from server_app.simulation_runner import cmdline, descendants, flower_env, is_alive, stop_process_tree

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONNECTION = "deploy"
NUM_NODES = 3
SYNTHETIC_RECORDS = 300
HEARTBEAT_EXPIRY_S = 60  # flwr 1.41: a SuperNode is offline 2 x 30 s after its last heartbeat
RUN_TIMEOUT_S = 420


def _missing_tools() -> list[str]:
    missing = [str(BIN / name) for name in ("flower-superlink", "flower-supernode", "flwr")
               if not os.access(BIN / name, os.X_OK)]
    return missing + [name for name in ("openssl", "ssh-keygen", "bash") if shutil.which(name) is None]


pytestmark = pytest.mark.skipif(bool(_missing_tools()), reason=f"missing binaries: {_missing_tools()}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel reports free right now (all bound at once, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Deployment:
    """Files, ports and processes of the loopback federation; ``shutdown`` stops every process by id."""

    root: Path
    port: int
    node_ports: list[int]
    data: Path
    node_ids: list[int] = field(default_factory=list)  # registered id of SuperNode i+1
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    stopped: set[int] = field(default_factory=set)

    @property
    def ca(self) -> Path:
        return self.root / "certs" / "ca.crt"

    @property
    def client_ctx(self) -> Path:
        return self.root / "ckks" / "client.ctx"

    @property
    def server_ctx(self) -> Path:
        return self.root / "ckks" / "server.ctx"

    def auth_key(self, i: int) -> Path:
        return self.root / "auth" / f"supernode-{i}" / "auth_key"

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.is_file() else ""

    def cli_env(self) -> dict[str, str]:
        return flower_env(self.root / "operator-home")

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd)
        self.procs[name] = proc
        return proc

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], env=self.cli_env(), cwd=self.root, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def supernode_cmd(self, i: int, key: Path, port: int, with_ca: bool = True) -> list[str]:
        cmd = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
               "--auth-supernode-private-key", str(key), "--port", str(port),
               "--node-config", f"partition-id={i - 1} num-partitions={NUM_NODES} data-path='{self.data}' "
                                f"key-path='{self.client_ctx}'"]
        return cmd + (["--root-certificates", str(self.ca)] if with_ca else [])

    def node_status(self) -> dict[int, str]:
        proc = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return {int(n["node-id"]): n["status"] for n in json.loads(proc.stdout)["nodes"]}

    def wait_online(self, node_ids: list[int], timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while True:
            status = self.node_status()
            if all(status.get(n) == "online" for n in node_ids):
                return
            dead = [name for name, p in self.procs.items() if name.startswith("supernode-") and p.poll() is not None]
            if dead or time.time() > deadline:
                logs = "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.procs)
                raise AssertionError(f"SuperNodes not online after {timeout} s (exited: {dead}): {status}\n{logs}")
            time.sleep(1.0)

    def marker(self) -> re.Pattern[str]:
        """Matches only command lines of processes started for this deployment: its folder or its ports."""
        ports = "|".join(str(p) for p in [self.port, *self.node_ports])
        return re.compile(rf"{re.escape(str(self.root))}/|127\.0\.0\.1:(?:{ports})(?!\d)")

    def strays(self) -> dict[int, str]:
        """Live processes of this deployment, wherever they are in the process tree (e.g. re-parented orphans)."""
        found = {}
        for path in Path("/proc").glob("[0-9]*/cmdline"):
            pid = int(path.parent.name)
            line = cmdline(pid)
            if pid != os.getpid() and is_alive(pid) and self.marker().search(line):
                found[pid] = line
        return found

    def shutdown(self) -> tuple[set[int], dict[int, str]]:
        """SIGTERM, then SIGKILL, every started process tree and reap our children.

        Returns the pids stopped so far and the strays that stopping the trees left behind
        (those are stopped too, by pid).
        """
        live = [p.pid for p in self.procs.values() if p.poll() is None]
        if live:
            self.stopped |= set(stop_process_tree(live, grace=10.0))
        for proc in self.procs.values():
            proc.wait(timeout=30)
        strays = self.strays()
        if strays:
            self.stopped |= set(stop_process_tree(list(strays), grace=10.0))
        self.stopped |= {p.pid for p in self.procs.values()}
        return self.stopped, strays


def _generate_files(root: Path) -> Path:
    """CA + SuperLink certificate, 4 SuperNode key pairs, a CKKS key pair, the data set; return the data folder."""
    for script, args in (("generate_certs.sh", [str(root / "certs")]),
                         ("generate_supernode_keys.sh", [str(root / "auth"), str(NUM_NODES + 1)])):
        proc = subprocess.run(["bash", str(PROJECT / "docker" / script), *args], capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, f"{script} failed: {proc.stdout}{proc.stderr}"
    generate_keys(root / "ckks")
    return ensure_synthetic_ptbxl(SYNTHETIC_RECORDS, seed=0)


def _wait_for_port(dep: Deployment, name: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if dep.procs[name].poll() is not None:
            raise AssertionError(f"{name} exited with {dep.procs[name].returncode}:\n{dep.log(name)[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", dep.port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"{name} does not listen on port {dep.port} after {timeout} s:\n{dep.log(name)[-3000:]}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    ports = free_ports(NUM_NODES + 3)  # SuperLink, one runtime port per SuperNode, two for the refused ones
    dep = Deployment(root=root, port=ports[0], node_ports=ports[1:], data=_generate_files(root))
    home = root / "operator-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{dep.port}"\nroot-certificates = "{dep.ca}"\n')
    try:
        certs = root / "certs"
        dep.start("superlink", [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
                                "--ssl-certfile", str(certs / "server.crt"), "--ssl-keyfile", str(certs / "server.key"),
                                "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(dep.port),
                                "--database", str(root / "superlink-state.db")],
                  env=flower_env(root / "superlink-home"), cwd=root)
        _wait_for_port(dep, "superlink")
        for i in range(1, NUM_NODES + 1):
            proc = dep.flwr("supernode", "register", str(dep.auth_key(i)) + ".pub", CONNECTION, "--name", f"hospital-{i}")
            found = re.search(r"SuperNode (\d+) registered successfully", proc.stdout + proc.stderr)
            assert proc.returncode == 0 and found, f"registering key {i} failed: {proc.stdout}{proc.stderr}"
            dep.node_ids.append(int(found.group(1)))
        for i in range(1, NUM_NODES + 1):
            cmd = dep.supernode_cmd(i, dep.auth_key(i), dep.node_ports[i - 1])
            if i == 1:  # the same arguments through the launcher, which checks them and execs flower-supernode
                cmd = [sys.executable, "-m", "client_app.supernode_launcher", *cmd[1:]]
            dep.start(f"supernode-{i}", cmd, env=flower_env(root / f"node-{i}-home"),
                      cwd=PROJECT if i == 1 else root)
        dep.wait_online(dep.node_ids)
        yield dep
    finally:
        dep.shutdown()


def _run_config(dep: Deployment, results: Path, rounds: int, epochs: int, timeout: float) -> str:
    return (f"num-server-rounds={rounds} local-epochs={epochs} strategy='adeptheq' "
            f"synthetic-records={SYNTHETIC_RECORDS} min-clients=2 round-timeout={timeout} "
            f"he-server-context='{dep.server_ctx}' results-dir='{results}'")


def _flwr_run_cmd(dep: Deployment, run_config: str) -> list[str]:
    return [str(BIN / "flwr"), "run", str(PROJECT), CONNECTION, "--stream", "--run-config", run_config]


def _record_time(dep: Deployment, key: str, seconds: float) -> None:
    path = dep.root / "deployment_timing.json"
    timing = json.loads(path.read_text()) if path.is_file() else {}
    timing[key] = round(seconds, 1)
    path.write_text(json.dumps(timing, indent=2))
    print(f"\n[deployment] {key}: {seconds:.1f} s (written to {path})")


def test_unregistered_supernode_key_is_refused(deployment):
    dep = deployment
    unregistered = dep.auth_key(NUM_NODES + 1)
    proc = dep.start("unregistered", dep.supernode_cmd(1, unregistered, dep.node_ports[NUM_NODES]),
                     env=flower_env(dep.root / "unregistered-home"), cwd=dep.root)
    try:
        returncode = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        returncode = None
    log = dep.log("unregistered")
    # flwr prints its own exit code (305: cannot connect to the SuperLink) and exits with status 1
    assert returncode == 1, f"unregistered SuperNode: exit status {returncode}:\n{log[-3000:]}"
    assert "Exit Code: 305" in log and "[code: 2004] Failed to activate SuperNode." in log, log[-3000:]
    assert "No SuperNode found with the given public key" in dep.log("superlink")
    assert set(dep.node_status()) == set(dep.node_ids)  # it did not join


def test_supernode_without_ca_certificate_cannot_connect(deployment):
    dep = deployment
    cmd = dep.supernode_cmd(2, dep.auth_key(NUM_NODES + 1), dep.node_ports[NUM_NODES + 1], with_ca=False)
    proc = dep.start("no-ca", cmd, env=flower_env(dep.root / "no-ca-home"), cwd=dep.root)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None and "CERTIFICATE_VERIFY_FAILED" not in dep.log("no-ca"):
        time.sleep(0.5)
    log = dep.log("no-ca")
    assert "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate" \
        in log, log[-3000:]
    assert proc.wait(timeout=30) == 1 and "Exit Code: 305" in dep.log("no-ca"), log[-3000:]


def test_three_authenticated_supernodes_over_tls_complete_adeptheq(deployment):
    dep = deployment
    assert all(dep.procs[f"supernode-{i}"].poll() is None for i in range(1, NUM_NODES + 1))
    assert "node config OK (partition 0 of 3" in dep.log("supernode-1")  # the launcher checked and exec'd
    results = dep.root / "results-main"
    t0 = time.time()
    with open(dep.log_path("run-main"), "wb") as out:
        proc = subprocess.run(_flwr_run_cmd(dep, _run_config(dep, results, rounds=2, epochs=1, timeout=120)),
                              env=dep.cli_env(), cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT,
                              timeout=RUN_TIMEOUT_S, check=False)
    seconds = time.time() - t0
    _record_time(dep, "three_node_2_round_run_seconds", seconds)
    log = dep.log("run-main")
    assert proc.returncode == 0, log[-4000:]
    assert f"Results written to {results}" in log, log[-4000:]

    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["num_nodes"] == NUM_NODES
    assert metrics["encrypted_layers"] == ["fc"]
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for r in metrics["rounds"]:
        assert r["train"]["clients"] == NUM_NODES and r["dropped"] == []
        assert sorted(int(n) for n in r["weights"]) == sorted(dep.node_ids)
        assert sum(r["weights"].values()) == pytest.approx(1.0)
        assert r["bytes"]["train_up"] > 0 and r["validation"]["num-examples"] > 0
    assert metrics["privacy"]["basic"] == pytest.approx(2.0)
    assert metrics["test"]["num-examples"] == SYNTHETIC_RECORDS // 10  # fold 10, every record once
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    # the server kept the aggregated fc layer encrypted: it only ever had the public context
    manifest = json.loads((results / "final_model_encrypted" / "manifest.json").read_text())
    assert manifest["layers"] == ["fc"]


def test_run_finishes_after_a_supernode_is_killed_mid_round(deployment):
    """SIGKILL the evaluator (lowest node id) while its ClientApp trains in a 1-round run.

    flwr 1.41 has no reply from a dead node: the SuperLink marks it offline 2 x 30 s after its
    last heartbeat and then answers its pending message with a NODE_UNAVAILABLE error, which the
    strategy drops; the round goes on with the other two, and another node evaluates. One round
    keeps the test short: the wait for the heartbeat expiry alone is 35-60 s.
    """
    dep = deployment
    victim_index = dep.node_ids.index(min(dep.node_ids)) + 1
    victim = dep.procs[f"supernode-{victim_index}"]
    assert victim.poll() is None, "run this test after the others: it kills a SuperNode"
    results = dep.root / "results-fault"
    # round-timeout above the heartbeat expiry: the node's absence shows as an error reply, not a timeout
    config = _run_config(dep, results, rounds=1, epochs=1, timeout=HEARTBEAT_EXPIRY_S + 90)
    t0 = time.time()
    with open(dep.log_path("run-fault"), "wb") as out:
        run = subprocess.Popen(_flwr_run_cmd(dep, config), env=dep.cli_env(), cwd=PROJECT, stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    dep.procs["run-fault"] = run
    training = []
    deadline = time.time() + 180
    while not training and time.time() < deadline and run.poll() is None:
        training = [p for p in descendants(victim.pid) if "flwr-clientapp" in cmdline(p) and is_alive(p)]
        time.sleep(0.2)
    assert training, f"the victim's ClientApp never started:\n{dep.log('run-fault')[-3000:]}"
    tree = [victim.pid, *descendants(victim.pid)]
    killed_at = time.time() - t0
    for pid in tree:  # power loss: the SuperNode, its SuperExec and the training ClientApp at once
        os.kill(pid, signal.SIGKILL)
    dep.stopped.update(tree)
    assert victim.wait(timeout=10) == -signal.SIGKILL

    returncode = run.wait(timeout=RUN_TIMEOUT_S)
    seconds = time.time() - t0
    _record_time(dep, "fault_run_seconds", seconds)
    print(f"[deployment] killed node {min(dep.node_ids)} (supernode-{victim_index}) {killed_at:.1f} s into the run")
    log = dep.log("run-fault")
    assert returncode == 0, log[-4000:]
    metrics = json.loads((results / "metrics.json").read_text())
    survivors = sorted(n for n in dep.node_ids if n != min(dep.node_ids))
    [round_1] = metrics["rounds"]
    assert round_1["train"]["clients"] == 2
    assert sorted(int(n) for n in round_1["weights"]) == survivors
    assert sum(round_1["weights"].values()) == pytest.approx(1.0)
    [dropped] = round_1["dropped"]
    assert "Error: Node Unavailable" in dropped
    # the dead node was the evaluator: a surviving node scored the model, test fold included
    assert round_1["validation"]["num-examples"] > 0
    assert metrics["test"]["num-examples"] == SYNTHETIC_RECORDS // 10
    # offline from now on, so later rounds do not address it (Grid.get_node_ids lists online nodes only)
    assert dep.node_status()[min(dep.node_ids)] == "offline"


def test_every_started_process_is_stopped(deployment):
    dep = deployment
    stopped, strays = dep.shutdown()
    assert len(stopped) >= 1 + 2 * NUM_NODES  # SuperLink, SuperNodes and their SuperExecs at least
    assert strays == {}, "processes outside the started trees survived"
    alive = {p: cmdline(p) for p in sorted(stopped) if is_alive(p)}
    assert alive == {}
    assert dep.strays() == {}
