"""What the split-learning server can learn about a client's signals from the activations it receives.

For each cut point and each defence setting:
1. train the hybrid model as split learning trains it (one client; with SGD the split steps equal the
   unsplit ones, ``tests/test_split_model.py``), with the defence applied: Gaussian noise of
   standard deviation ``sigma`` on the activations the server sees, or NoPeek's penalty
   ``w * dCor(x, a)`` in the client's loss;
2. attack: the server holds auxiliary records from the same distribution (half the training
   split, drawn with the seed) and trains an inversion network (an MLP) from what it sees (the
   activations, noise included) to the input signal, averaged over 4 samples per step (so 12 leads
   of T/4 samples; the attacker's target and the scores use the same averaging);
3. score the reconstruction of held-out signals (the validation split: records neither the model
   nor the attacker trained on): per-lead Pearson correlation (per record, then averaged) and
   normalised error ``sum (x_hat - x)^2 / sum x^2``; the distance correlation between those inputs
   and their activations (``dcor.distance_correlation``); and the defence's cost, the model's
   macro-AUC on the test split (the validation split when the folder has no test records).

Reference: Abuadbba et al. (2020) measured, for a 1D-CNN on ECG, a distance correlation of about
0.89 between raw signals and activations after two client convolution layers and 0.69 after eight.

    python -m benchmarks.split_leakage [--data-path DIR] [--cuts conv2,conv3,conv4] [--noise 0.5]
        [--nopeek 0.5] [--epochs 5] [--attack-epochs 40] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import dcor
import numpy as np
import torch
from torch import nn

from common.config import ConfigError, RunConfig
from common.distance_correlation import activation_rms, distance_correlation
from common.model import build_model
from common.split_model import CUT_POINTS, split_model
from common.task import loss_function, probabilities, report_from_probabilities
from data_prep.client_data import load_dataset
from data_prep.format_error import DataFormatError
from data_prep.registry import dataset_spec

REFERENCE = {"source": "Abuadbba et al., ASIA CCS 2020 (1D-CNN ECG split learning)",
             "dcor_after_2_conv_layers": 0.89, "dcor_after_8_conv_layers": 0.69}
TARGET_POOL = 4  # the attacker reconstructs the signal averaged over 4 samples


def with_noise(a: torch.Tensor, sigma: float, relative: bool, rng: torch.Generator) -> torch.Tensor:
    """``a + s * N(0, 1)``: ``s = sigma`` (absolute), or ``sigma`` times each example's activation RMS (relative)."""
    if sigma <= 0:
        return a
    scale = sigma * activation_rms(a) if relative else sigma
    return a + scale * torch.randn(a.shape, generator=rng)


def _seen(extractor: nn.Module, x: torch.Tensor, sigma: float, relative: bool, rng: torch.Generator) -> torch.Tensor:
    return with_noise(extractor(x), sigma, relative, rng)


def train_split(cfg: RunConfig, cut: str, x: np.ndarray, y: np.ndarray, epochs: int, sigma: float, relative: bool,
                nopeek: float, seed: int):
    """The split model trained with the defence; returns (extractor, head) with the model's weights."""
    parts = split_model(build_model(cfg), cut, "plain")
    params = list(parts.extractor.parameters()) + list(parts.head.parameters())
    optimiser = torch.optim.Adam(params, lr=cfg.learning_rate)
    loss_fn = loss_function(dataset_spec(cfg.dataset).task)
    rng = np.random.default_rng(seed)
    noise = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2:
                continue
            xb = torch.as_tensor(x[idx])
            a = parts.extractor(xb)
            seen = with_noise(a, sigma, relative, noise)
            loss = loss_fn(parts.head(seen), torch.as_tensor(y[idx]))
            if nopeek > 0:
                loss = loss + nopeek * distance_correlation(xb, a)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return parts.extractor.eval(), parts.head.eval()


def _pooled(x: np.ndarray) -> np.ndarray:
    n, c, t = x.shape
    return x[:, :, : t - t % TARGET_POOL].reshape(n, c, -1, TARGET_POOL).mean(-1)


