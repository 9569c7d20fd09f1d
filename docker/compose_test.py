"""The TLS compose stack, end to end on this host: images built, containers run, faults injected.

    make compose-test                      # or: .venv/bin/python docker/compose_test.py [--help]

What it does, in order (each step prints one line; everything lands in results/compose-test/):
1. a Docker engine: the running one, or ``dockerd`` started here (as root) and stopped again, by process id;
2. images: the base (``--base-image``; else the public python image if the engine holds it; else one built from
   Debian packages by ``build_base_image.sh``), then the SuperLink, ServerApp and SuperNode images from the
   Dockerfiles. Where pip here trusts a CA bundle and finds a local torch CPU wheel, both are served to the
   build over loopback for the build only (nothing of them stays in an image);
3. a stack folder: a private CA and SuperLink certificate, four SuperNode keys (the fourth never registered),
   the SuperExec secret, CKKS keys (``server.ctx`` public for the server, ``client.ctx`` for the clients) and
   one synthetic PTB-XL folder per SuperNode;
4. ``compose.tls.yml`` unchanged: SuperLink up, three SuperNode keys registered, everything up, three nodes online;
5. an ``adeptheq`` run with the FC layer encrypted; SuperNode 3 is killed while round 2 trains, and the run must
   complete on the other two with the dropped node named in the server's round log;
6. from inside the running containers: the SuperLink and ServerApp hold no client key, no authentication key
   and no data, and the ServerApp's CKKS context has no secret key; the SuperNode image has no server-only package;
7. a SuperNode without the CA certificate and one with an unregistered key are refused;
8. ``down -v``: no container, network or volume of the stack is left.
Exit 0 when every check held; ``report.json`` lists each check, the image sizes and the times.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.tls.yml"
PUBLIC_BASE = "python:3.11.13-slim-bookworm"
LOCAL_BASE = "adeptheq-fl/python-base:3.11-bookworm"
IMAGES = {  # the names compose.tls.yml gives them
    "superlink": ("Dockerfile.superlink", "adeptheq-fl/superlink:1.41.0"),
    "serverapp": ("Dockerfile.serverapp", "adeptheq-fl/serverapp:1.41.0-cpu"),
    "supernode": ("Dockerfile.supernode", "adeptheq-fl/supernode:1.41.0"),
}
TORCH_WHEEL = re.compile(r"torch-2\.13\.0\+cpu-cp311-cp311-.*\.whl")
SERVER_ONLY = ("dp_accounting", "matplotlib", "ray")  # must not be importable on a SuperNode
CONNECTION = "compose-test"
SUPERNODES = 3


class CheckFailed(RuntimeError):
    """A step of the test did not hold; the message says what was expected and what was seen."""


def say(text: str) -> None:
    print(f"[compose-test] {text}", flush=True)


def run(cmd: list[str], *, timeout: float = 600, check: bool = True, env: dict | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise CheckFailed(f"`{' '.join(cmd)}` exited {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}")
    return proc


def wait_for(what: str, probe, timeout: float, every: float = 2.0):
    """Call ``probe`` until it returns something truthy; CheckFailed naming ``what`` after ``timeout`` s."""
    deadline = time.time() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.time() > deadline:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- engine


class Engine:
    """The Docker engine: the running one, or a ``dockerd`` this test starts and stops by process id."""

    def __init__(self, work: Path, storage_driver: str):
        self.work, self.storage_driver, self.proc = work, storage_driver, None

    @staticmethod
    def running() -> bool:
        return run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30).returncode == 0

    def __enter__(self) -> "Engine":
        if shutil.which("docker") is None:
            raise CheckFailed("no `docker` client on PATH: install docker.io (Debian) or Docker Engine")
        if self.running():
            say("using the running Docker engine")
            return self
        if os.geteuid() != 0 or shutil.which("dockerd") is None:
            raise CheckFailed("no Docker engine answers and this test cannot start one: run as root with `dockerd` "
                              "installed (apt-get install docker.io docker-compose), or start the engine yourself")
        log = open(self.work / "dockerd.log", "w")
        flags = [f"--storage-driver={self.storage_driver}"] if self.storage_driver else []
        self.proc = subprocess.Popen(["dockerd", *flags], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        say(f"started dockerd (pid {self.proc.pid}, storage driver {self.storage_driver or 'its choice'})")
        wait_for("dockerd to answer", lambda: self.proc.poll() is not None or self.running(), 90)
        if self.proc.poll() is not None:
            raise CheckFailed(f"dockerd exited {self.proc.returncode}; see {self.work / 'dockerd.log'}")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            say(f"stopped the dockerd this test started (pid {self.proc.pid})")


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`) where installed, else v1.29 (`docker-compose`): the files suit both."""
    if run(["docker", "compose", "version"], check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise CheckFailed("neither `docker compose` (v2) nor `docker-compose` (v1.29) is installed")


# ---------------------------------------------------------------- images


def image_exists(tag: str) -> bool:
    return run(["docker", "image", "inspect", tag], check=False, timeout=60).returncode == 0


def image_size(tag: str) -> int:
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).stdout.strip())


