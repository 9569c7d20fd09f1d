"""Flower ServerApp: validates the run config, runs the chosen strategy, writes the results.

The server never holds a CKKS secret key: it loads only the public context (``server.ctx``,
from ``he-server-context`` in deployment, or from the run folder where simulated clients
create their shared key pair), with which it can add and scale ciphertexts but not decrypt.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from common.ckks import EncryptedWeightedSum
from common.config import RunConfig
from common.keys import load_server_context
from common.model import QUANTUM_LAYERS, build_model, count_parameters, state_by_layer
from common.privacy import PrivacyAccountant
from common.privacy_ledger import PrivacyLedger
from common.results import RunRecorder, new_run_folder
from data_prep.registry import dataset_spec
from server_app.preflight import check_run, check_server_context
from server_app.split_runner import SplitRun
from strategies.layerwise import LayerwiseStrategy, RoundLog, StrategyOptions
from strategies.model_selection import BestRoundSelector

app = ServerApp()

PROJECT_MARKER = "adeptheq-fl"


def project_root() -> Path:
    """The project folder when the SuperLink was started from it (``flwr run .``), else the home folder."""
    cwd = Path.cwd()
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file() and PROJECT_MARKER in pyproject.read_text():
        return cwd
    return Path.home() / PROJECT_MARKER


def _progress(cfg: RunConfig, r: RoundLog) -> str:
    val = r.validation
    auc = val.get("macro-auc", float("nan"))
    return (f"round {r.round}/{cfg.num_server_rounds} | train loss {r.train.get('loss', float('nan')):.4f} | "
            f"val acc {val.get('accuracy', float('nan')):.3f} f1 {val.get('macro-f1', float('nan')):.3f} "
            f"auc {auc:.3f} | up {r.bytes['train_up'] / 1e6:.2f} MB down {r.bytes['train_down'] / 1e6:.2f} MB | "
            f"clients {r.train.get('clients', 0)} dropped {len(r.dropped)} | frozen {r.frozen_layers or '-'} | "
            f"{r.seconds:.1f} s")


def save_final_model(folder: Path, strategy: LayerwiseStrategy) -> None:
    """The chosen round's model: plaintext layers as a torch state dict; encrypted layers stay ciphertexts
    the server cannot open."""
    model = strategy.selected_model()
    torch.save({k: torch.as_tensor(v) for k, v in model["plain"].items()}, folder / "final_model_plain.pt")
    if model["encrypted"]:
        blob_dir = folder / "final_model_encrypted"
        blob_dir.mkdir(exist_ok=True)
        for i, chunk in enumerate(model["encrypted"]):
            (blob_dir / f"chunk-{i:03d}.ckks").write_bytes(chunk)
        (blob_dir / "manifest.json").write_text(json.dumps({
            "layers": model["encrypted_layers"],
            "length": strategy.packed_length(model["encrypted_layers"]),
            "note": "CKKS vectors of the aggregated encrypted layers; decrypt with a client key (client.ctx)",
        }, indent=2))


def record_selection(recorder: RunRecorder, selection: dict | None, label: str) -> None:
    """``test`` becomes the chosen round's figures; the last round's stay as ``test_last_round``."""
    last = recorder.payload.get("test")
    recorder.set("test_last_round", last)
    if selection is None:
        return
    recorder.set("selection", selection)
    if selection.get("test") is not None:
        recorder.set("test", selection["test"])
    keys = ("num-examples", "loss", "accuracy", "macro-f1", "macro-auc")
    log(logging.INFO, "Chosen round %d (validation %s %.4f); %s on it: %s; on the last round's model: %s",
        selection["round"], selection["metric"], selection["validation"].get(selection["metric"], float("nan")),
        label, {k: (selection.get("test") or {}).get(k) for k in keys}, {k: (last or {}).get(k) for k in keys})


def head_cpu_latency_ms(head: torch.nn.Module, activation_shape: tuple[int, ...], batch: int = 64,
                        repeats: int = 5) -> float:
    """The server head's inference time per sample on the CPU, best of ``repeats`` batches of ``batch``."""
    cpu = copy.deepcopy(head).to("cpu").eval()
    x = torch.zeros((batch, *activation_shape))
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            cpu(x)
            best = min(best, time.perf_counter() - started)
    return 1000 * best / batch


