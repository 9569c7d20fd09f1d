"""Static checks of the Docker deployment in docker/, without a Docker engine.

The compose files are parsed with PyYAML and checked for what a wrong edit would break:
pinned images, who mounts which key or data folder, and that every flag given to a
Flower CLI is one the installed CLI accepts (read from its ``--help``, not hard-coded).
The certificate and key scripts are run into a temporary folder and their output is
checked with openssl / cryptography / flwr's own key loader.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_FILES = ("compose.yml", "compose.tls.yml")
DOCKERFILES = ("Dockerfile.superlink", "Dockerfile.supernode", "Dockerfile.serverapp")
SUPERNODES = ("supernode-1", "supernode-2", "supernode-3")
SERVER_SIDE = ("superlink", "serverapp")
# Files every party may hold: the CA certificate is public.
PUBLIC_SHARED = {DOCKER / "certs" / "ca.crt"}
CA_PRIVATE_KEY = DOCKER / "certs" / "ca.key"
# Flags whose value is a path inside the container that must come from a mount.
PATH_FLAGS = (
    "--ssl-certfile",
    "--ssl-keyfile",
    "--ssl-ca-certfile",
    "--root-certificates",
    "--auth-supernode-private-key",
    "--superexec-auth-secret-file",
)
TLS_SERVER_FLAGS = {"--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--enable-supernode-auth"}


# ---------------------------------------------------------------- reference versions


def _pyproject_pins() -> dict[str, str]:
    """Map normalised package name -> pinned version from pyproject's dependencies."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    pins: dict[str, str] = {}
    for spec in data["project"]["dependencies"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)\s*", spec)
        assert match, f"pyproject dependency '{spec}' is not pinned with =="
        pins[_norm(match.group(1))] = match.group(3)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


PINS = _pyproject_pins()
FLWR_VERSION = PINS["flwr"]
TORCH_VERSION = PINS["torch"]


# ---------------------------------------------------------------- compose parsing


def _interpolate(value: object) -> object:
    """Resolve compose ``${VAR:-default}`` to its default; a bare ``${VAR}`` is an error."""
    if isinstance(value, str):
        if re.search(r"\$\{[^}:]+\}", value):
            raise AssertionError(f"'{value}' uses a variable without a default")
        return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


@functools.cache
def load_compose(name: str) -> dict:
    data = yaml.safe_load((DOCKER / name).read_text(encoding="utf-8"))
    return _interpolate(data)


@dataclass(frozen=True)
class Mount:
    source: Path | None  # host path for a bind mount, None for a named volume
    volume: str | None
    target: str
    read_only: bool


def mounts(service: dict) -> list[Mount]:
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            assert len(parts) in (2, 3), f"volume '{entry}' is not SRC:DST[:MODE]"
            src, target = parts[0], parts[1]
            read_only = len(parts) == 3 and "ro" in parts[2].split(",")
        else:
            src, target = entry.get("source", ""), entry["target"]
            read_only = bool(entry.get("read_only", False))
        if src.startswith((".", "/")):
            out.append(Mount((DOCKER / src).resolve(), None, target, read_only))
        else:
            out.append(Mount(None, src, target, read_only))
    return out


def bind_sources(service: dict) -> list[Path]:
    return [m.source for m in mounts(service) if m.source is not None]


def command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(t) for t in cmd]


def flags(tokens: list[str]) -> set[str]:
    return {t.split("=", 1)[0] for t in tokens if t.startswith("--")}


def option(tokens: list[str], flag: str) -> str | None:
    for i, tok in enumerate(tokens):
        if tok == flag:
            assert i + 1 < len(tokens), f"{flag} has no value"
            return tokens[i + 1]
        if tok.startswith(flag + "="):
            return tok.split("=", 1)[1]
    return None


