"""CKKS key files: one private context for the clients, one public context for the server.

``DIR/client.ctx``: TenSEAL context with the secret key (clients only, file mode 0600).
``DIR/server.ctx``: parameters and public key only (``public_context_bytes``), safe to give the server.

CLI::

    python -m common.keys generate --out DIR [--poly-modulus-degree 8192]
        [--coeff-mod-bit-sizes 60 40 40 60] [--global-scale-bits 40] [--force]
    python -m common.keys info PATH
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import tempfile
from pathlib import Path

import tenseal as ts

from common.ckks import (
    CKKSParams,
    context_params,
    load_public_context,
    load_secret_context,
    make_secret_context,
    public_context_bytes,
    secret_context_bytes,
)

CLIENT_CONTEXT_FILE = "client.ctx"
SERVER_CONTEXT_FILE = "server.ctx"
LOCK_FILE = ".lock"


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # set before any byte is written: the secret never sits in a readable file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_pair(out_dir: Path, secret_ctx: ts.Context) -> tuple[Path, Path]:
    client_path = out_dir / CLIENT_CONTEXT_FILE
    server_path = out_dir / SERVER_CONTEXT_FILE
    # Client first: a crash in between leaves a recoverable state (server.ctx derives from client.ctx).
    _write_atomic(client_path, secret_context_bytes(secret_ctx), 0o600)
    _write_atomic(server_path, public_context_bytes(secret_ctx), 0o644)
    return client_path, server_path


def generate_keys(
    out_dir: Path, params: CKKSParams = CKKSParams(), force: bool = False
) -> tuple[Path, Path]:
    """Create a fresh key pair in ``out_dir``; return (client.ctx path, server.ctx path).

    Refuses to overwrite an existing client.ctx or server.ctx unless ``force``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not force:
        for name in (CLIENT_CONTEXT_FILE, SERVER_CONTEXT_FILE):
            if (out_dir / name).exists():
                raise FileExistsError(
                    f"{out_dir / name} already exists; pass force=True (--force) to replace it"
                )
    return _write_pair(out_dir, make_secret_context(params))


def _read_file(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"key file {path} does not exist or is not a regular file")
    return path.read_bytes()


def load_client_context(path: Path | str) -> ts.Context:
    """Load a client (private) context; ValueError naming ``path`` if it is not one."""
    try:
        return load_secret_context(_read_file(Path(path)))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def load_server_context(path: Path | str) -> ts.Context:
    """Load a server (public) context; ValueError naming ``path`` if it is not one or holds a secret key."""
    try:
        return load_public_context(_read_file(Path(path)))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def ensure_simulation_keys(key_dir: Path, params: CKKSParams = CKKSParams()) -> Path:
    """Create the key pair in ``key_dir`` once, whatever the number of concurrent callers; return ``key_dir``.

    For simulation, where every client process shares one key folder. An exclusive ``flock`` on
    ``key_dir/.lock`` serializes the callers: the first one generates, the others find the files.
    Existing keys must have ``params``; a lone client.ctx (crash between the two writes) gets its
    server.ctx rebuilt; a lone server.ctx is an error (its secret key is lost).
    """
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    client_path = key_dir / CLIENT_CONTEXT_FILE
    server_path = key_dir / SERVER_CONTEXT_FILE
    with open(key_dir / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if client_path.exists() and server_path.exists():
                found = context_params(load_server_context(server_path))
                if found != params:
                    raise ValueError(
                        f"{server_path} holds keys for {found}, but {params} were requested; "
                        f"delete {key_dir} to regenerate"
                    )
            elif client_path.exists():
                secret_ctx = load_client_context(client_path)
                _write_atomic(server_path, public_context_bytes(secret_ctx), 0o644)
            elif server_path.exists():
                raise ValueError(
                    f"{server_path} exists without {client_path}; the secret key is lost, delete {key_dir}"
                )
            else:
                _write_pair(key_dir, make_secret_context(params))
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return key_dir


def describe_context_file(path: Path | str) -> dict[str, object]:
    """Facts about a key file: size, private or not, keys present, CKKS parameters."""
    data = _read_file(Path(path))
    try:
        ctx = ts.context_from(data)
    except Exception as exc:  # TenSEAL raises ValueError or RuntimeError for bad input
        raise ValueError(f"{path}: not a serialized TenSEAL context: {exc}") from exc
    params = context_params(ctx)
    return {
        "path": str(path),
        "size_bytes": len(data),
        "private": ctx.is_private(),
        "public_key": ctx.has_public_key(),
        "relin_keys": ctx.has_relin_keys(),
        "galois_keys": ctx.has_galois_keys(),
        "poly_modulus_degree": params.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
        "global_scale_bits": params.global_scale_bits,
        "slot_count": params.slot_count,
        "security_bound_bits": params.security_bound_bits,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m common.keys", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write DIR/client.ctx (secret) and DIR/server.ctx (public)")
    gen.add_argument("--out", type=Path, required=True, help="output folder")
    defaults = CKKSParams()
    gen.add_argument("--poly-modulus-degree", type=int, default=defaults.poly_modulus_degree)
    gen.add_argument(
        "--coeff-mod-bit-sizes", type=int, nargs="+", default=list(defaults.coeff_mod_bit_sizes)
    )
    gen.add_argument("--global-scale-bits", type=int, default=defaults.global_scale_bits)
    gen.add_argument("--force", action="store_true", help="overwrite existing key files")
    info = sub.add_parser("info", help="describe a client.ctx or server.ctx file")
    info.add_argument("path", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            params = CKKSParams(
                poly_modulus_degree=args.poly_modulus_degree,
                coeff_mod_bit_sizes=tuple(args.coeff_mod_bit_sizes),
                global_scale_bits=args.global_scale_bits,
            )
            client_path, server_path = generate_keys(args.out, params, force=args.force)
            print(f"wrote {client_path} ({client_path.stat().st_size} bytes, secret, mode 0600)")
            print(f"wrote {server_path} ({server_path.stat().st_size} bytes, public)")
        else:
            for key, value in describe_context_file(args.path).items():
                print(f"{key}: {value}")
    except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
