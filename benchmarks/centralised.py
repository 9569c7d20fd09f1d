"""The federated model's reference points on one data set: the same model trained centrally, and chance.

Trains the run config's model on the pooled training split of ``--dataset`` (every record a
federation would spread over its clients), picks the epoch with the best validation macro-AUC,
and scores the test split with it. Next to it, two chance levels on the same test split: the
majority class's accuracy (multi-class) or the best constant prediction's exact-match accuracy
(multi-label), and 0.5 macro-AUC. Results go to ``--out`` as ``centralised.json``.

    python -m benchmarks.centralised --dataset toniot [--data-path DIR] [--model hybrid] [--epochs 20]
        [--run-config "key=value ..."] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from flwr.common.config import parse_config_args

from common.config import ConfigError, RunConfig
from common.model import build_model, load_arrays, state_by_layer
from common.task import evaluate, train_local
from data_prep.client_data import load_dataset
from data_prep.format_error import DataFormatError
from data_prep.registry import dataset_spec, datasets_help


def chance_level(labels: np.ndarray, task: str) -> float | None:
    """Accuracy of the best constant prediction on ``labels``; None for an empty split (no test fold)."""
    if len(labels) == 0:
        return None
    if task == "multiclass":
        counts = labels.sum(axis=0)
        return float(counts.max() / counts.sum())
    _, counts = np.unique(labels.astype(np.int8), axis=0, return_counts=True)
    return float(counts.max() / len(labels))


def _round(report: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items()}


def run(cfg: RunConfig, epochs: int) -> dict:
    spec = dataset_spec(cfg.dataset)
    data = load_dataset(cfg)
    train, val, test = (data.split_indices(s) for s in ("train", "val", "test"))
    x_train, x_val, x_test = (data.standardised(i) for i in (train, val, test))
    model = build_model(cfg)
    best, best_state, history = -1.0, state_by_layer(model), []
    started = time.time()
    for epoch in range(1, epochs + 1):
        train_local(model, x_train, data.labels[train], epochs=1, batch_size=cfg.batch_size,
                    learning_rate=cfg.learning_rate, seed=cfg.seed * 1000 + epoch, task=spec.task)
        report = evaluate(model, x_val, data.labels[val], spec.task)
        history.append({"epoch": epoch, **{k: v for k, v in _round(report).items() if k != "confusion_matrix"}})
        print(f"[centralised] epoch {epoch}/{epochs} val macro-auc {report['macro_auc']:.3f} "
              f"accuracy {report['accuracy']:.3f} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        if report["macro_auc"] > best:
            best, best_state = report["macro_auc"], state_by_layer(model)
    load_arrays(model, best_state)
    test_report = evaluate(model, x_test, data.labels[test], spec.task)
    return {
        "dataset": cfg.dataset, "model": cfg.model, "epochs": epochs, "records": {
            "train": int(train.size), "val": int(val.size), "test": int(test.size)},
        "best_epoch": int(np.argmax([h["macro_auc"] for h in history]) + 1),
        "test": _round(test_report),
        "chance": {"accuracy": None if (c := chance_level(data.labels[test], spec.task)) is None else round(c, 4),
                   "macro_auc": 0.5},
        "history": history, "seconds": round(time.time() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=datasets_help())
    parser.add_argument("--dataset", default="ptbxl")
    parser.add_argument("--data-path", default="", help="the data set's folder; empty: its built-in synthetic set")
    parser.add_argument("--model", default="hybrid", choices=("hybrid", "classical"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--run-config", default="", help="further run config keys, as for flwr run")
    parser.add_argument("--out", type=Path, default=Path("results/centralised"))
    args = parser.parse_args(argv)
    try:
        raw = {"dataset": args.dataset, "data-path": args.data_path, "model": args.model,
               **parse_config_args([args.run_config] if args.run_config else None)}
        cfg = RunConfig.from_flower(raw)
        result = run(cfg, args.epochs)
    except (ConfigError, DataFormatError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"centralised-{cfg.dataset}-{cfg.model}.json"
    path.write_text(json.dumps(result, indent=1))
    test = result["test"]
    chance = result["chance"]["accuracy"]
    print(f"{cfg.dataset} {cfg.model}: test accuracy {test['accuracy']:.3f} (chance {chance:.3f}), "
          f"macro-AUC {test['macro_auc']:.3f} (chance 0.5), macro-F1 {test['macro_f1']:.3f}, best epoch "
          f"{result['best_epoch']}/{args.epochs}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