def attack(extractor: nn.Module, x_aux: np.ndarray, x_victim: np.ndarray, sigma: float, epochs: int,
           seed: int, relative: bool = False) -> dict:
    """Inversion MLP from the server's view to the (pooled) signal; scores on the victims."""
    noise = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        view_aux = _seen(extractor, torch.as_tensor(x_aux), sigma, relative, noise).reshape(len(x_aux), -1)
        view_victim = _seen(extractor, torch.as_tensor(x_victim), sigma, relative, noise).reshape(len(x_victim), -1)
    target_aux, target_victim = _pooled(x_aux), _pooled(x_victim)
    shape = target_aux.shape[1:]
    torch.manual_seed(seed)
    decoder = nn.Sequential(nn.Linear(view_aux.shape[1], 512), nn.ReLU(), nn.Linear(512, int(np.prod(shape))))
    optimiser = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    t_aux = torch.as_tensor(target_aux.reshape(len(target_aux), -1))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(view_aux)), max(1, len(view_aux) // 32)):
            loss = nn.functional.mse_loss(decoder(view_aux[idx]), t_aux[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        recon = decoder(view_victim).numpy().reshape(len(x_victim), *shape)
    truth = target_victim
    centred_r, centred_t = recon - recon.mean(-1, keepdims=True), truth - truth.mean(-1, keepdims=True)
    denominator = np.sqrt((centred_r ** 2).sum(-1) * (centred_t ** 2).sum(-1))
    pearson = np.where(denominator > 0, (centred_r * centred_t).sum(-1) / np.maximum(denominator, 1e-12), 0.0)
    return {"pearson_per_lead": pearson.mean(axis=0), "nmse": float(((recon - truth) ** 2).sum() / (truth ** 2).sum()),
            "dcor": float(dcor.distance_correlation(truth.reshape(len(truth), -1).astype(np.float64),
                                                    view_victim.numpy().astype(np.float64)))}


def run(cfg: RunConfig, cuts: list[str], settings: list[tuple[str, float]], epochs: int, attack_epochs: int,
        seed: int = 0) -> dict:
    spec = dataset_spec(cfg.dataset)
    data = load_dataset(cfg)
    train, val, test = (data.split_indices(s) for s in ("train", "val", "test"))
    scored = test if len(test) else val
    aux = np.random.default_rng(seed).permutation(train)[: len(train) // 2]
    x_train, y_train = data.standardised(train), data.labels[train]
    x_aux, x_victim = data.standardised(aux), data.standardised(val)
    x_scored, y_scored = data.standardised(scored), data.labels[scored]
    results = []
    for cut in cuts:
        for defence, strength in settings:
            started = time.time()
            sigma = strength if defence in ("noise", "relative-noise") else 0.0
            relative = defence == "relative-noise"
            nopeek = strength if defence == "nopeek" else 0.0
            extractor, head = train_split(cfg, cut, x_train, y_train, epochs, sigma, relative, nopeek, seed)
            with torch.no_grad():
                logits = head(extractor(torch.as_tensor(x_scored))).numpy()
            report = report_from_probabilities(probabilities(logits, spec.task), y_scored, spec.task)
            leak = attack(extractor, x_aux, x_victim, sigma, attack_epochs, seed, relative)
            row = {"cut": cut, "defence": defence, "strength": strength,
                   "macro_auc": round(float(report["macro_auc"]), 4),
                   "dcor": round(leak["dcor"], 4), "nmse": round(leak["nmse"], 4),
                   "pearson_mean": round(float(leak["pearson_per_lead"].mean()), 4),
                   "pearson_per_lead": dict(zip(spec.channels, np.round(leak["pearson_per_lead"], 4).tolist())),
                   "seconds": round(time.time() - started, 1)}
            results.append(row)
            print(f"[split_leakage] cut {cut} {defence} {strength:g}: dCor {row['dcor']:.3f}, Pearson "
                  f"{row['pearson_mean']:.3f}, NMSE {row['nmse']:.3f}, macro-AUC {row['macro_auc']:.3f} "
                  f"({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return {"dataset": cfg.dataset, "data_path": cfg.data_path or "built-in",
            "records": {"train": int(len(train)), "attacker_auxiliary": int(len(aux)), "victims": int(len(val)),
                        "scored_for_accuracy": int(len(scored))},
            "epochs": epochs, "attack_epochs": attack_epochs, "target": f"signal averaged over {TARGET_POOL} samples",
            "reference": REFERENCE, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", default="", help="a PTB-XL folder; empty: the built-in set")
    parser.add_argument("--synthetic-records", type=int, default=1000)
    parser.add_argument("--cuts", default=",".join(CUT_POINTS))
    parser.add_argument("--noise", type=float, default=0.5, help="the activation noise's standard deviation")
    parser.add_argument("--defences", default="none,noise,relative-noise,nopeek",
                        help="any of none, noise (absolute), relative-noise (times the activation RMS), nopeek")
    parser.add_argument("--nopeek", type=float, default=0.5, help="NoPeek's weight")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--attack-epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("results/split_leakage"))
    parser.add_argument("--json", action="store_true", help="print the JSON object")
    args = parser.parse_args(argv)
    cuts = [c.strip() for c in args.cuts.split(",") if c.strip()]
    if not cuts or any(c not in CUT_POINTS for c in cuts):
        parser.error(f"--cuts {args.cuts!r}: expected a comma-separated list from {', '.join(CUT_POINTS)}")
    try:
        cfg = RunConfig.from_flower({"data-path": args.data_path, "synthetic-records": args.synthetic_records})
        strengths = {"none": 0.0, "noise": args.noise, "relative-noise": args.noise, "nopeek": args.nopeek}
        chosen = [d.strip() for d in args.defences.split(",") if d.strip()]
        if not chosen or any(d not in strengths for d in chosen):
            parser.error(f"--defences {args.defences!r}: expected a comma-separated list from {', '.join(strengths)}")
        settings = [(d, strengths[d]) for d in chosen]
        result = run(cfg, cuts, settings, args.epochs, args.attack_epochs)
    except (ConfigError, DataFormatError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "split_leakage.json").write_text(json.dumps(result, indent=1))
    print(f"{'cut':6} {'defence':8} {'dCor':>6} {'Pearson':>8} {'NMSE':>6} {'macro-AUC':>9}")
    for row in result["results"]:
        print(f"{row['cut']:6} {row['defence'] + ' ' + format(row['strength'], 'g'):8} {row['dcor']:6.3f} "
              f"{row['pearson_mean']:8.3f} {row['nmse']:6.3f} {row['macro_auc']:9.3f}")
    print(f"written to {args.out / 'split_leakage.json'}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