@functools.cache
def _pip_config() -> dict[str, str]:
    """`pip config list` of this host as {key: value}; the first scope listed (the environment's) wins."""
    proc = run([sys.executable, "-m", "pip", "config", "list"], check=False, timeout=60)
    found: dict[str, str] = {}
    for name, _, value in (line.partition("=") for line in proc.stdout.splitlines()):
        if value:
            found.setdefault(name.split(".")[-1], value.strip().strip("'\""))
    return found


def pip_setting(key: str) -> str:
    """A setting of this host's pip (environment first, then `pip config`), or ''."""
    return os.environ.get(f"PIP_{key.upper().replace('-', '_')}") or _pip_config().get(key, "")


class BuildFiles:
    """Serves this host's pip CA bundle and local torch CPU wheel on loopback while the images build."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="adeptheq-build-files."))
        self.args: dict[str, str] = {}
        cert = pip_setting("cert")
        if cert and Path(cert).is_file():
            shutil.copy(cert, self.dir / "ca-bundle.pem")
        wheels = [p for folder in pip_setting("find-links").split() if Path(folder).is_dir()
                  for p in Path(folder).iterdir() if TORCH_WHEEL.fullmatch(p.name)]
        if wheels:
            (self.dir / wheels[0].name).symlink_to(wheels[0])

    def __enter__(self) -> "BuildFiles":
        handler = functools.partial(QuietHandler, directory=str(self.dir))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        if (self.dir / "ca-bundle.pem").exists():
            self.args["CA_BUNDLE_URL"] = url + "ca-bundle.pem"
        if any(TORCH_WHEEL.fullmatch(p.name) for p in self.dir.iterdir()):
            # the local wheel is the CPU build; its dependencies come from the index pip here uses
            self.args["PIP_FIND_LINKS"] = url
            self.args["TORCH_INDEX_URL"] = pip_setting("index-url") or "https://pypi.org/simple"
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def build_images(base: str, rebuild_base: bool, report: dict) -> str:
    if base:
        say(f"base image: {base} (given)")
    elif image_exists(PUBLIC_BASE) and not rebuild_base:
        base = PUBLIC_BASE
        say(f"base image: {base} (held by the engine)")
    else:
        base = LOCAL_BASE
        if rebuild_base or not image_exists(base):
            t0 = time.time()
            say(f"building the base image {base} from Debian packages (build_base_image.sh)")
            run(["bash", str(DOCKER / "build_base_image.sh"), base], timeout=1800)
            report["seconds"]["base_image"] = round(time.time() - t0, 1)
        else:
            say(f"base image: {base} (built earlier by build_base_image.sh; --rebuild-base to make it again)")
    report["images"]["base"] = {"tag": base, "bytes": image_size(base)}
    with BuildFiles() as files:
        say("build arguments from this host: " + (", ".join(sorted(files.args)) or "none"))
        for service, (dockerfile, tag) in IMAGES.items():
            t0 = time.time()
            args = {"BASE_IMAGE": base, **files.args}
            if service == "superlink":
                args.pop("TORCH_INDEX_URL", None)
            cmd = ["docker", "build", "--network", "host", "-f", str(DOCKER / dockerfile), "-t", tag]
            for key, value in args.items():
                cmd += ["--build-arg", f"{key}={value}"]
            say(f"building {tag}")
            run(cmd + [str(DOCKER)], timeout=3600)
            report["seconds"][f"build_{service}"] = round(time.time() - t0, 1)
            report["images"][service] = {"tag": tag, "bytes": image_size(tag)}
            say(f"{tag}: {report['images'][service]['bytes'] / 1e6:,.0f} MB in {time.time() - t0:.0f} s")
    return base


# ---------------------------------------------------------------- stack files


def chown_app(*paths: Path) -> None:
    """The containers run as uid 49999 (as Flower's images); they must read their own private files."""
    for path in paths:
        os.chown(path, 49999, 49999)


def make_stack_folder(stack: Path, records: int) -> None:
    py = sys.executable
    run(["bash", str(DOCKER / "generate_certs.sh"), str(stack / "certs")])
    run(["bash", str(DOCKER / "generate_supernode_keys.sh"), str(stack / "auth"), str(SUPERNODES + 1)])
    (stack / "secrets").mkdir()
    (stack / "secrets" / "superexec.secret").write_bytes(os.urandom(32).hex().encode())
    run([py, "-m", "common.keys", "generate", "--out", str(stack / "keys" / "ckks")], cwd=ROOT)
    (stack / "keys" / "server").mkdir(parents=True)
    shutil.copy(stack / "keys" / "ckks" / "server.ctx", stack / "keys" / "server" / "server.ctx")
    for i in range(1, SUPERNODES + 1):
        (stack / "keys" / f"client-{i}").mkdir()
        shutil.copy(stack / "keys" / "ckks" / "client.ctx", stack / "keys" / f"client-{i}" / "client.ctx")
        run([py, "-m", "data_prep", "synth", "--out", str(stack / "data" / f"client-{i}"), "--records",
             str(records), "--seed", str(i)], cwd=ROOT)
        chown_app(stack / "keys" / f"client-{i}" / "client.ctx", stack / "auth" / f"supernode-{i}" / "auth_key")
    (stack / "keys" / "ckks" / "client.ctx").unlink()
    (stack / "results").mkdir()
    chown_app(stack / "certs" / "server.key", stack / "secrets" / "superexec.secret", stack / "results",
              stack / "auth" / f"supernode-{SUPERNODES + 1}" / "auth_key")


# ---------------------------------------------------------------- the stack


class Stack:
    """``compose.tls.yml`` as it is, under its own project name, with the files of ``stack``."""

    def __init__(self, stack: Path, project: str, port: int):
        self.stack, self.project, self.port = stack, project, port
        self.compose = compose_command()
        self.env = {**os.environ, "SUPERLINK_HOST_PORT": str(port), "FLWR_HOME": str(stack / "flwr-home"),
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        self.flwr = str(Path(sys.executable).with_name("flwr"))
        self.run_id = ""

    def compose_run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), "--project-directory",
                    str(self.stack), *args], timeout=timeout, check=check, env=self.env)

    def flwr_run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return run([self.flwr, *args], timeout=timeout, check=check, env=self.env, cwd=ROOT)

    def container(self, service: str) -> str:
        out = self.compose_run("ps", "-q", service).stdout.split()
        if not out:
            raise CheckFailed(f"no container for service {service}")
        return out[0]

    def logs(self, service: str) -> str:
        proc = run(["docker", "logs", self.container(service)], check=False, timeout=60)
        return proc.stdout + proc.stderr

    def write_connection(self) -> None:
        home = self.stack / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.stack / "certs" / "ca.crt"}"\n')

    def nodes(self) -> list[dict]:
        proc = self.flwr_run("supernode", "ls", CONNECTION, "--format", "json", check=False)
        try:
            return json.loads(proc.stdout[proc.stdout.index("{"):])["nodes"]
        except (ValueError, KeyError):
            return []

    def run_status(self, run_id: str) -> str:
        proc = self.flwr_run("ls", CONNECTION, "--run-id", run_id, "--format", "json", check=False)
        try:
            runs = json.loads(proc.stdout[proc.stdout.index("{"):])["runs"]
            return runs[0]["status"]
        except (ValueError, KeyError, IndexError):
            return ""

    def labelled(self, kind: str) -> list[str]:
        """IDs of the containers, networks or volumes that carry this project's compose label."""
        cmd = {"container": ["docker", "ps", "-a", "-q"], "network": ["docker", "network", "ls", "-q"],
               "volume": ["docker", "volume", "ls", "-q"]}[kind]
        return run(cmd + ["--filter", f"label=com.docker.compose.project={self.project}"]).stdout.split()


