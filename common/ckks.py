"""CKKS homomorphic encryption of flat parameter vectors (TenSEAL), split by owner.

The pieces follow the NVIDIA FLARE HE-filter layout: each has exactly one owner.

* client: ``make_secret_context`` (once, at key generation), ``PackedEncryptor``, ``PackedDecryptor``;
* server: ``load_public_context`` and ``EncryptedWeightedSum``. The server only ever holds a context
  without secret key; ``load_public_context`` and ``EncryptedWeightedSum`` refuse a private one.

Packing: a float vector of length L is split into ceil(L / S) chunks of at most S = N/2 values (N the
polynomial modulus degree, S the CKKS slot count) and each chunk is one CKKS ciphertext. Compared with
one ciphertext per weight (``ts.ckks_tensor`` without batching) this divides ciphertext count, bytes
and time by up to S (4096 for N = 8192).

Computation: the server computes Enc(sum_i w_i theta_i) = sum_i w_i * Enc(theta_i), chunk by chunk:
one ciphertext-times-plaintext-scalar product per contribution (encoded at the global scale Delta,
followed by one rescale, which uses one level of the modulus chain) and ciphertext additions. No
ciphertext-ciphertext product happens, so no relinearization keys are needed; no slot rotation happens,
so no Galois keys are needed. The public context therefore holds only the parameters and the public key.

Security: parameters are checked against the 128-bit classical security bound of the Homomorphic
Encryption Standard (ternary secret, error sigma = 3.2) on the total coefficient modulus bits.

What the server can see: the number of chunks and each chunk's slot count (so the vector length),
ciphertext sizes, the weights (it chooses them) and timing. It cannot see any parameter value, neither of
a single client nor of the aggregate. Limits of a single shared key: every client holds the same secret
key, so a client that obtains another client's ciphertext (for instance from a server that colludes with
it) can decrypt it; the scheme protects client updates from the server, not from each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tenseal as ts
from pydantic import BaseModel, ConfigDict, model_validator

# Homomorphic Encryption Standard (2018), table 1: max log2(q) for 128-bit security, ternary secret.
HE_STANDARD_MAX_COEFF_BITS_128: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}
SEAL_MAX_PRIME_BITS = 60


class CiphertextError(ValueError):
    """A serialized ciphertext is malformed or does not belong to the expected context/shape."""


class CKKSParams(BaseModel):
    """CKKS encryption parameters.

    ``poly_modulus_degree`` N: ring dimension; the number of slots per ciphertext is N/2.
    ``coeff_mod_bit_sizes``: bit sizes of the RNS primes q_0 .. q_k. The last prime is SEAL's special
    (key-switching) prime; the ones in between are rescaling primes, equal to ``global_scale_bits``
    so that a rescale after a product by a scalar encoded at scale Delta = 2^global_scale_bits brings
    the scale back to Delta. At least 3 primes: one rescale (one scalar product level) must remain
    above the first prime. After that rescale the ciphertext modulus still contains q_0, so decrypted
    magnitudes below 2^(bits(q_0) - global_scale_bits - 1) (``max_abs_value``) are always safe; this
    bound is conservative when more than one rescaling prime is left.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    global_scale_bits: int = 40

    @model_validator(mode="after")
    def _check(self) -> CKKSParams:
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_MAX_COEFF_BITS_128:
            raise ValueError(
                f"poly_modulus_degree={n} is not supported; expected a power of two in "
                f"{sorted(HE_STANDARD_MAX_COEFF_BITS_128)}"
            )
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 3:
            raise ValueError(
                f"coeff_mod_bit_sizes={list(bits)} has {len(bits)} primes; at least 3 are needed "
                "(first prime, one rescaling prime for the weighted sum, special prime)"
            )
        # A prime p = 1 mod 2N must exist below 2^b, so b must exceed log2(2N).
        min_bits = int(math.log2(2 * n)) + 1
        for b in bits:
            if not min_bits <= b <= SEAL_MAX_PRIME_BITS:
                raise ValueError(
                    f"coeff_mod_bit_sizes={list(bits)} contains {b}; every prime size must be in "
                    f"[{min_bits}, {SEAL_MAX_PRIME_BITS}] for poly_modulus_degree={n}"
                )
        bound = HE_STANDARD_MAX_COEFF_BITS_128[n]
        if sum(bits) > bound:
            raise ValueError(
                f"coeff_mod_bit_sizes={list(bits)} sum to {sum(bits)} bits, above the 128-bit security "
                f"bound of {bound} bits for poly_modulus_degree={n}"
            )
        inner = bits[1:-1]
        if any(b != self.global_scale_bits for b in inner):
            raise ValueError(
                f"inner coeff_mod_bit_sizes {list(inner)} must all equal global_scale_bits="
                f"{self.global_scale_bits} (a rescale divides by one inner prime)"
            )
        if bits[0] <= self.global_scale_bits:
            raise ValueError(
                f"first prime of {bits[0]} bits must exceed global_scale_bits={self.global_scale_bits}, "
                "otherwise no integer bits are left after the rescale"
            )
        return self

    @property
    def slot_count(self) -> int:
        """Number of real values packed into one ciphertext: N / 2."""
        return self.poly_modulus_degree // 2

    @property
    def global_scale(self) -> float:
        """Encoding scale Delta = 2^global_scale_bits."""
        return float(2**self.global_scale_bits)

    @property
    def max_abs_value(self) -> float:
        """Largest magnitude allowed for inputs and aggregates: 2^(bits(q_0) - global_scale_bits - 1)."""
        return float(2 ** (self.coeff_mod_bit_sizes[0] - self.global_scale_bits - 1))

    @property
    def security_bound_bits(self) -> int:
        """Max total coefficient modulus bits for 128-bit security at this degree."""
        return HE_STANDARD_MAX_COEFF_BITS_128[self.poly_modulus_degree]


