"""Run ``flwr run .`` in a project-local Flower home, say whether it worked, and stop what it started.

1. Checks the run config (``pyproject.toml`` defaults merged with ``--run-config``, as Flower
   merges them) against the simulated federation.
2. Refuses to start while another simulation owns this Flower home or the local SuperLink's fixed
   ports (127.0.0.1:39091 and 39093, or ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` /
   ``FLWR_LOCAL_CONTROL_API_PORT``); a SuperLink of this home that no runner owns is a leftover of
   an interrupted run and is stopped.
3. Checks the data (parsed once into the cache the simulated clients open) and the federation
   size against it. Steps 1-3 happen before any Flower or Ray process exists.
4. Writes ``$FLWR_HOME/config.toml`` with the simulation federation, sets the environment the
   project needs (no runtime dependency installation, no telemetry, no update check), runs
   ``flwr run . local --stream``, asks the SuperLink how the run ended (``flwr ls``), and stops the
   SuperLink and every process below it, by process id.

Exit status: 0 the run completed; 1 it failed or could not start (the last line says why);
2 a bad configuration or bad input (one line naming the key or file, no Flower process started).

    python -m server_app.simulation_runner [--supernodes 10] [--run-config "k=v ..."]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.common.config import flatten_dict, get_project_config, parse_config_args

from common.config import ConfigError, RunConfig
from data_prep.format_error import DataFormatError
from data_prep.registry import datasets_help
from server_app.preflight import check_run, check_simulated_nodes

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_FLWR_HOME = PROJECT / ".flwr_home"
DEFAULT_HTTP_PORT, DEFAULT_CONTROL_PORT = 39091, 39093  # flwr.cli.constant: the local SuperLink's fixed ports
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
STATUS_WAIT_S = 30.0


def flower_env(flwr_home: Path, http_port: int | None = None, control_port: int | None = None) -> dict[str, str]:
    env = os.environ.copy()
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    })
    if http_port is not None:
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(http_port)
    if control_port is not None:
        env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
    return env


def write_simulation_federation(flwr_home: Path, num_supernodes: int, cpus_per_client: int = 1) -> Path:
    """``config.toml`` with a default ``local`` connection simulating ``num_supernodes`` nodes."""
    if num_supernodes < 1:
        raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        '[superlink]\ndefault = "local"\n\n'
        '[superlink.local]\naddress = ":local:"\n'
        f"options.num-supernodes = {num_supernodes}\n"
        f"options.backend.client-resources.num-cpus = {cpus_per_client}\n"
        "options.backend.client-resources.num-gpus = 0.0\n"
    )
    return path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from ``/proc``, at this moment)."""
    tree = _children()
    found, stack = [], list(tree.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(tree.get(child, []))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_state(pid: int) -> str:
    """The ``/proc`` state letter; 'X' when the process no longer exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def is_alive(pid: int) -> bool:
    return process_state(pid) not in ("X", "Z")


def superlink_pids(flwr_home: Path) -> list[int]:
    """SuperLinks whose database lives in this Flower home (so: started for this project)."""
    marker = str(flwr_home / "local-superlink")
    pids = (int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline"))
    return [pid for pid in pids if "flower-superlink" in (line := cmdline(pid)) and marker in line]


def stop_process_tree(root_pids: list[int], grace: float = 10.0) -> list[int]:
    """SIGTERM the given processes and all their descendants, then SIGKILL what is left."""
    victims = list(dict.fromkeys(p for root in root_pids for p in (root, *descendants(root))))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(is_alive(p) for p in victims):
            time.sleep(0.2)
    return victims


@dataclass
class SimulationResult:
    """How a simulation ended: the exit status, the run's output (when captured) and the one-line reason."""

    returncode: int
    stdout: str = ""
    stderr: str = ""
    run_id: int | None = None
    status: str = ""  # Flower's run status, e.g. 'finished:completed'
    reason: str = ""  # why it did not complete; empty on success


class SimulationBusy(RuntimeError):
    """Another simulation owns this Flower home or the local SuperLink's ports."""


def run_config_from_overrides(overrides: str, app_dir: Path = PROJECT) -> RunConfig:
    """The validated ``RunConfig`` Flower will build: pyproject defaults with ``--run-config`` on top."""
    try:
        parsed = parse_config_args([overrides]) if overrides.strip() else {}
    except Exception:  # flwr raises click's exception for a string TOML cannot read
        raise ConfigError(f"--run-config {overrides!r}: expected space-separated key=value pairs with TOML values, "
                          "e.g. \"num-server-rounds=5 data-path='/data/ptb-xl'\"") from None
    defaults = flatten_dict(get_project_config(app_dir)["tool"]["flwr"]["app"].get("config", {}))
    return RunConfig.from_flower(defaults | parsed)


def check_config(overrides: str, num_supernodes: int, app_dir: Path = PROJECT) -> RunConfig:
    """The checks that read no data (a second): the run config and the simulated federation; raises ConfigError."""
    cfg = run_config_from_overrides(overrides, app_dir)
    check_simulated_nodes(cfg, num_supernodes)
    return cfg


def check_data(cfg: RunConfig, num_supernodes: int) -> None:
    """The checks that read the data (parsed into the clients' cache, so possibly minutes once); raises
    ConfigError or DataFormatError."""
    check_run(cfg, num_supernodes, parse_records=True)


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def _start_time(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def port_owner(port: int) -> int | None:
    """The process listening on TCP ``port`` (from ``/proc``; of those sharing the socket, the oldest)."""
    inodes = _listening_inodes(port)
    holders = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*") if inodes else ():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            holders.add(int(fd.parts[2]))
    return min(holders, key=lambda pid: (_start_time(pid), pid)) if holders else None


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class SimulationLock:
    """An exclusive ``flock`` on ``$FLWR_HOME/simulation.lock`` held for the whole run; holds the owner's pid."""

    def __init__(self, flwr_home: Path) -> None:
        self.path = flwr_home / "simulation.lock"
        self._handle = None

    def __enter__(self) -> "SimulationLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise SimulationBusy(f"another simulation (runner pid {owner}) is running in the Flower home "
                                 f"{self.path.parent}; wait for it to finish or stop it first") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()


def claim_ports(flwr_home: Path, ports: list[int]) -> None:
    """Stop a leftover SuperLink of this home; refuse when anything else holds one of ``ports``."""
    leftovers = superlink_pids(flwr_home)
    if leftovers:  # we hold the lock, so no runner owns it: an interrupted run left it behind
        stopped = stop_process_tree(leftovers)
        print(f"[simulation_runner] stopped a leftover local SuperLink of {flwr_home} (pids {stopped[:8]})",
              file=sys.stderr)
    for port in ports:
        if port_in_use(port):
            owner = port_owner(port)
            who = f"pid {owner}: {cmdline(owner)[:120].strip()}" if owner else "a process this user cannot see"
            raise SimulationBusy(f"port {port} on 127.0.0.1, which the local SuperLink needs, is in use by {who}; "
                                 "another Flower simulation is probably running: wait for it to finish")


def _flwr(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run_status(run_id: int, env: dict[str, str], app_dir: Path) -> tuple[str, str]:
    """Flower's (status, status details) of ``run_id``, waiting up to STATUS_WAIT_S for it to finish."""
    deadline = time.time() + STATUS_WAIT_S
    status, details = "unknown", "the SuperLink did not report the run's status"
    while time.time() < deadline:
        done = subprocess.run([_flwr("flwr"), "ls", "local", "--run-id", str(run_id), "--format", "json"],
                              env=env, cwd=app_dir, capture_output=True, text=True, check=False)
        try:
            runs = json.loads(done.stdout).get("runs", [])
        except json.JSONDecodeError:
            runs = []
        if runs:
            status, details = runs[0].get("status", status), runs[0].get("status-details", "")
            if status.startswith("finished"):
                break
        time.sleep(1.0)
    return status, details


_FLOWER_FAILURE_PREFIX = "Simulation failed with exception: "


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _stream(proc: subprocess.Popen, lines: list[str], echo: bool) -> None:
    for line in proc.stdout:
        lines.append(line)
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()


def run_simulation(run_config: str = "", num_supernodes: int = 10, flwr_home: Path = DEFAULT_FLWR_HOME,
                   app_dir: Path = PROJECT, timeout: float | None = None, http_port: int | None = None,
                   control_port: int | None = None, capture: bool = False, check: bool = True) -> SimulationResult:
    """Check, then ``flwr run <app_dir> local --stream``; always cleans up; never raises for a failed run.

    ``check=False`` skips the pre-flight checks, leaving them to the ServerApp and ClientApps, as in a
    deployment. With ``capture`` the output is returned instead of printed.
    """
    flwr_home = Path(flwr_home).resolve()
    try:
        cfg = check_config(run_config, num_supernodes, app_dir) if check else None
    except ConfigError as err:
        return SimulationResult(EXIT_INVALID, reason=_one_line(err))
    env = flower_env(flwr_home, http_port, control_port)
    ports = [http_port or int(env.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", DEFAULT_HTTP_PORT)),
             control_port or int(env.get("FLWR_LOCAL_CONTROL_API_PORT", DEFAULT_CONTROL_PORT))]
    try:
        with SimulationLock(flwr_home):  # before the data checks: a second run stops at once, not minutes later
            claim_ports(flwr_home, ports)
            if cfg is not None:
                try:
                    check_data(cfg, num_supernodes)
                except (ConfigError, DataFormatError) as err:
                    return SimulationResult(EXIT_INVALID, reason=_one_line(err))
            return _run_flwr(run_config, num_supernodes, flwr_home, app_dir, env, timeout, capture)
    except SimulationBusy as err:
        return SimulationResult(EXIT_FAILED, reason=str(err))


def _run_flwr(run_config: str, num_supernodes: int, flwr_home: Path, app_dir: Path, env: dict[str, str],
              timeout: float | None, capture: bool) -> SimulationResult:
    write_simulation_federation(flwr_home, num_supernodes)
    cmd = [_flwr("flwr"), "run", str(app_dir), "local", "--stream"]
    if run_config:
        cmd += ["--run-config", run_config]
    lines: list[str] = []
    result = SimulationResult(EXIT_FAILED)
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=app_dir, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, bufsize=1)
        reader = threading.Thread(target=_stream, args=(proc, lines, not capture), daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        reader.join(timeout=10)
        output = "".join(lines)
        started = re.search(r"Successfully started run (\d+)", output)
        result.run_id = int(started[1]) if started else None
        if code is None:
            result.reason = f"the run did not finish within {timeout:.0f} s and was stopped"
        elif result.run_id is None:
            tail = [line.strip() for line in lines if line.strip()]
            result.reason = f"flwr run exited with status {code} before a run started: " + (tail[-1] if tail else "")
        else:
            result.status, details = run_status(result.run_id, env, app_dir)
            if result.status == "finished:completed":
                result.returncode = EXIT_OK
            else:
                cause = _one_line(details.removeprefix(_FLOWER_FAILURE_PREFIX)) or "no reason reported"
                result.reason = f"run {result.run_id} ended as {result.status}: {cause}"
    finally:
        stopped = stop_process_tree(superlink_pids(flwr_home))
        if stopped:
            print(f"[simulation_runner] stopped local SuperLink and {len(stopped) - 1} child processes "
                  f"(pids {stopped[:8]}{'...' if len(stopped) > 8 else ''})", file=sys.stderr)
    if capture:
        result.stdout = "".join(lines)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=datasets_help())
    parser.add_argument("--run-config", default="", help='overrides, e.g. "num-server-rounds=20 data-path=\'/data\'"')
    parser.add_argument("--supernodes", type=int, default=10, help="simulated SuperNodes (default 10)")
    parser.add_argument("--flwr-home", type=Path, default=DEFAULT_FLWR_HOME)
    args = parser.parse_args(argv)
    if args.supernodes < 1:
        parser.error(f"--supernodes {args.supernodes}: expected a positive integer")
    try:
        result = run_simulation(args.run_config, args.supernodes, args.flwr_home)
    except KeyboardInterrupt:  # the SuperLink was stopped on the way out
        print("error: interrupted; the run did not complete", file=sys.stderr, flush=True)
        return EXIT_FAILED
    if result.returncode != EXIT_OK:
        print(f"error: {result.reason}", file=sys.stderr, flush=True)
    else:
        print(f"[simulation_runner] run {result.run_id} completed", file=sys.stderr, flush=True)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