def host_path_of(service: dict, container_path: str) -> Path | None:
    """Host file behind a container path, through the service's bind mounts."""
    for m in mounts(service):
        if m.source is None:
            continue
        if container_path == m.target:
            return m.source
        if container_path.startswith(m.target.rstrip("/") + "/"):
            return m.source / container_path[len(m.target.rstrip("/")) + 1 :]
    return None


def is_covered_by_mount(service: dict, container_path: str) -> bool:
    return any(
        container_path == m.target or container_path.startswith(m.target.rstrip("/") + "/")
        for m in mounts(service)
    )


def overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


# ---------------------------------------------------------------- Dockerfile parsing


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    lines = [l for l in (DOCKER / name).read_text(encoding="utf-8").splitlines() if not l.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instr, _, args = line.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def pip_installs(name: str) -> list[list[str]]:
    """Argument lists of every `pip install` in a Dockerfile's RUN instructions."""
    out = []
    for instr, args in dockerfile_instructions(name):
        if instr != "RUN":
            continue
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)  # quotes kept whole; && ; || split off
        lexer.whitespace_split = True
        tokens = list(lexer)
        for i in range(len(tokens) - 1):
            if tokens[i] == "pip" and tokens[i + 1] == "install":
                end = next((j for j in range(i + 2, len(tokens)) if tokens[j] in ("&&", ";", "||", ";;")), len(tokens))
                out.append(tokens[i + 2 : end])
    return out


def pip_requirements(args: list[str]) -> tuple[list[str], list[str]]:
    """Split pip install arguments into (package specs, requirement files)."""
    specs, files, skip_next = [], [], False
    for i, tok in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if tok in ("-r", "--requirement"):
            files.append(args[i + 1])
            skip_next = True
        elif tok in ("--index-url", "--extra-index-url", "-i", "-c", "--constraint"):
            skip_next = True
        elif not tok.startswith("-"):
            specs.append(tok)
    return specs, files