def register_nodes(stack: Stack) -> dict[int, str]:
    wait_for("the SuperLink's Control API", lambda: stack.flwr_run("supernode", "ls", CONNECTION,
                                                                     check=False).returncode == 0, 120)
    ids = {}
    for i in range(1, SUPERNODES + 1):
        proc = stack.flwr_run("supernode", "register", str(stack.stack / "auth" / f"supernode-{i}" / "auth_key.pub"),
                              CONNECTION, "--name", f"hospital-{i}")
        match = re.search(r"SuperNode (\d+) registered", proc.stdout + proc.stderr)
        if not match:
            raise CheckFailed(f"registering supernode-{i}: no node id in {proc.stdout[-300:]!r}")
        ids[i] = match.group(1)
    return ids


def server_log(stack: Stack, run_id: str) -> str:
    """The ServerApp's log of the run as the SuperLink keeps it (the container's own log is the SuperExec's)."""
    proc = stack.flwr_run("log", run_id, CONNECTION, "--show", check=False)
    return re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)


def server_round_lines(stack: Stack, run_id: str) -> list[str]:
    return re.findall(r"round \d+/\d+ \|.*", server_log(stack, run_id))


def run_with_a_killed_node(stack: Stack, ids: dict[int, str], rounds: int, report: dict) -> None:
    run_config = (f"strategy='adeptheq' he-server-context='/app/keys/server.ctx' results-dir='/app/results' "
                  f"num-server-rounds={rounds} local-epochs=2 min-clients=2 round-timeout=600.0")
    proc = stack.flwr_run("run", ".", CONNECTION, "--run-config", run_config, "--format", "json", timeout=300)
    match = re.search(r'"run-id": "(\d+)"', proc.stdout)
    if not match:
        raise CheckFailed(f"flwr run gave no run id: {proc.stdout[-500:]}")
    run_id = match.group(1)
    say(f"run {run_id} started: {run_config}")
    t0 = time.time()
    stack.run_id = run_id
    wait_for("round 1 to finish",
             lambda: any(line.startswith("round 1/") for line in server_round_lines(stack, run_id)), 900, every=1.0)
    victim = stack.container(f"supernode-{SUPERNODES}")
    run(["docker", "update", "--restart=no", victim])  # a crash, not a restart: the node must stay away
    run(["docker", "kill", victim])
    report["fault"]["killed"] = {"service": f"supernode-{SUPERNODES}", "node_id": ids[SUPERNODES],
                                 "after_seconds": round(time.time() - t0, 1)}
    say(f"killed supernode-{SUPERNODES} (node {ids[SUPERNODES]}) as round 2 started")
    status = wait_for("the run to finish", lambda: (s := stack.run_status(run_id)).startswith("finished") and s,
                      1800, every=5.0)
    report["seconds"]["run"] = round(time.time() - t0, 1)
    lines = server_round_lines(stack, run_id)
    report["fault"]["status"], report["fault"]["round_log"] = status, lines
    for line in lines:
        say("  " + line)
    if status != "finished:completed":
        raise CheckFailed(f"run {run_id} ended '{status}'; expected finished:completed without the killed node. "
                          f"ServerApp log tail: {server_log(stack, run_id)[-2000:]}")
    metrics = json.loads((stack.stack / "results" / "metrics.json").read_text())
    dropped = [(r["round"], d) for r in metrics["rounds"] for d in r.get("dropped", [])]
    named = [(rnd, d) for rnd, d in dropped if ids[SUPERNODES] in d]
    report["fault"]["dropped"] = dropped
    if not named:
        raise CheckFailed(f"no round names the killed node {ids[SUPERNODES]} as dropped; dropped: {dropped}")
    last = metrics["rounds"][-1]
    if last["train"].get("clients") != SUPERNODES - 1:
        raise CheckFailed(f"the last round trained {last['train'].get('clients')} clients; expected "
                          f"{SUPERNODES - 1} after the kill")
    if not (metrics.get("test") or {}).get("num-examples"):
        raise CheckFailed(f"the run's test figures are missing: {metrics.get('test')}")
    report["fault"]["test"] = {k: metrics["test"].get(k) for k in ("macro-auc", "accuracy", "num-examples")}
    report["fault"]["encrypted_layers"] = metrics.get("encrypted_layers")
    if not metrics.get("encrypted_layers"):
        raise CheckFailed("the run encrypted no layer; expected the adeptheq default (fc) under CKKS")
    say(f"run completed without node {ids[SUPERNODES]}: dropped in round {named[0][0]} ({named[0][1]}); "
        f"last round {last['train']['clients']} clients; test macro-AUC {metrics['test'].get('macro-auc'):.3f}")