def encryption(cfg: RunConfig, folder: Path, options: StrategyOptions) -> tuple[object, str]:
    """The aggregator factory (public context only) and, in simulation, the key folder clients share."""
    factory = None
    if options.encrypted_layers:
        server_ctx_path = Path(cfg.he_server_context) if cfg.he_server_context else folder / "keys" / "server.ctx"
        factory = lambda: EncryptedWeightedSum(load_server_context(server_ctx_path))  # noqa: E731
    return factory, "" if cfg.he_server_context else str(folder / "keys")


UPDATE_DP_PROTECTS = {
    "none": "model updates are not differentially private",
    "example": "each training example, in every update the client sends (DP-SGD: per-example clipping and "
               "Gaussian noise, added before encryption)",
    "client": "each client's whole data set in the aggregated update (clipped update, Gaussian noise shared "
              "between the clients, added before encryption)",
}


def privacy_summary(accountant: PrivacyAccountant | None, ledger: PrivacyLedger, update_dp: str) -> dict:
    """What is protected, the accuracy release's own bounds, and every mechanism composed per client."""
    summary = {"update_dp": update_dp, "updates": UPDATE_DP_PROTECTS[update_dp]}
    if accountant is not None:
        summary["protected"] = "each client's validation accuracy (Laplace, sensitivity 1/m)"
        summary.update(accountant.report())
    summary["ledger"] = ledger.report()
    return summary


def feed_ledger(ledger: PrivacyLedger, events: dict) -> None:
    """Add one round's ``RoundLog.privacy_events`` to the ledger."""
    z = events.get("client_level_noise_multiplier")
    for client_id, client in events.get("clients", {}).items():
        entry = ledger.client(client_id)
        if client.get("accuracy_epsilon", 0.0) > 0:
            entry.record_accuracy_release(client["accuracy_epsilon"])
        if "dp_sgd" in client:
            entry.record_dp_sgd(*client["dp_sgd"])
        entry.unaccounted_rounds += "unaccounted" in client
        if z is not None and not client.get("dropped"):
            entry.record_gaussian(z)