def requirements_file_pins(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        assert match, f"{path.name}: '{line}' is not pinned as name==version"
        pins[_norm(match.group(1))] = match.group(2)
    return pins


def entrypoint_cli(service: dict) -> str:
    if "entrypoint" in service:
        ep = service["entrypoint"]
        return (shlex.split(ep) if isinstance(ep, str) else ep)[0]
    dockerfile = service["build"]["dockerfile"]
    entries = [args for instr, args in dockerfile_instructions(dockerfile) if instr == "ENTRYPOINT"]
    assert entries, f"{dockerfile} has no ENTRYPOINT"
    return json.loads(entries[-1])[0]


# ---------------------------------------------------------------- installed CLIs


@functools.cache
def accepted_flags(cli: str) -> frozenset[str]:
    """Long options the installed `cli` lists in its --help."""
    exe = shutil.which(cli, path=str(Path(sys.executable).parent)) or shutil.which(cli)
    assert exe, f"Flower CLI '{cli}' is not installed next to {sys.executable}"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{cli} --help failed: {proc.stderr[-500:]}"
    found = frozenset(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", proc.stdout))
    assert "--help" in found, f"could not parse the options of {cli} --help"
    return found


@functools.cache
def deprecated_flags(cli: str) -> frozenset[str]:
    """Options whose --help entry says they are deprecated."""
    exe = shutil.which(cli, path=str(Path(sys.executable).parent)) or shutil.which(cli)
    assert exe, f"Flower CLI '{cli}' is not installed next to {sys.executable}"
    text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120).stdout
    options_part = text.split("options:", 1)[-1]
    # argparse starts each option entry on a line indented by two spaces.
    entries = re.split(r"\n(?=  -)", options_part)
    out = set()
    for entry in entries:
        names = re.findall(r"^\s*(?:-\w, )?(--[a-z0-9-]+)", entry)
        if names and "deprecated" in entry.lower():
            out.add(names[0])
    return frozenset(out)


# ================================================================ tests: compose


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_services_are_one_superlink_one_serverapp_three_supernodes(name: str) -> None:
    services = load_compose(name)["services"]
    assert set(services) == {"superlink", "serverapp", *SUPERNODES}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_image_is_pinned_to_the_flwr_version(name: str) -> None:
    assert FLWR_VERSION == installed_version("flwr"), "pyproject pin and installed flwr differ"
    for svc_name, svc in load_compose(name)["services"].items():
        image = svc.get("image", "")
        repo, sep, tag = image.rpartition(":")
        assert sep and repo and "/" not in tag, f"{name}:{svc_name} image '{image}' has no tag"
        assert tag != "latest", f"{name}:{svc_name} uses the mutable 'latest' tag"
        assert tag.startswith(FLWR_VERSION), f"{name}:{svc_name} tag '{tag}' is not flwr {FLWR_VERSION}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_base_image_has_an_exact_version_tag(dockerfile: str) -> None:
    instructions = dockerfile_instructions(dockerfile)
    defaults = dict(args.partition("=")[::2] for instr, args in instructions if instr == "ARG" and "=" in args)
    froms = [args.split()[0] for instr, args in instructions if instr == "FROM"]
    assert froms, f"{dockerfile} has no FROM"
    for image in froms:
        # a build argument may name the base (a registry-less host builds its own); its default is the public image
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), image)
        assert "$" not in image, f"{dockerfile}: FROM {image} depends on a build argument without a default"
        tag = image.split("@")[0].rpartition(":")[2]
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{dockerfile}: FROM {image} is not an exact X.Y.Z tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_pip_installs_are_pinned_and_match_pyproject(dockerfile: str) -> None:
    installs = pip_installs(dockerfile)
    assert installs, f"{dockerfile} installs nothing with pip"
    installed: dict[str, str] = {}
    order: list[str] = []
    for args in installs:
        specs, files = pip_requirements(args)
        for spec in specs:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;+]+)(\+[\w${}]+)?", spec)
            assert match, f"{dockerfile}: pip argument '{spec}' is not pinned with =="
            installed[_norm(match.group(1))] = match.group(3)  # the local label (+cpu, +cu126) names the build
            order.append(_norm(match.group(1)))
        for req in files:
            pins = requirements_file_pins(DOCKER / Path(req).name)
            installed.update(pins)
            order.extend(pins)
    assert installed.get("flwr") == FLWR_VERSION, f"{dockerfile} does not install flwr=={FLWR_VERSION}"
    for pkg, ver in installed.items():
        if pkg in PINS:
            assert ver == PINS[pkg], f"{dockerfile}: {pkg}=={ver} but pyproject pins {PINS[pkg]}"
    if "torch" in installed:
        # The CPU/CUDA torch wheel must come first, or a dependency pulls the default build.
        assert order[0] == "torch", f"{dockerfile} installs {order[0]} before torch"