def make_secret_context(params: CKKSParams) -> ts.Context:
    """Create a CKKS context holding the secret key (client side), with the global scale set.

    No Galois keys are generated: the weighted sum rotates no slots. TenSEAL always generates
    relinearization keys with a new context; they are never shipped to the server
    (``public_context_bytes`` leaves them out) because no ciphertext-ciphertext product is computed.
    """
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = params.global_scale
    return ctx


def context_params(ctx: ts.Context) -> CKKSParams:
    """Recover (and re-validate) the CKKS parameters of a context.

    Prime sizes are read as differences of the total modulus bit counts along SEAL's modulus chain
    (key level first); SEAL picks primes just below 2^b, so each difference is the prime's bit size.
    Raises ValueError for a non-CKKS context or parameters outside ``CKKSParams``'s checks.
    """
    seal_ctx = ctx.seal_context().data
    key_data = seal_ctx.key_context_data()
    parms = key_data.parms()
    if parms.scheme() != ts.SCHEME_TYPE.CKKS.value:  # the C++ enum compares to the Python enum's value
        raise ValueError(f"context uses scheme {parms.scheme().name}, expected CKKS")
    totals = []
    data = key_data
    while data is not None:
        totals.append(data.total_coeff_modulus_bit_count())
        data = data.next_context_data()
    # totals[0]: all primes; totals[1]: without the special prime; then one rescaling prime less each.
    special = totals[0] - totals[1]
    dropped = [totals[i] - totals[i + 1] for i in range(1, len(totals) - 1)]
    bits = (totals[-1], *reversed(dropped), special)
    scale = ctx.global_scale
    scale_bits = int(round(math.log2(scale))) if scale > 0 else 0
    if scale <= 0 or 2.0**scale_bits != scale:
        raise ValueError(f"context global_scale={scale} is not a positive power of two")
    return CKKSParams(
        poly_modulus_degree=parms.poly_modulus_degree(),
        coeff_mod_bit_sizes=bits,
        global_scale_bits=scale_bits,
    )


