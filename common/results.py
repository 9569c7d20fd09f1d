"""Run results a person can open: metrics.json, rounds.csv, PNG curves and the final model.

``metrics.json`` holds the resolved run config, one entry per round (train and validation
metrics, client weights, dropped replies, frozen layers, seconds, bytes serialized each
way), the privacy accounting and the test-fold evaluation. It is rewritten after every
round, so an interrupted run still leaves its rounds behind.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.registry import DEFAULT_DATASET, dataset_spec

ROUND_COLUMNS = [
    "round", "seconds", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_macro_auc",
    "train_down_bytes", "train_up_bytes", "eval_down_bytes", "eval_up_bytes", "n_frozen", "dropped",
    "weight_min", "weight_max", "effective_clients", "fusion_alpha",
]


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null for it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def new_run_folder(results_dir: str, project_root: Path, strategy: str) -> Path:
    """``results-dir`` when given (absolute), else a fresh ``results/<time>-<strategy>`` folder."""
    if results_dir:
        folder = Path(results_dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = project_root / "results" / f"{stamp}-{strategy}"
        suffix = 1
        while folder.exists():
            suffix += 1
            folder = project_root / "results" / f"{stamp}-{strategy}-{suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


class RunRecorder:
    """Collects round logs and writes them to ``folder``."""

    def __init__(self, folder: Path, config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.payload: dict[str, Any] = {"config": config, "rounds": [], "test": None, **(extra or {})}
        self.started = time.time()

    def add_round(self, round_log: Any) -> None:
        entry = dataclasses.asdict(round_log) if dataclasses.is_dataclass(round_log) else dict(round_log)
        self.payload["rounds"].append(entry)
        if entry.get("test"):
            self.payload["test"] = entry["test"]
        self.write()

    def set(self, key: str, value: Any) -> None:
        self.payload[key] = value

    def write(self) -> None:
        self.payload["elapsed_seconds"] = time.time() - self.started
        tmp = self.folder / "metrics.json.tmp"
        tmp.write_text(json.dumps(_clean(self.payload), indent=2))
        tmp.replace(self.folder / "metrics.json")
        with open(self.folder / "rounds.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=ROUND_COLUMNS)
            writer.writeheader()
            for r in self.payload["rounds"]:
                spread = r.get("weight_spread") or {}
                writer.writerow({
                    "round": r["round"], "seconds": round(r["seconds"], 3),
                    "train_loss": r["train"].get("loss"),
                    "val_loss": r["validation"].get("loss"), "val_accuracy": r["validation"].get("accuracy"),
                    "val_macro_f1": r["validation"].get("macro-f1"), "val_macro_auc": r["validation"].get("macro-auc"),
                    "train_down_bytes": r["bytes"]["train_down"], "train_up_bytes": r["bytes"]["train_up"],
                    "eval_down_bytes": r["bytes"]["eval_down"], "eval_up_bytes": r["bytes"]["eval_up"],
                    "n_frozen": len(r["frozen_layers"]), "dropped": len(r["dropped"]),
                    "weight_min": spread.get("min"), "weight_max": spread.get("max"),
                    "effective_clients": spread.get("effective_clients"),
                    "fusion_alpha": (r.get("model") or {}).get("fusion-alpha"),
                })

    def plot(self) -> Path:
        """Validation curves and bytes per round in one PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rounds = self.payload["rounds"]
        xs = [r["round"] for r in rounds]

        def series(section: str, key: str) -> list[float]:
            return [np.nan if r[section].get(key) is None else r[section][key] for r in rounds]

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot(xs, series("train", "loss"), marker="o", label="train loss (clients)")
        spec = dataset_spec(self.payload["config"].get("dataset", DEFAULT_DATASET))
        axes[0].plot(xs, series("validation", "loss"), marker="o", label=f"{spec.split_label('val')} loss")
        axes[0].set_xlabel("round"); axes[0].set_title("loss"); axes[0].legend()
        for key in ("accuracy", "macro-f1", "macro-auc"):
            axes[1].plot(xs, series("validation", key), marker="o", label=key)
        if any((r.get("model") or {}).get("fusion-alpha") is not None for r in rounds):
            alphas = [(r.get("model") or {}).get("fusion-alpha", np.nan) for r in rounds]
            axes[1].plot(xs, alphas, linestyle="--", label="fusion alpha (quantum weight)")
        axes[1].set_xlabel("round"); axes[1].set_title(spec.split_label("val")); axes[1].legend()
        axes[1].set_ylim(0, 1)
        up = [r["bytes"]["train_up"] / 1e6 for r in rounds]
        down = [r["bytes"]["train_down"] / 1e6 for r in rounds]
        axes[2].bar(np.array(xs) - 0.2, down, width=0.4, label="server -> clients")
        axes[2].bar(np.array(xs) + 0.2, up, width=0.4, label="clients -> server")
        axes[2].set_xlabel("round"); axes[2].set_ylabel("MB per round (train messages)")
        axes[2].set_title("communication"); axes[2].legend()
        fig.suptitle(f"{self.payload['config'].get('strategy')} on {spec.title}")
        fig.tight_layout()
        path = self.folder / "curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