# key files by name, and the PTB-XL layout (its index, record folders and WFDB headers)
FIND_SECRETS = ("find / -xdev \\( -name '*.ctx' -o -name 'auth_key*' -o -name 'ca.key' -o -name "
                "'ptbxl_database.csv' -o -name 'records100' -o -name 'records500' -o -name '*.hea' \\) -print "
                "2>/dev/null")


def check_server_side_holds_nothing(stack: Stack, report: dict) -> None:
    client_paths = [str(stack.stack / p) for p in ("data", "auth", "keys/client-1", "keys/client-2", "keys/client-3",
                                                   "certs/ca.key")]
    found = {}
    for service in ("superlink", "serverapp"):
        cid = stack.container(service)
        mounts = json.loads(run(["docker", "inspect", "-f", "{{json .Mounts}}", cid]).stdout)
        bad = [m["Source"] for m in mounts if any(m.get("Source", "").startswith(p) for p in client_paths)]
        if bad:
            raise CheckFailed(f"{service} mounts client-side files: {bad}")
        files = run(["docker", "exec", cid, "sh", "-c", FIND_SECRETS], check=False).stdout.split()
        found[service] = files
        allowed = {"/app/keys/server.ctx"} if service == "serverapp" else set()
        if set(files) - allowed:
            raise CheckFailed(f"{service} holds key or data files: {sorted(set(files) - allowed)}")
    probe = ("import tenseal as ts; c = ts.context_from(open('/app/keys/server.ctx', 'rb').read()); "
             "print('private' if c.is_private() else 'public')")
    kind = run(["docker", "exec", stack.container("serverapp"), "python", "-c", probe]).stdout.strip()
    if kind != "public":
        raise CheckFailed(f"the ServerApp's CKKS context is {kind!r}; expected 'public' (no secret key)")
    report["server_side"] = {"files_found": found, "server_ctx": kind}
    say(f"server side: no client key, auth key or data file (found {found}); server.ctx is {kind}")