def test_app_images_carry_every_pyproject_dependency_and_the_supernode_no_server_only_one() -> None:
    client = requirements_file_pins(DOCKER / "requirements-client.txt")
    server = requirements_file_pins(DOCKER / "requirements-server.txt")
    named = {_norm(spec.split("==")[0]) for args in pip_installs("Dockerfile.supernode") for spec in
             pip_requirements(args)[0]}  # torch, and wfdb without its plotting and download dependencies
    missing = sorted(set(PINS) - set(client) - set(server) - named)
    assert not missing, f"the images lack {missing} from pyproject.toml"
    assert named == {"torch", "wfdb"}
    assert set(server) == {"dp-accounting", "matplotlib"} and not set(server) & set(client)
    client_installs = [a for args in pip_installs("Dockerfile.supernode") for a in pip_requirements(args)[1]]
    assert [Path(f).name for f in client_installs] == ["requirements-client.txt"]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_server_side_never_mounts_client_keys_or_data(name: str) -> None:
    services = load_compose(name)["services"]
    client_sources = {src for sn in SUPERNODES for src in bind_sources(services[sn])} - PUBLIC_SHARED
    for svc_name in SERVER_SIDE:
        for src in bind_sources(services[svc_name]):
            assert src.name not in ("client.ctx", "auth_key"), f"{name}:{svc_name} mounts {src}"
            assert not any(re.fullmatch(r"(client|supernode)-\d+", p) for p in src.parts), (
                f"{name}:{svc_name} mounts a client folder {src}"
            )
            for client_src in client_sources:
                assert not overlaps(src, client_src), f"{name}:{svc_name} mount {src} exposes {client_src}"
        targets = {m.target for m in mounts(services[svc_name])}
        assert not targets & {"/app/data", "/app/keys/client.ctx", "/app/auth/auth_key"}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_no_container_mounts_the_ca_private_key(name: str) -> None:
    for svc_name, svc in load_compose(name)["services"].items():
        for src in bind_sources(svc):
            assert not overlaps(src, CA_PRIVATE_KEY), f"{name}:{svc_name} mount {src} exposes the CA key"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_each_supernode_mounts_only_its_own_data_and_keys(name: str) -> None:
    services = load_compose(name)["services"]
    for i, sn in enumerate(SUPERNODES, start=1):
        own = {f"client-{i}", f"supernode-{i}"}
        private = [src for src in bind_sources(services[sn]) if src not in PUBLIC_SHARED]
        assert private, f"{name}:{sn} mounts no data or key"
        for src in private:
            assert own & set(src.parts), f"{name}:{sn} mounts {src}, which is not its own folder"
        for m in mounts(services[sn]):
            assert m.read_only, f"{name}:{sn} mounts {m.target} writable"
    for a in SUPERNODES:
        for b in SUPERNODES:
            if a >= b:
                continue
            for src_a in set(bind_sources(services[a])) - PUBLIC_SHARED:
                for src_b in set(bind_sources(services[b])) - PUBLIC_SHARED:
                    assert not overlaps(src_a, src_b), f"{name}: {a} and {b} share {src_a} / {src_b}"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_node_config_gives_distinct_partitions_and_mounted_paths(name: str) -> None:
    from flwr.common.config import parse_config_args

    services = load_compose(name)["services"]
    partitions = []
    for sn in SUPERNODES:
        raw = option(command(services[sn]), "--node-config")
        assert raw is not None, f"{name}:{sn} has no --node-config"
        cfg = parse_config_args([raw])
        assert set(cfg) == {"partition-id", "num-partitions", "data-path", "key-path"}, cfg
        assert cfg["num-partitions"] == len(SUPERNODES)
        partitions.append(cfg["partition-id"])
        data_target = next((m for m in mounts(services[sn]) if m.target == cfg["data-path"]), None)
        assert data_target is not None, f"{name}:{sn} data-path {cfg['data-path']} is not a mount"
        key_host = host_path_of(services[sn], str(cfg["key-path"]))
        assert key_host is not None and key_host.name == "client.ctx", f"{name}:{sn} key-path not mounted"
    assert sorted(partitions) == list(range(len(SUPERNODES)))


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_flag_is_accepted_by_the_installed_cli(name: str) -> None:
    for svc_name, svc in load_compose(name)["services"].items():
        cli = entrypoint_cli(svc)
        unknown = flags(command(svc)) - accepted_flags(cli)
        assert not unknown, f"{name}:{svc_name}: {cli} does not accept {sorted(unknown)}"
        old = flags(command(svc)) & deprecated_flags(cli)
        assert not old, f"{name}:{svc_name}: {cli} marks {sorted(old)} as deprecated"