def public_context_bytes(secret_ctx: ts.Context) -> bytes:
    """Serialize the material the server needs: parameters, global scale and public key.

    No secret key, no relinearization keys, no Galois keys (about 465 KB at N = 8192, instead of about
    1.9 MB with relinearization keys). The public key is kept although the server never encrypts:
    TenSEAL 0.3.18 crashes (segfault in ``CKKSVector.copy``) with a context that has no public key, and
    the public key only allows encrypting, which reveals nothing.
    """
    if not secret_ctx.has_public_key():
        raise ValueError("context has no public key; create it with make_secret_context")
    return secret_ctx.serialize(
        save_public_key=True,
        save_secret_key=False,
        save_galois_keys=False,
        save_relin_keys=False,
    )


def secret_context_bytes(secret_ctx: ts.Context) -> bytes:
    """Serialize the client context including its secret key (never send this to the server)."""
    if not secret_ctx.is_private():
        raise ValueError("context holds no secret key; nothing secret to serialize")
    return secret_ctx.serialize(
        save_public_key=True,
        save_secret_key=True,
        save_galois_keys=False,
        save_relin_keys=False,
    )


def _load_context(data: bytes, what: str) -> ts.Context:
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{what} is empty")
    try:
        ctx = ts.context_from(bytes(data))
    except Exception as exc:  # TenSEAL raises ValueError or RuntimeError depending on the layer
        raise ValueError(f"{what} ({len(data)} bytes) is not a serialized TenSEAL context: {exc}") from exc
    context_params(ctx)  # scheme, security bound and scale checks
    return ctx


def load_public_context(data: bytes) -> ts.Context:
    """Deserialize a server-side context; refuse one that holds a secret key."""
    ctx = _load_context(data, "public context")
    if ctx.is_private():
        raise ValueError(
            "public context holds a secret key; the server must only receive public_context_bytes()"
        )
    return ctx


def load_secret_context(data: bytes) -> ts.Context:
    """Deserialize a client-side context; refuse one without secret key."""
    ctx = _load_context(data, "secret context")
    if not ctx.is_private():
        raise ValueError("secret context holds no secret key; clients need the private context")
    return ctx