def check_supernode_image_is_client_only(report: dict) -> None:
    probe = ("import importlib.util as u; print(','.join(m for m in %r if u.find_spec(m)))" % (SERVER_ONLY,))
    present = run(["docker", "run", "--rm", "--entrypoint", "python", IMAGES["supernode"][1], "-c", probe]
                  ).stdout.strip()
    report["supernode_server_only_packages"] = present.split(",") if present else []
    if present:
        raise CheckFailed(f"the SuperNode image carries server-only packages: {present}")
    say(f"SuperNode image: none of {', '.join(SERVER_ONLY)} installed")


def refused_supernode(stack: Stack, name: str, key_dir: str, with_ca: bool) -> tuple[int, str]:
    network = f"{stack.project}_default"
    cmd = ["docker", "run", "--name", f"{stack.project}-{name}", "--network", network,
           "-v", f"{stack.stack / 'auth' / key_dir / 'auth_key'}:/app/auth/auth_key:ro"]
    if with_ca:
        cmd += ["-v", f"{stack.stack / 'certs' / 'ca.crt'}:/app/certs/ca.crt:ro"]
    cmd += [IMAGES["supernode"][1], "--superlink", "superlink:8000", "--auth-supernode-private-key",
            "/app/auth/auth_key", "--max-retries", "2", "--max-wait-time", "30"]
    if with_ca:
        cmd += ["--root-certificates", "/app/certs/ca.crt"]
    try:
        proc = run(cmd, check=False, timeout=180)
        return proc.returncode, proc.stdout + proc.stderr
    finally:
        run(["docker", "rm", "-f", f"{stack.project}-{name}"], check=False)


