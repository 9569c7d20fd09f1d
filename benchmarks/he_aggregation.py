"""Cost of encrypted aggregation: packed CKKS vectors vs one ciphertext per weight vs plaintext.

For ``--clients`` clients and two vector sizes (the final FC layer of the hybrid model, 4 inputs ->
5 classes = 25 values, and a whole ~30k-parameter model), measures per client and round:

* client encryption time (encrypt + serialize), upload bytes;
* server aggregation time (deserialize + check + weighted sum + serialize), for all clients together;
* client decryption time (deserialize + decrypt) of the aggregate;
* max absolute error of the decrypted aggregate against the float64 plaintext weighted sum.

Schemes: (a) ``packed``: common.ckks, one CKKS vector per 4096 values; (b) ``per_weight``: the paper
code's ``ts.ckks_tensor(context, array)`` without batching, one ciphertext per value, whose scalar
product TenSEAL only allows with relinearization keys in the server context; (c) ``plaintext``: float32.
One ciphertext per weight is measured on a subset of ``--per-weight-subset`` values of the large
vector and extrapolated linearly (labelled ``extrapolated``), since its time and bytes are linear in
the number of values (about 330 KB and several ms per value).

    python -m benchmarks.he_aggregation --json [--clients 10] [--params 8192]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import tenseal as ts

from common.ckks import (
    CKKSParams,
    EncryptedWeightedSum,
    PackedDecryptor,
    PackedEncryptor,
    load_public_context,
    make_secret_context,
    public_context_bytes,
    secret_context_bytes,
)

# Parameter sets by ring degree; 8192 is the paper's (N = 8192, [60, 40, 40, 60], scale 2^40).
PARAMS_BY_DEGREE: dict[int, CKKSParams] = {
    4096: CKKSParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(44, 32, 33), global_scale_bits=32),
    8192: CKKSParams(),
    16384: CKKSParams(poly_modulus_degree=16384),
    32768: CKKSParams(poly_modulus_degree=32768),
}
FC_LENGTH = 4 * 5 + 5  # hybrid model head: Linear(n_qubits=4 -> 5 classes), weights + biases
ERROR_BOUND = 1e-4


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _per_weight_public_bytes(secret_ctx: ts.Context) -> bytes:
    """Server context for the ckks_tensor baseline: TenSEAL's CKKSTensor.mul demands relin keys."""
    return secret_ctx.serialize(save_public_key=True, save_secret_key=False,
                                save_galois_keys=False, save_relin_keys=True)


def measure_packed(
    secret_ctx: ts.Context, public_ctx: ts.Context, updates: np.ndarray, weights: np.ndarray
) -> tuple[dict[str, float], np.ndarray]:
    """Packed CKKS vectors (common.ckks); returns measurements and the decrypted aggregate."""
    length = updates.shape[1]
    encryptor = PackedEncryptor(secret_ctx)
    uploads, enc_times = [], []
    for u in updates:
        chunks, dt = _timed(lambda u=u: encryptor.encrypt(u))
        uploads.append(chunks)
        enc_times.append(dt)
    aggregator = EncryptedWeightedSum(public_ctx)
    aggregate, agg_time = _timed(
        lambda: aggregator.aggregate(uploads, weights.tolist(), expected_length=length)
    )
    decryptor = PackedDecryptor(secret_ctx)
    dec_times = []
    for _ in range(len(updates)):
        decrypted, dt = _timed(lambda: decryptor.decrypt(aggregate, length))
        dec_times.append(dt)
    return {
        "ciphertexts_per_client": len(uploads[0]),
        "encrypt_s_per_client": float(np.mean(enc_times)),
        "aggregate_s": agg_time,
        "decrypt_s_per_client": float(np.mean(dec_times)),
        "upload_bytes_per_client": float(np.mean([sum(map(len, c)) for c in uploads])),
        "download_bytes_per_client": float(sum(map(len, aggregate))),
    }, decrypted