def chunk_count(length: int, slot_count: int) -> int:
    """Number of ciphertexts for a vector of ``length`` values: ceil(length / slot_count)."""
    if length < 1:
        raise ValueError(f"length={length} must be at least 1")
    return -(-length // slot_count)


def chunk_sizes(length: int, slot_count: int) -> list[int]:
    """Slot counts used by each chunk: full chunks, then the remainder."""
    n = chunk_count(length, slot_count)
    return [slot_count] * (n - 1) + [length - slot_count * (n - 1)]


class PackedEncryptor:
    """Client side: encrypt a flat float vector as ceil(L / S) packed CKKS ciphertexts."""

    def __init__(self, ctx: ts.Context) -> None:
        self._ctx = ctx
        self.params = context_params(ctx)

    def encrypt(self, flat: np.ndarray) -> list[bytes]:
        """Return the serialized ciphertexts of ``flat`` split into chunks of ``slot_count`` values.

        Values must be finite and at most ``params.max_abs_value`` in magnitude (so that any convex
        combination computed by the server still fits the last modulus level).
        """
        arr = np.asarray(flat)
        if arr.ndim != 1:
            raise ValueError(f"expected a 1-D vector, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError("cannot encrypt an empty vector")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"expected a real-valued vector, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise ValueError(f"vector has a non-finite value {arr[bad]} at index {bad}")
        peak = float(np.max(np.abs(arr)))
        if peak > self.params.max_abs_value:
            raise ValueError(
                f"vector has magnitude {peak:g}, above the {self.params.max_abs_value:g} that the "
                f"modulus q_0 of {self.params.coeff_mod_bit_sizes[0]} bits can hold after rescaling"
            )
        s = self.params.slot_count
        return [ts.ckks_vector(self._ctx, arr[i : i + s]).serialize() for i in range(0, arr.size, s)]


class _CiphertextReader:
    """Deserialize and check packed ciphertexts against one context (shared by server and client)."""

    def __init__(self, ctx: ts.Context) -> None:
        self._ctx = ctx
        self.params = context_params(ctx)
        self._first_parms_id = ctx.seal_context().data.first_parms_id()

    def _read(self, blob: object, where: str, fresh: bool) -> ts.CKKSVector:
        if not isinstance(blob, bytes | bytearray):
            raise CiphertextError(f"{where}: expected bytes, got {type(blob).__name__}")
        try:
            vec = ts.ckks_vector_from(self._ctx, bytes(blob))
            cts = vec.data.ciphertext()
        except Exception as exc:  # TenSEAL raises ValueError or RuntimeError for malformed input
            raise CiphertextError(
                f"{where}: not a CKKS vector of this context ({len(blob)} bytes): {exc}"
            ) from exc
        if len(cts) != 1:
            raise CiphertextError(f"{where}: holds {len(cts)} ciphertexts, expected 1")
        ct = cts[0]
        if ct.size() != 2 or not ct.is_ntt_form() or ct.is_transparent():
            raise CiphertextError(
                f"{where}: ciphertext has {ct.size()} polynomials (ntt={ct.is_ntt_form()}, "
                f"transparent={ct.is_transparent()}), expected a fresh 2-polynomial ciphertext"
            )
        if fresh and (ct.parms_id() != self._first_parms_id or ct.scale != self.params.global_scale):
            raise CiphertextError(
                f"{where}: ciphertext is at level {ct.coeff_modulus_size()} with scale 2^"
                f"{math.log2(ct.scale):.2f}, expected a fresh one at level "
                f"{len(self.params.coeff_mod_bit_sizes) - 1} with scale "
                f"2^{self.params.global_scale_bits}"
            )
        return vec

    def read_chunks(
        self,
        chunks: object,
        expected_sizes: Sequence[int] | None,
        expected_chunks: int,
        who: str,
        fresh: bool,
    ) -> list[ts.CKKSVector]:
        """Deserialize ``chunks``; check their count, their packed lengths and (``fresh``) their level."""
        if not isinstance(chunks, list | tuple):
            raise CiphertextError(
                f"{who}: expected a list of ciphertext bytes, got {type(chunks).__name__}"
            )
        if len(chunks) != expected_chunks:
            raise CiphertextError(f"{who}: has {len(chunks)} chunks, expected {expected_chunks}")
        vectors = []
        s = self.params.slot_count
        for j, blob in enumerate(chunks):
            where = f"{who} chunk {j}"
            vec = self._read(blob, where, fresh)
            size = vec.size()
            if expected_sizes is not None:
                if size != expected_sizes[j]:
                    raise CiphertextError(f"{where}: packs {size} values, expected {expected_sizes[j]}")
            elif not (1 <= size <= s) or (j < expected_chunks - 1 and size != s):
                want = f"{s}" if j < expected_chunks - 1 else f"1..{s}"
                raise CiphertextError(f"{where}: packs {size} values, expected {want}")
            vectors.append(vec)
        return vectors


class EncryptedWeightedSum:
    """Server side: Enc(sum_i w_i theta_i) from the packed ciphertexts Enc(theta_i), never decrypting.

    Detectable bad input (raises ``CiphertextError``): bytes that do not parse, truncated or corrupted
    ciphertexts, ciphertexts for other parameters (degree or primes), already-multiplied or
    relinearization-pending ciphertexts, wrong chunk count or chunk lengths, serialized tensors or
    contexts. Not detectable here: a well-formed ciphertext encrypted under another key with the same
    parameters (RLWE ciphertexts are pseudorandom without the key). It turns the aggregate into noise
    of magnitude about q / Delta, which ``PackedDecryptor.decrypt`` rejects on the clients.
    """

    def __init__(self, public_ctx: ts.Context) -> None:
        if public_ctx.is_private():
            raise ValueError(
                "EncryptedWeightedSum got a context with a secret key; the server must not hold one"
            )
        self._reader = _CiphertextReader(public_ctx)
        self.params = self._reader.params

    def validate(
        self, chunks: list[bytes], expected_chunks: int, expected_length: int | None = None
    ) -> list[ts.CKKSVector]:
        """Check one client's reply; return its deserialized chunks.

        Every chunk must be a fresh ciphertext of this context; all but the last pack ``slot_count``
        values; with ``expected_length`` the chunk lengths must match it exactly.
        """
        sizes = None
        if expected_length is not None:
            sizes = chunk_sizes(expected_length, self.params.slot_count)
            if len(sizes) != expected_chunks:
                raise ValueError(
                    f"expected_length={expected_length} needs {len(sizes)} chunks, "
                    f"not expected_chunks={expected_chunks}"
                )
        return self._reader.read_chunks(chunks, sizes, expected_chunks, "reply", fresh=True)

    def check_chunk(self, blob: bytes) -> None:
        """Raise ``CiphertextError`` unless ``blob`` is one fresh ciphertext of this context packing
        1..slot_count values (per-chunk form of ``validate``, which also checks chunk lengths)."""
        self._reader.read_chunks([blob], None, 1, "chunk", fresh=True)

    def aggregate(
        self,
        contributions: list[list[bytes]],
        weights: Sequence[float],
        expected_length: int | None = None,
    ) -> list[bytes]:
        """Return the serialized chunks of sum_i weights[i] * contributions[i].

        ``weights`` must be finite, non-negative, one per contribution, with a sum in (0, 1]: the result
        lives at the last modulus level, which holds magnitudes up to ``params.max_abs_value`` only, and
        encryptors bound each input by that same value, so a convex (or sub-convex) combination fits.
        """
        if not isinstance(contributions, list | tuple) or len(contributions) == 0:
            raise ValueError("contributions must be a non-empty list of chunk lists")
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size != len(contributions):
            raise ValueError(f"got {w.size} weights for {len(contributions)} contributions")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
        total = float(w.sum())
        if not 0.0 < total <= 1.0 + 1e-9:
            raise ValueError(f"weights sum to {total}; expected a sum in (0, 1] (normalise them)")
        if expected_length is not None:
            sizes: list[int] | None = chunk_sizes(expected_length, self.params.slot_count)
            n_chunks = len(sizes)
        else:
            sizes = None  # taken from contribution 0; the others must match it
            first = contributions[0]
            if not isinstance(first, list | tuple) or len(first) == 0:
                raise CiphertextError("contribution 0: expected a non-empty list of ciphertext bytes")
            n_chunks = len(first)
        vectors = []
        for i, chunks in enumerate(contributions):
            vecs = self._reader.read_chunks(chunks, sizes, n_chunks, f"contribution {i}", fresh=True)
            if sizes is None:
                sizes = [v.size() for v in vecs]  # the other contributions must match contribution 0
            vectors.append(vecs)
        result = []
        for j in range(n_chunks):
            acc = vectors[0][j] * float(w[0])
            for i in range(1, len(vectors)):
                acc.add_(vectors[i][j] * float(w[i]))
            result.append(acc.serialize())
        return result


class PackedDecryptor:
    """Client side: decrypt the packed chunks of an aggregate back to a float64 vector."""

    def __init__(self, secret_ctx: ts.Context) -> None:
        if not secret_ctx.is_private():
            raise ValueError("PackedDecryptor needs a context holding the secret key")
        self._reader = _CiphertextReader(secret_ctx)
        self.params = self._reader.params

    def decrypt(self, chunks: list[bytes], length: int) -> np.ndarray:
        """Return the ``length`` decrypted values (float64) of ``chunks``.

        Raises ``CiphertextError`` when a decrypted magnitude exceeds ``params.max_abs_value``: that
        happens when any summand was encrypted under another key (decryption then yields values of
        order q / Delta, about 1e19 at the default parameters) or when the sum overflowed.
        """
        sizes = chunk_sizes(length, self.params.slot_count)
        vectors = self._reader.read_chunks(chunks, sizes, len(sizes), "aggregate", fresh=False)
        out = np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vectors])
        peak = float(np.max(np.abs(out)))
        if not peak <= self.params.max_abs_value:
            raise CiphertextError(
                f"aggregate decrypts to magnitude {peak:.3g}, above {self.params.max_abs_value:g}: a "
                "contribution was encrypted under another key, or the weighted sum overflowed"
            )
        return out