def test_deprecated_flag_parsing_finds_the_documented_ones() -> None:
    # flwr 1.41 --help marks these as deprecated; guards the parser above.
    assert {"--fleet-api-address", "--control-api-address", "--auth-list-public-keys"} <= deprecated_flags(
        "flower-superlink"
    )
    assert "--ssl-certfile" not in deprecated_flags("flower-superlink")
    assert "--auth-supernode-public-key" in deprecated_flags("flower-supernode")


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_path_flags_point_into_mounts(name: str) -> None:
    for svc_name, svc in load_compose(name)["services"].items():
        tokens = command(svc)
        for flag in PATH_FLAGS:
            value = option(tokens, flag)
            if value is not None:
                assert is_covered_by_mount(svc, value), f"{name}:{svc_name} {flag} {value} is not mounted"
        database = option(tokens, "--database")
        if database is not None:
            assert is_covered_by_mount(svc, database), f"{name}:{svc_name} --database would be lost on restart"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_addresses_point_at_the_superlink_port(name: str) -> None:
    services = load_compose(name)["services"]
    link = command(services["superlink"])
    assert option(link, "--isolation") == "process", "the ServerApp runs in the serverapp container"
    address = f"superlink:{option(link, '--port')}"
    assert option(link, "--host") == "0.0.0.0", "the default host 127.0.0.1 is unreachable from other containers"
    assert option(command(services["serverapp"]), "--runtime-api-address") == address
    for sn in SUPERNODES:
        assert option(command(services[sn]), "--superlink") == address


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_superexec_secret_is_shared_by_superlink_and_serverapp_only(name: str) -> None:
    services = load_compose(name)["services"]
    secrets = {}
    for svc_name in SERVER_SIDE:
        value = option(command(services[svc_name]), "--superexec-auth-secret-file")
        assert value is not None, f"{name}:{svc_name} runs the Runtime API without the SuperExec secret"
        secrets[svc_name] = host_path_of(services[svc_name], value)
    assert secrets["superlink"] is not None and secrets["superlink"] == secrets["serverapp"]
    for sn in SUPERNODES:
        assert secrets["superlink"] not in bind_sources(services[sn])


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_tls_is_all_or_nothing(name: str) -> None:
    services = load_compose(name)["services"]
    insecure = {svc_name for svc_name, svc in services.items() if "--insecure" in command(svc)}
    assert insecure in (set(), set(services)), f"{name}: only {sorted(insecure)} use --insecure"


def test_insecure_variant_is_published_on_loopback_only() -> None:
    services = load_compose("compose.yml")["services"]
    assert "--insecure" in command(services["superlink"])
    for svc_name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"compose.yml:{svc_name} publishes {port} beyond loopback"


def test_tls_variant_uses_tls_and_supernode_auth() -> None:
    services = load_compose("compose.tls.yml")["services"]
    link = command(services["superlink"])
    assert TLS_SERVER_FLAGS <= flags(link)
    for svc_name, svc in services.items():
        assert "--insecure" not in command(svc), f"compose.tls.yml:{svc_name} uses --insecure"
    ca = host_path_of(services["superlink"], option(link, "--ssl-ca-certfile"))
    assert ca == DOCKER / "certs" / "ca.crt"
    for svc_name in ("serverapp", *SUPERNODES):
        root = option(command(services[svc_name]), "--root-certificates")
        assert root is not None and host_path_of(services[svc_name], root) == ca, svc_name
    auth_keys = []
    for sn in SUPERNODES:
        key = option(command(services[sn]), "--auth-supernode-private-key")
        assert key is not None, f"{sn} has no SuperNode auth key"
        auth_keys.append(host_path_of(services[sn], key))
    assert len(set(auth_keys)) == len(SUPERNODES) and all(k is not None for k in auth_keys)