def measure_per_weight(
    secret_ctx: ts.Context, relin_public_ctx: ts.Context, updates: np.ndarray, weights: np.ndarray
) -> tuple[dict[str, float], np.ndarray]:
    """One ciphertext per value, as ``ts.ckks_tensor(ctx, array)`` (batch=False) does."""
    uploads, enc_times = [], []
    for u in updates:
        blob, dt = _timed(lambda u=u: ts.ckks_tensor(secret_ctx, u.tolist()).serialize())
        uploads.append(blob)
        enc_times.append(dt)

    def aggregate() -> bytes:
        acc = ts.ckks_tensor_from(relin_public_ctx, uploads[0]) * float(weights[0])
        for blob, w in zip(uploads[1:], weights[1:]):
            acc = acc + ts.ckks_tensor_from(relin_public_ctx, blob) * float(w)
        return acc.serialize()

    result, agg_time = _timed(aggregate)
    dec_times = []
    for _ in range(len(updates)):
        decrypted, dt = _timed(lambda: np.asarray(ts.ckks_tensor_from(secret_ctx, result).decrypt().tolist()))
        dec_times.append(dt)
    return {
        "ciphertexts_per_client": updates.shape[1],
        "encrypt_s_per_client": float(np.mean(enc_times)),
        "aggregate_s": agg_time,
        "decrypt_s_per_client": float(np.mean(dec_times)),
        "upload_bytes_per_client": float(np.mean([len(b) for b in uploads])),
        "download_bytes_per_client": float(len(result)),
    }, np.asarray(decrypted, dtype=np.float64)


def measure_plaintext(updates: np.ndarray, weights: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """float32 bytes on the wire, weighted sum in float64 on the server."""
    length = updates.shape[1]
    uploads, enc_times = [], []
    for u in updates:
        blob, dt = _timed(lambda u=u: u.astype(np.float32).tobytes())
        uploads.append(blob)
        enc_times.append(dt)

    def aggregate() -> bytes:
        stacked = np.stack([np.frombuffer(b, dtype=np.float32, count=length) for b in uploads])
        return (weights @ stacked.astype(np.float64)).astype(np.float32).tobytes()

    result, agg_time = _timed(aggregate)
    dec_times = []
    for _ in range(len(updates)):
        decrypted, dt = _timed(lambda: np.frombuffer(result, dtype=np.float32).astype(np.float64))
        dec_times.append(dt)
    return {
        "ciphertexts_per_client": 0,
        "encrypt_s_per_client": float(np.mean(enc_times)),
        "aggregate_s": agg_time,
        "decrypt_s_per_client": float(np.mean(dec_times)),
        "upload_bytes_per_client": float(len(uploads[0])),
        "download_bytes_per_client": float(len(result)),
    }, decrypted


COST_KEYS = ("encrypt_s_per_client", "aggregate_s", "decrypt_s_per_client",
             "upload_bytes_per_client", "download_bytes_per_client")


def _ratios(num: dict[str, float], den: dict[str, float]) -> dict[str, float]:
    return {k: (num[k] / den[k] if den[k] > 0 else float("inf")) for k in COST_KEYS}


def run(clients: int, params: CKKSParams, model_length: int, per_weight_subset: int, seed: int) -> dict:
    secret_ctx = make_secret_context(params)
    public_bytes = public_context_bytes(secret_ctx)
    public_ctx = load_public_context(public_bytes)
    relin_public_bytes = _per_weight_public_bytes(secret_ctx)
    relin_public_ctx = ts.context_from(relin_public_bytes)
    rng = np.random.default_rng(seed)
    weights = rng.random(clients)
    weights /= weights.sum()  # FedAvg-style convex weights

    vectors = {}
    max_error = 0.0
    for name, length in (("fc_layer", FC_LENGTH), ("whole_model", model_length)):
        updates = rng.normal(0.0, 0.1, size=(clients, length))
        reference = weights @ updates
        packed, packed_out = measure_packed(secret_ctx, public_ctx, updates, weights)
        plain, plain_out = measure_plaintext(updates, weights)
        subset = min(length, per_weight_subset)
        per_weight, pw_out = measure_per_weight(secret_ctx, relin_public_ctx, updates[:, :subset], weights)
        factor = length / subset
        if subset < length:
            for key in COST_KEYS:
                per_weight[key] *= factor
            per_weight["ciphertexts_per_client"] = length
        per_weight["extrapolated"] = subset < length
        per_weight["measured_values"] = subset
        errors = {
            "packed": float(np.max(np.abs(packed_out - reference))),
            "per_weight": float(np.max(np.abs(pw_out - reference[:subset]))),
            "plaintext_float32": float(np.max(np.abs(plain_out - reference))),
        }
        max_error = max(max_error, errors["packed"], errors["per_weight"])
        vectors[name] = {
            "length": length,
            "packed": packed,
            "per_weight": per_weight,
            "plaintext": plain,
            "ratio_per_weight_over_packed": _ratios(per_weight, packed),
            "ratio_packed_over_plaintext": _ratios(packed, plain),
            "max_abs_error": errors,
        }
    return {
        "benchmark": "he_aggregation",
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "python": platform.python_version(), "tenseal": ts.__version__},
        "clients": clients,
        "params": params.model_dump(mode="json") | {"slot_count": params.slot_count},
        "public_context_bytes": len(public_bytes),
        "public_context_with_relin_keys_bytes": len(relin_public_bytes),
        "secret_context_bytes": len(secret_context_bytes(secret_ctx)),
        "vectors": vectors,
        "max_abs_error_encrypted": max_error,
        "error_bound": ERROR_BOUND,
        "error_within_bound": max_error < ERROR_BOUND,
    }


