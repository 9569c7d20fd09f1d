"""Run ``flwr run .`` in a project-local Flower home and stop everything it started.

``flwr run .`` starts a detached local SuperLink (simulation mode) that outlives the run.
This runner writes ``$FLWR_HOME/config.toml`` with the simulation federation, sets the
environment the project needs (no runtime dependency installation, no telemetry, no update
check), runs the app, and then stops the SuperLink it started and every process below it,
by process id.

    python -m server_app.simulation_runner [--supernodes 10] [--run-config "k=v ..."]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_FLWR_HOME = PROJECT / ".flwr_home"


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


def run_simulation(run_config: str = "", num_supernodes: int = 10, flwr_home: Path = DEFAULT_FLWR_HOME,
                   app_dir: Path = PROJECT, timeout: float | None = None, http_port: int | None = None,
                   control_port: int | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    """``flwr run <app_dir> local --stream`` with the project's environment; always cleans up."""
    flwr_home = Path(flwr_home).resolve()
    if superlink_pids(flwr_home):
        stop_process_tree(superlink_pids(flwr_home))  # a leftover of an interrupted run
    write_simulation_federation(flwr_home, num_supernodes)
    env = flower_env(flwr_home, http_port, control_port)
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(app_dir), "local", "--stream"]
    if run_config:
        cmd += ["--run-config", run_config]
    try:
        return subprocess.run(cmd, env=env, cwd=app_dir, timeout=timeout, text=True,
                              capture_output=capture, check=False)
    finally:
        stopped = stop_process_tree(superlink_pids(flwr_home))
        if stopped:
            print(f"[simulation_runner] stopped local SuperLink and {len(stopped) - 1} child processes "
                  f"(pids {stopped[:8]}{'...' if len(stopped) > 8 else ''})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-config", default="", help='overrides, e.g. "num-server-rounds=20 data-path=\'/data\'"')
    parser.add_argument("--supernodes", type=int, default=10, help="simulated SuperNodes (default 10)")
    parser.add_argument("--flwr-home", type=Path, default=DEFAULT_FLWR_HOME)
    args = parser.parse_args(argv)
    result = run_simulation(args.run_config, args.supernodes, args.flwr_home)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
