"""CKKS packing, encrypted weighted sum, context ownership and key files (common.ckks, common.keys)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import stat
from pathlib import Path

import numpy as np
import pydantic
import pytest
import tenseal as ts

from common.ckks import (
    CiphertextError,
    CKKSParams,
    EncryptedWeightedSum,
    PackedDecryptor,
    PackedEncryptor,
    chunk_sizes,
    context_params,
    load_public_context,
    load_secret_context,
    make_secret_context,
    public_context_bytes,
    secret_context_bytes,
)
from common.keys import (
    ensure_simulation_keys,
    generate_keys,
    load_client_context,
    load_server_context,
    main,
)

N_CLIENTS = 10
LENGTH = 10_000  # 3 chunks of at most 4096 slots at N = 8192


@pytest.fixture(scope="module")
def params() -> CKKSParams:
    return CKKSParams()


@pytest.fixture(scope="module")
def secret_ctx(params: CKKSParams) -> ts.Context:
    return make_secret_context(params)


@pytest.fixture(scope="module")
def public_ctx(secret_ctx: ts.Context) -> ts.Context:
    return load_public_context(public_context_bytes(secret_ctx))


@pytest.fixture(scope="module")
def aggregator(public_ctx: ts.Context) -> EncryptedWeightedSum:
    return EncryptedWeightedSum(public_ctx)


@pytest.fixture(scope="module")
def updates() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 0.5, size=(N_CLIENTS, LENGTH))


@pytest.fixture(scope="module")
def encrypted_updates(secret_ctx: ts.Context, updates: np.ndarray) -> list[list[bytes]]:
    encryptor = PackedEncryptor(secret_ctx)
    return [encryptor.encrypt(u) for u in updates]


# --- parameters ---------------------------------------------------------------------------------


def test_default_params_slots_scale_and_bound() -> None:
    p = CKKSParams()
    assert p.slot_count == 4096
    assert p.global_scale == 2.0**40
    assert p.max_abs_value == 2.0**19
    assert p.security_bound_bits == 218


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"poly_modulus_degree": 3000}, ["3000"]),
        (
            {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (60, 40, 40, 40, 60)},
            ["240", "109", "4096"],
        ),
        ({"coeff_mod_bit_sizes": (60, 60)}, ["at least 3"]),
        ({"coeff_mod_bit_sizes": (60, 30, 40, 60)}, ["global_scale_bits=40", "[30, 40]"]),
        ({"coeff_mod_bit_sizes": (61, 40, 60)}, ["61", "60"]),
        ({"coeff_mod_bit_sizes": (40, 40, 40)}, ["first prime", "40"]),
    ],
)
def test_params_rejects_insecure_or_unusable(kwargs: dict, fragments: list[str]) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        CKKSParams(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_params_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        CKKSParams().poly_modulus_degree = 16384  # type: ignore[misc]


def test_context_params_read_back_from_secret_and_public_contexts(
    params: CKKSParams, secret_ctx: ts.Context, public_ctx: ts.Context
) -> None:
    assert context_params(secret_ctx) == params
    assert context_params(public_ctx) == params


# --- encrypt / aggregate / decrypt --------------------------------------------------------------


def test_weighted_sum_matches_plaintext(
    secret_ctx: ts.Context,
    aggregator: EncryptedWeightedSum,
    updates: np.ndarray,
    encrypted_updates: list[list[bytes]],
) -> None:
    assert [len(c) for c in encrypted_updates] == [3] * N_CLIENTS
    weights = np.random.default_rng(1).random(N_CLIENTS)
    weights /= weights.sum()
    aggregate = aggregator.aggregate(encrypted_updates, weights.tolist(), expected_length=LENGTH)
    assert len(aggregate) == 3
    decrypted = PackedDecryptor(secret_ctx).decrypt(aggregate, LENGTH)
    assert decrypted.shape == (LENGTH,)
    assert np.max(np.abs(decrypted - weights @ updates)) < 1e-4


def test_zero_weight_drops_a_contribution(
    secret_ctx: ts.Context,
    aggregator: EncryptedWeightedSum,
    updates: np.ndarray,
    encrypted_updates: list[list[bytes]],
) -> None:
    aggregate = aggregator.aggregate(encrypted_updates[:2], [0.0, 1.0])
    decrypted = PackedDecryptor(secret_ctx).decrypt(aggregate, LENGTH)
    assert np.max(np.abs(decrypted - updates[1])) < 1e-4


def test_chunk_sizes_split_at_slot_count() -> None:
    assert chunk_sizes(10_000, 4096) == [4096, 4096, 1808]
    assert chunk_sizes(4096, 4096) == [4096]
    assert chunk_sizes(25, 4096) == [25]
    with pytest.raises(ValueError, match="length=0"):
        chunk_sizes(0, 4096)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((2, 3)), "1-D"),
        (np.array([]), "empty"),
        (np.array([1.0, np.nan]), "non-finite"),
        (np.array([1.0, 2.0**20]), "magnitude"),
        (np.array(["a"]), "real-valued"),
    ],
)
def test_encrypt_rejects_bad_vectors(secret_ctx: ts.Context, value: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PackedEncryptor(secret_ctx).encrypt(value)


# --- who holds which key ------------------------------------------------------------------------


def test_server_context_is_public_and_cannot_decrypt(
    secret_ctx: ts.Context, public_ctx: ts.Context, encrypted_updates: list[list[bytes]]
) -> None:
    assert secret_ctx.is_private()
    assert not public_ctx.is_private()
    assert not public_ctx.has_relin_keys() and not public_ctx.has_galois_keys()
    assert len(public_context_bytes(secret_ctx)) < 600_000  # parameters + public key only
    vector = ts.ckks_vector_from(public_ctx, encrypted_updates[0][0])
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    with pytest.raises(ValueError, match="secret key"):
        PackedDecryptor(public_ctx)


def test_context_loaders_refuse_the_wrong_kind(secret_ctx: ts.Context) -> None:
    with pytest.raises(ValueError, match="holds a secret key"):
        load_public_context(secret_context_bytes(secret_ctx))
    with pytest.raises(ValueError, match="holds no secret key"):
        load_secret_context(public_context_bytes(secret_ctx))
    with pytest.raises(ValueError, match="not a serialized TenSEAL context"):
        load_public_context(os.urandom(2000))
    with pytest.raises(ValueError, match="secret key"):
        EncryptedWeightedSum(secret_ctx)
    assert load_secret_context(secret_context_bytes(secret_ctx)).is_private()


# --- bad replies --------------------------------------------------------------------------------


def _with_chunk(contributions: list[list[bytes]], client: int, chunk: int, blob: object) -> list[list]:
    bad = [list(c) for c in contributions]
    bad[client][chunk] = blob
    return bad


def _other_params_chunk() -> bytes:
    other = make_secret_context(
        CKKSParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(44, 32, 33), global_scale_bits=32)
    )
    return ts.ckks_vector(other, np.ones(4096)).serialize()


@pytest.mark.parametrize(
    ("make_blob", "message"),
    [
        (lambda good, ctx: os.urandom(len(good)), "contribution 3 chunk 1: not a CKKS vector"),
        (lambda good, ctx: good[: len(good) // 2], "contribution 3 chunk 1: not a CKKS vector"),
        (lambda good, ctx: good[:-1], "contribution 3 chunk 1: not a CKKS vector"),
        (lambda good, ctx: b"", "contribution 3 chunk 1"),
        (lambda good, ctx: "text", "contribution 3 chunk 1: expected bytes"),
        (lambda good, ctx: _other_params_chunk(), "contribution 3 chunk 1: not a CKKS vector"),
        (lambda good, ctx: ts.ckks_vector(ctx, np.ones(4095)).serialize(), "packs 4095 values"),
        (lambda good, ctx: (ts.ckks_vector(ctx, np.ones(4096)) * 0.5).serialize(), "expected a fresh"),
        (lambda good, ctx: ts.ckks_tensor(ctx, np.ones(3)).serialize(), "holds 3 ciphertexts"),
    ],
)
def test_aggregate_rejects_bad_ciphertexts(
    secret_ctx: ts.Context,
    aggregator: EncryptedWeightedSum,
    encrypted_updates: list[list[bytes]],
    make_blob,
    message: str,
) -> None:
    bad = _with_chunk(encrypted_updates, 3, 1, make_blob(encrypted_updates[3][1], secret_ctx))
    with pytest.raises(CiphertextError, match=message):
        aggregator.aggregate(bad, [0.1] * N_CLIENTS)


def test_corrupted_bytes_raise_or_pass_all_checks(
    aggregator: EncryptedWeightedSum, encrypted_updates: list[list[bytes]]
) -> None:
    # Random byte edits, mostly in the protobuf/SEAL headers: TenSEAL must raise, never crash.
    rng = np.random.default_rng(2)
    good = encrypted_updates[0][0]
    outcomes = {"rejected": 0, "accepted": 0}
    for _ in range(100):
        blob = bytearray(good)
        for pos in rng.integers(0, 120, size=rng.integers(1, 4)):
            blob[pos] = int(rng.integers(0, 256))
        try:
            chunks = [bytes(blob)] + encrypted_updates[0][1:]
            aggregator.validate(chunks, expected_chunks=3, expected_length=LENGTH)
            outcomes["accepted"] += 1
        except CiphertextError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 50  # most header edits are caught; the rest changed no checked field


def test_aggregate_rejects_wrong_chunk_count(
    aggregator: EncryptedWeightedSum, encrypted_updates: list[list[bytes]]
) -> None:
    bad = [list(c) for c in encrypted_updates]
    bad[5] = bad[5][:2]
    with pytest.raises(CiphertextError, match="contribution 5: has 2 chunks, expected 3"):
        aggregator.aggregate(bad, [0.1] * N_CLIENTS)
    with pytest.raises(CiphertextError, match="contribution 0: has 3 chunks, expected 1"):
        aggregator.aggregate(encrypted_updates, [0.1] * N_CLIENTS, expected_length=25)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([0.1] * 9 + [-0.1], "non-negative"),
        ([0.1] * 9 + [float("nan")], "finite"),
        ([0.1] * 9, "9 weights for 10"),
        ([0.2] * 10, "sum to 2"),
        ([0.0] * 10, "sum to 0"),
    ],
)
def test_aggregate_rejects_bad_weights(
    aggregator: EncryptedWeightedSum, encrypted_updates: list[list[bytes]], weights: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        aggregator.aggregate(encrypted_updates, weights)


def test_validate_checks_one_reply(
    aggregator: EncryptedWeightedSum, encrypted_updates: list[list[bytes]]
) -> None:
    vectors = aggregator.validate(encrypted_updates[0], expected_chunks=3, expected_length=LENGTH)
    assert [v.size() for v in vectors] == [4096, 4096, 1808]
    with pytest.raises(CiphertextError, match="chunk 2: packs 1808 values, expected 1807"):
        aggregator.validate(encrypted_updates[0], expected_chunks=3, expected_length=LENGTH - 1)
    with pytest.raises(CiphertextError, match="has 3 chunks, expected 4"):
        aggregator.validate(encrypted_updates[0], expected_chunks=4)


def test_check_chunk_accepts_a_fresh_chunk_and_rejects_garbage(
    aggregator: EncryptedWeightedSum, encrypted_updates: list[list[bytes]]
) -> None:
    for blob in encrypted_updates[0]:
        aggregator.check_chunk(blob)
    with pytest.raises(CiphertextError, match="chunk 0: not a CKKS vector"):
        aggregator.check_chunk(encrypted_updates[0][0][:1000])


def test_decrypt_rejects_wrong_length(secret_ctx: ts.Context, encrypted_updates: list[list[bytes]]) -> None:
    with pytest.raises(CiphertextError, match="has 3 chunks, expected 1"):
        PackedDecryptor(secret_ctx).decrypt(encrypted_updates[0], 100)


def test_foreign_key_passes_the_server_but_not_the_client(
    params: CKKSParams, secret_ctx: ts.Context, aggregator: EncryptedWeightedSum
) -> None:
    # Same parameters, other key: indistinguishable from a good ciphertext without the secret key.
    foreign = PackedEncryptor(make_secret_context(params)).encrypt(np.ones(25))
    aggregator.validate(foreign, expected_chunks=1, expected_length=25)
    ours = PackedEncryptor(secret_ctx).encrypt(np.ones(25))
    aggregate = aggregator.aggregate([ours, foreign], [0.5, 0.5])
    with pytest.raises(CiphertextError, match="another key"):
        PackedDecryptor(secret_ctx).decrypt(aggregate, 25)


# --- key files ----------------------------------------------------------------------------------


def test_generate_keys_writes_a_private_and_a_public_file(tmp_path: Path) -> None:
    client_path, server_path = generate_keys(tmp_path / "keys")
    assert stat.S_IMODE(client_path.stat().st_mode) == 0o600
    client = load_client_context(client_path)
    server = load_server_context(server_path)
    assert client.is_private() and not server.is_private()
    assert server_path.stat().st_size < client_path.stat().st_size
    chunks = PackedEncryptor(client).encrypt(np.arange(25.0))
    aggregate = EncryptedWeightedSum(server).aggregate([chunks], [1.0])
    assert np.max(np.abs(PackedDecryptor(client).decrypt(aggregate, 25) - np.arange(25.0))) < 1e-4
    with pytest.raises(FileExistsError, match="client.ctx already exists"):
        generate_keys(tmp_path / "keys")
    generate_keys(tmp_path / "keys", force=True)
    # A new key was written: the old ciphertexts no longer decrypt with it.
    with pytest.raises(CiphertextError, match="another key"):
        PackedDecryptor(load_client_context(client_path)).decrypt(aggregate, 25)


def test_key_loaders_name_the_bad_file(tmp_path: Path) -> None:
    client_path, server_path = generate_keys(tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(server_path)) + ".*holds no secret key"):
        load_client_context(server_path)
    with pytest.raises(ValueError, match=re.escape(str(client_path)) + ".*holds a secret key"):
        load_server_context(client_path)
    with pytest.raises(FileNotFoundError, match="missing.ctx"):
        load_server_context(tmp_path / "missing.ctx")
    garbage = tmp_path / "garbage.ctx"
    garbage.write_bytes(os.urandom(500))
    with pytest.raises(ValueError, match="garbage.ctx"):
        load_server_context(garbage)


def test_keys_cli_generate_refuses_overwrite_and_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert main(["generate", "--out", str(out), "--poly-modulus-degree", "4096",
                 "--coeff-mod-bit-sizes", "44", "32", "33", "--global-scale-bits", "32"]) == 0
    assert main(["generate", "--out", str(out)]) == 2
    assert main(["generate", "--out", str(tmp_path / "bad"), "--poly-modulus-degree", "3000"]) == 2
    capsys.readouterr()
    assert main(["info", str(out / "server.ctx")]) == 0
    text = capsys.readouterr().out
    assert "private: False" in text and "poly_modulus_degree: 4096" in text
    assert "coeff_mod_bit_sizes: [44, 32, 33]" in text


def _ensure_and_encrypt(key_dir: str, value: float, barrier, queue) -> None:
    barrier.wait()  # all processes race for the lock at once
    ensure_simulation_keys(Path(key_dir))
    client_path = Path(key_dir) / "client.ctx"
    digest = hashlib.sha256(client_path.read_bytes()).hexdigest()
    chunks = PackedEncryptor(load_client_context(client_path)).encrypt(np.full(25, value))
    queue.put((value, digest, chunks))


def test_ensure_simulation_keys_concurrent_calls_share_one_key(tmp_path: Path) -> None:
    key_dir = tmp_path / "shared"
    mp = multiprocessing.get_context("spawn")
    barrier, queue = mp.Barrier(4), mp.Queue()
    values = [1.0, 2.0, 3.0, 4.0]
    procs = [mp.Process(target=_ensure_and_encrypt, args=(str(key_dir), v, barrier, queue)) for v in values]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len({digest for _, digest, _ in results}) == 1
    client = load_client_context(key_dir / "client.ctx")
    server = load_server_context(key_dir / "server.ctx")
    decryptor = PackedDecryptor(client)
    for value, _, chunks in results:
        assert np.max(np.abs(decryptor.decrypt(chunks, 25) - value)) < 1e-4
    # server.ctx belongs to the same pair: its public key encrypts what client.ctx decrypts.
    from_server = PackedEncryptor(server).encrypt(np.full(25, 7.0))
    assert np.max(np.abs(decryptor.decrypt(from_server, 25) - 7.0)) < 1e-4
    mean = EncryptedWeightedSum(server).aggregate([c for _, _, c in results], [0.25] * 4)
    assert np.max(np.abs(decryptor.decrypt(mean, 25) - 2.5)) < 1e-4
    assert ensure_simulation_keys(key_dir) == key_dir
    with pytest.raises(ValueError, match="were requested"):
        ensure_simulation_keys(
            key_dir, CKKSParams(poly_modulus_degree=16384, coeff_mod_bit_sizes=(60, 40, 40, 60))
        )