def check_refusals(stack: Stack, report: dict) -> None:
    online_before = sorted(n["node-id"] for n in stack.nodes() if n["status"] == "online")
    code, out = refused_supernode(stack, "no-ca", "supernode-1", with_ca=False)
    if code == 0 or "CERTIFICATE_VERIFY_FAILED" not in out.upper().replace(" ", "_"):
        raise CheckFailed(f"a SuperNode without the CA certificate was not refused on TLS: exit {code}, {out[-800:]}")
    report["refusals"]["without_ca"] = {"exit": code, "says": _line_with(out, "CERTIFICATE_VERIFY_FAILED")}
    code, out = refused_supernode(stack, "unregistered", f"supernode-{SUPERNODES + 1}", with_ca=True)
    if code == 0 or "Failed to activate SuperNode" not in out:
        raise CheckFailed(f"a SuperNode with an unregistered key was not refused: exit {code}, {out[-800:]}")
    report["refusals"]["unregistered_key"] = {"exit": code, "says": _line_with(out, "Failed to activate")}
    online_after = sorted(n["node-id"] for n in stack.nodes() if n["status"] == "online")
    if online_after != online_before:
        raise CheckFailed(f"online nodes changed from {online_before} to {online_after} during the refusals")
    say(f"refused: no CA certificate (exit {report['refusals']['without_ca']['exit']}), unregistered key "
        f"(exit {report['refusals']['unregistered_key']['exit']})")


def _line_with(text: str, needle: str) -> str:
    hits = [line.strip() for line in text.splitlines() if needle.lower() in line.lower()]
    return re.sub(r"\x1b\[[0-9;]*m", "", hits[0])[:300] if hits else ""


def take_down(stack: Stack, report: dict) -> None:
    stack.compose_run("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300)
    left = {kind: stack.labelled(kind) for kind in ("container", "network", "volume")}
    report["left_after_down"] = left
    if any(left.values()):
        raise CheckFailed(f"left after down: {left}")
    say("down -v: no container, network or volume of the stack left")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "compose-test")
    parser.add_argument("--base-image", default="", help="a Python 3.11 image to build on (default: see above)")
    parser.add_argument("--rebuild-base", action="store_true", help="build the Debian base image again")
    parser.add_argument("--skip-build", action="store_true", help="use the images the engine holds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--records", type=int, default=300, help="synthetic records per SuperNode")
    parser.add_argument("--storage-driver", default="",
                        help="for a dockerd this test starts (default: dockerd's choice, overlay2 where the kernel "
                             "allows it; vfs works everywhere but copies the whole image for each container)")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error(f"--rounds {args.rounds}: expected >= 3 (a node is killed in round 2, one round must follow)")
    if args.records < 100:
        parser.error(f"--records {args.records}: expected >= 100 (each node keeps a third)")
    return args