def run_split(cfg: RunConfig, grid: Grid, nodes: list[int], model, options: StrategyOptions) -> None:
    """``mode = "split"``: client extractors, one shared server head (``server_app.split_runner``)."""
    folder = new_run_folder(cfg.results_dir, project_root(), f"split-{cfg.split_variant}")
    log(logging.INFO, "Run folder: %s | split learning, %d parameters in the whole model | %d nodes",
        folder, count_parameters(model), len(nodes))
    recorder = RunRecorder(folder, cfg.as_flat_dict(), extra={
        "num_nodes": len(nodes), "num_parameters": count_parameters(model), "mode": "split"})
    run = SplitRun(cfg, grid, options, *encryption(cfg, folder, options))
    averaging = run.strategy(cfg.dataset)
    recorder.set("split", {"variant": cfg.split_variant, "cut": cfg.split_cut, "head_device": run.head.device,
                           "micro_batches": cfg.split_micro_batches, "client_layers": averaging.layers,
                           "client_averaging": {"strategy": options.name, "weighting": options.weighting,
                                                "encrypted_layers": sorted(averaging.opt.encrypted_layers),
                                                "freezing": options.freezing}})
    accountant = PrivacyAccountant(cfg.dp_epsilon, cfg.dp_delta) if options.weighting == "dp-softmax" else None
    ledger = PrivacyLedger(cfg.dp_delta)
    t0 = time.time()
    history = []
    for server_round in range(1, cfg.num_server_rounds + 1):
        r = run.train_round(server_round, sorted(grid.get_node_ids()))
        if accountant is not None:
            accountant.step()
            r.train["privacy"] = accountant.report()
        feed_ledger(ledger, r.privacy_events)
        history.append(r)
        recorder.add_round(r)
        split = r.train["split"]
        log(logging.INFO, "%s | round trips %d | head %.1f s, waiting %.1f s", _progress(cfg, r),
            split["round_trips"], split["head_seconds"], split["wait_seconds"])
    if accountant is not None:
        recorder.set("privacy", privacy_summary(accountant, ledger, cfg.update_dp))
    label = dataset_spec(cfg.dataset).split_label("test")
    record_selection(recorder, run.evaluate_selected(history[-1]), label)  # the head keeps the chosen round
    recorder.set("total_seconds", time.time() - t0)
    recorder.set("head_cpu_inference_ms_per_sample", head_cpu_latency_ms(run.head.head, run.head.activation_shape))
    recorder.set("bytes_total", {k: int(sum(r.bytes[k] for r in history))
                                 for k in ("train_down", "train_up", "eval_down", "eval_up")})
    recorder.write()
    recorder.plot()
    torch.save({k: torch.as_tensor(v) for k, v in run.head.head.state_dict().items()}, folder / "server_head.pt")
    test = recorder.payload.get("test") or {}
    log(logging.INFO, "%s: %s", label[:1].upper() + label[1:],
        {k: test.get(k) for k in ("num-examples", "loss", "accuracy", "macro-f1", "macro-auc")})
    log(logging.INFO, "Results written to %s", folder)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(context.run_config)
    model = build_model(cfg)
    layers = model.layer_names()
    nodes = list(grid.get_node_ids())
    options = check_run(cfg, len(nodes))  # repeated here: in a deployment no runner checked it first
    check_server_context(cfg, options)
    if cfg.mode == "split":
        run_split(cfg, grid, nodes, model, options)
        return
    folder = new_run_folder(cfg.results_dir, project_root(), cfg.strategy)
    log(logging.INFO, "Run folder: %s | model %s with %d parameters | strategy %s | %d nodes",
        folder, cfg.model, count_parameters(model), cfg.strategy, len(nodes))

    initial = state_by_layer(model)
    aggregator_factory, sim_key_dir = encryption(cfg, folder, options)

    accountant = PrivacyAccountant(cfg.dp_epsilon, cfg.dp_delta) if options.weighting == "dp-softmax" else None
    recorder = RunRecorder(folder, cfg.as_flat_dict(), extra={
        "num_nodes": len(nodes), "num_parameters": count_parameters(model), "layers": layers,
        "encrypted_layers": sorted(options.encrypted_layers), "weighting": options.weighting,
    })

    ledger = PrivacyLedger(cfg.dp_delta)

    def on_round(r: RoundLog) -> None:
        if accountant is not None:
            accountant.step()
            r.train["privacy"] = accountant.report()
        feed_ledger(ledger, r.privacy_events)
        recorder.add_round(r)
        log(logging.INFO, "%s", _progress(cfg, r))

    strategy = LayerwiseStrategy(options, layers, initial, QUANTUM_LAYERS & set(layers),
                                 aggregator_factory=aggregator_factory, sim_key_dir=sim_key_dir,
                                 on_round=on_round, selector=BestRoundSelector(cfg.selection_metric))
    t0 = time.time()
    initial_plain = ArrayRecord()
    strategy.start(grid=grid, initial_arrays=initial_plain, num_rounds=cfg.num_server_rounds,
                   timeout=cfg.round_timeout)
    if accountant is not None or cfg.update_dp != "none":
        recorder.set("privacy", privacy_summary(accountant, ledger, cfg.update_dp))
        total = recorder.payload["privacy"]["ledger"]["total"]
        log(logging.INFO, "Privacy at delta %g, largest over clients: %s", cfg.dp_delta,
            {k: round(v, 3) for k, v in total.items()})
    label = dataset_spec(cfg.dataset).split_label("test")
    record_selection(recorder, strategy.evaluate_selected(grid, cfg.round_timeout), label)
    recorder.set("total_seconds", time.time() - t0)
    recorder.set("bytes_total", {k: int(sum(r.bytes[k] for r in strategy.history))
                                 for k in ("train_down", "train_up", "eval_down", "eval_up")})
    recorder.write()
    recorder.plot()
    save_final_model(folder, strategy)
    test = recorder.payload.get("test") or {}
    log(logging.INFO, "%s: %s", label[:1].upper() + label[1:],  # keeps ids such as S2 as written
        {k: test.get(k) for k in ("num-examples", "loss", "accuracy", "macro-f1", "macro-auc")})
    log(logging.INFO, "Results written to %s", folder)