def test_gpu_override_only_adds_a_device_to_the_serverapp() -> None:
    override = yaml.safe_load((DOCKER / "compose.gpu.yml").read_text(encoding="utf-8"))
    assert set(override["services"]) == {"serverapp"}
    assert set(override["services"]["serverapp"]) == {"deploy"}
    devices = override["services"]["serverapp"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_build_context_excludes_everything_but_requirements() -> None:
    lines = [l.strip() for l in (DOCKER / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    rules = [l for l in lines if l and not l.startswith("#")]
    assert rules == ["*", "!requirements-client.txt", "!requirements-server.txt"]
    copied = {src for df in DOCKERFILES for instr, args in dockerfile_instructions(df) if instr == "COPY"
              for src in args.split()[:-1]}
    assert copied <= {"requirements-client.txt", "requirements-server.txt"}


# ================================================================ tests: scripts


def _openssl(*args: str) -> str:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=True)
    return proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_generate_certs_makes_a_verifiable_chain_with_sans(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    subprocess.run(
        ["bash", str(DOCKER / "generate_certs.sh"), str(out), "DNS:fl.example.org,IP:10.0.0.5"],
        check=True, capture_output=True, text=True,
    )
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "server.crt", "server.key"]
    verify = _openssl("verify", "-CAfile", str(out / "ca.crt"), str(out / "server.crt"))
    assert f"{out / 'server.crt'}: OK" in verify
    san_text = _openssl("x509", "-in", str(out / "server.crt"), "-noout", "-ext", "subjectAltName")
    sans = {s.strip() for s in san_text.split("\n", 1)[1].split(",")}
    assert sans == {
        "DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1",
        "DNS:superlink", "DNS:fl.example.org", "IP Address:10.0.0.5",
    }
    # The service name the containers dial must be among the SANs.
    superlink_host = option(command(load_compose("compose.tls.yml")["services"]["supernode-1"]), "--superlink")
    assert f"DNS:{superlink_host.rsplit(':', 1)[0]}" in sans
    ca_ext = _openssl("x509", "-in", str(out / "ca.crt"), "-noout", "-ext", "basicConstraints,keyUsage")
    assert "CA:TRUE" in ca_ext and "Certificate Sign" in ca_ext
    server_ext = _openssl("x509", "-in", str(out / "server.crt"), "-noout", "-ext", "basicConstraints,extendedKeyUsage")
    assert "CA:FALSE" in server_ext and "TLS Web Server Authentication" in server_ext
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_generate_certs_rejects_malformed_extra_sans(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(DOCKER / "generate_certs.sh"), str(tmp_path / "certs"), "fl.example.org"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "fl.example.org" in proc.stderr
    assert not (tmp_path / "certs").exists()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_generate_supernode_keys_writes_keys_flwr_accepts(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    script = str(DOCKER / "generate_supernode_keys.sh")
    subprocess.run(["bash", script, str(tmp_path), "2"], check=True, capture_output=True)
    seen = set()
    for i in (1, 2):
        node = tmp_path / f"supernode-{i}"
        # flower-supernode loads the private key exactly like this.
        private = serialization.load_ssh_private_key((node / "auth_key").read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        assert stat.S_IMODE((node / "auth_key").stat().st_mode) == 0o600
        registered = try_load_public_key(node / "auth_key.pub")
        assert registered == public_key_to_bytes(private.public_key())
        seen.add(registered)
    assert len(seen) == 2
    again = subprocess.run(["bash", script, str(tmp_path), "1"], capture_output=True, text=True)
    assert again.returncode == 1 and "not overwriting" in again.stderr
    bad = subprocess.run(["bash", script, str(tmp_path / "x"), "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "'0'" in bad.stderr


@pytest.mark.parametrize("name", [*COMPOSE_FILES, "compose.gpu.yml"])
def test_compose_files_keep_to_what_compose_v1_29_and_v2_both_accept(name: str) -> None:
    data = yaml.safe_load((DOCKER / name).read_text(encoding="utf-8"))
    top = {k for k in data if not k.startswith("x-")}
    # no `version` (obsolete in v2) and no `name` (v2 only: Compose 1.29 refuses the file); `-p` names the project
    assert top <= {"services", "volumes", "networks", "secrets", "configs"}, f"{name}: top-level keys {sorted(top)}"
    for svc_name, svc in data["services"].items():
        assert not {"links", "external_links", "volumes_from", "container_name"} & set(svc), (
            f"{name}:{svc_name} uses a key that pins container names or is legacy")