def check(report: dict, name: str, step, *args) -> bool:
    """Run one check; a failure is recorded and the independent checks after it still run."""
    try:
        step(*args)
    except (CheckFailed, subprocess.TimeoutExpired) as err:
        report["failed"].append(f"{name}: {err}")
        say(f"FAILED: {name}: {err}")
        return False
    report["passed"].append(name)
    return True


def bring_up(stack: Stack, report: dict, ids: dict) -> None:
    t0 = time.time()
    stack.compose_run("up", "-d", "--no-build", "superlink")
    ids.update(register_nodes(stack))
    say(f"registered SuperNodes {ids}")
    stack.compose_run("up", "-d", "--no-build")
    wait_for(f"{SUPERNODES} SuperNodes online",
             lambda: sum(n["status"] == "online" for n in stack.nodes()) == SUPERNODES, 180)
    report["seconds"]["stack_up"] = round(time.time() - t0, 1)
    say(f"stack up: {SUPERNODES} SuperNodes online on 127.0.0.1:{stack.port}")


def use_built_images(report: dict) -> None:
    for service, (_, tag) in IMAGES.items():
        if not image_exists(tag):
            raise CheckFailed(f"--skip-build: the engine holds no image {tag}")
        report["images"][service] = {"tag": tag, "bytes": image_size(tag)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped test still takes its stack down
    started = time.time()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    report: dict = {"passed": [], "failed": [], "images": {}, "seconds": {}, "fault": {}, "refusals": {}}
    project = f"adeptheq-compose-test-{os.getpid()}"
    try:
        with Engine(out, args.storage_driver):
            if args.skip_build:
                built = check(report, "images held by the engine", use_built_images, report)
            else:
                built = check(report, "images built", build_images, args.base_image, args.rebuild_base, report)
            if built:
                check(report, "SuperNode image without server-only packages", check_supernode_image_is_client_only,
                      report)
                stack_dir = out / "stack"
                stack_dir.mkdir()
                make_stack_folder(stack_dir, args.records)
                stack = Stack(stack_dir, project, free_port())
                stack.write_connection()
                ids: dict[int, str] = {}
                try:
                    if check(report, f"stack up, {SUPERNODES} SuperNodes online", bring_up, stack, report, ids):
                        check(report, "run completed after a SuperNode was killed, the node named as dropped",
                              run_with_a_killed_node, stack, ids, args.rounds, report)
                        check(report, "server side holds no client key and no data",
                              check_server_side_holds_nothing, stack, report)
                        check(report, "SuperNodes without the CA or with an unregistered key refused",
                              check_refusals, stack, report)
                finally:
                    for service in ("serverapp", "superlink", "supernode-1"):
                        try:
                            (out / f"{service}.log").write_text(stack.logs(service))
                        except CheckFailed:
                            pass
                    if stack.run_id:
                        (out / "run.log").write_text(server_log(stack, stack.run_id))
                    check(report, "nothing left after down", take_down, stack, report)
    except CheckFailed as err:  # no engine, or the stack folder could not be made
        report["failed"].append(str(err))
        say(f"FAILED: {err}")
    finally:
        report["seconds"]["total"] = round(time.time() - started, 1)
        (out / "report.json").write_text(json.dumps(report, indent=1))
    ok = not report["failed"]
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:,.0f} MB" for k, v in report["images"].items())
    say(f"{'passed' if ok else 'FAILED'} ({len(report['passed'])} checks held, {len(report['failed'])} failed) in "
        f"{report['seconds']['total'] / 60:.1f} min; images: {sizes}; report: {out / 'report.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