def _format_table(result: dict) -> str:
    lines = [
        f"HE aggregation, {result['clients']} clients, N={result['params']['poly_modulus_degree']}, "
        f"primes {result['params']['coeff_mod_bit_sizes']}, scale 2^{result['params']['global_scale_bits']}",
        f"public context: {result['public_context_bytes'] / 1e3:.0f} KB "
        f"(with relin keys, needed by ckks_tensor: "
        f"{result['public_context_with_relin_keys_bytes'] / 1e3:.0f} KB)",
    ]
    header = (f"{'vector':<12}{'scheme':<12}{'ct/client':>10}{'enc s/cl':>11}{'agg s':>10}"
              f"{'dec s/cl':>11}{'upload/cl':>13}")
    for name, v in result["vectors"].items():
        lines += ["", f"{name}: {v['length']} values", header]
        for scheme in ("packed", "per_weight", "plaintext"):
            m = v[scheme]
            tag = " (extrap.)" if m.get("extrapolated") else ""
            lines.append(
                f"{name:<12}{scheme:<12}{m['ciphertexts_per_client']:>10}{m['encrypt_s_per_client']:>11.4f}"
                f"{m['aggregate_s']:>10.4f}{m['decrypt_s_per_client']:>11.4f}"
                f"{m['upload_bytes_per_client'] / 1e3:>11.1f}KB{tag}"
            )
        r = v["ratio_per_weight_over_packed"]
        lines.append(f"per_weight / packed: upload x{r['upload_bytes_per_client']:.0f}, "
                     f"encrypt x{r['encrypt_s_per_client']:.0f}, aggregate x{r['aggregate_s']:.0f}")
        r = v["ratio_packed_over_plaintext"]
        lines.append(f"packed / plaintext: upload x{r['upload_bytes_per_client']:.0f}")
        lines.append(f"max abs error: {v['max_abs_error']}")
    ok = "ok" if result["error_within_bound"] else "ABOVE BOUND"
    lines.append(f"\nmax abs error (encrypted): {result['max_abs_error_encrypted']:.2e} "
                 f"({ok}, bound {ERROR_BOUND})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--params", type=int, default=8192, choices=sorted(PARAMS_BY_DEGREE),
                        help="polynomial modulus degree of the CKKS parameter set")
    parser.add_argument("--model-length", type=int, default=30_000, help="values in the large vector")
    parser.add_argument("--per-weight-subset", type=int, default=100,
                        help="values of the large vector measured one ciphertext per weight")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.model_length < 1 or args.per_weight_subset < 1:
        parser.error("--clients, --model-length and --per-weight-subset must be at least 1")
    result = run(args.clients, PARAMS_BY_DEGREE[args.params], args.model_length,
                 args.per_weight_subset, args.seed)
    print(json.dumps(result, indent=2) if args.json else _format_table(result))
    return 0 if result["error_within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
