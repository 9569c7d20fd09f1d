"""The paper's comparison from one command: every method on the same partitions, over seeds.

    python -m benchmarks.compare --data-path DIR --seeds 5 --rounds R --clients 10 --alpha A --out DIR
    python -m benchmarks.compare --quick --out DIR          # the paper's arms, small: within 10 minutes here
    python -m benchmarks.compare --arms green --data-path DIR --seeds 3 --out DIR   # the design note's models

Arms (one Flower simulation each, one after another: the local SuperLink uses fixed ports), all
on the same data, partitions (one seed gives every arm the same clients) and budget:

- ``fedavg``: the paper's Standard-FedQNN (sample-weighted FedAvg), hybrid head at 4 qubits, 2 layers;
- ``fhe-fedqnn``: uniform weights, every layer encrypted;
- ``adeptheq-4q2l``, ``adeptheq-4q1l``, ``adeptheq-2q1l``: the paper's AdeptHEQ variants;
- ``fedavg-classical``: the classical twin of the hybrid head under FedAvg;
- ``centralised``: the hybrid model trained on the pooled training data (the upper reference);
- ``adeptheq-no-dp``, ``adeptheq-no-he``, ``adeptheq-no-freeze``: AdeptHEQ with one part switched off
  (sample weights instead of DP accuracies; no encryption; no freezing).

Those ten are the default (``--arms paper``). ``--arms green`` runs the ECG design note's models under FedAvg
beside ``fedavg`` (hybrid) and ``fedavg-classical``: ``fedavg-gated`` (both heads, a learned gate),
``fedavg-green`` (spiking one-bit pyramid + 8-qubit learned-entanglement circuit, gated, with the note's training:
AdamW, weight decay 1e-4, cosine restarts, mixed precision on CUDA), ``green-adam`` (the same model with the
default training) and the green model's ablations (``green-no-spikes``, ``green-real-weights``,
``green-fixed-entanglement``, ``green-classical-path``, ``green-quantum-path``). ``--arms privacy``: fedavg and
the default AdeptHEQ (updates not private) against AdeptHEQ with DP-SGD on every client at noise multipliers 1, 2,
4 and 8 (``dp-sgd-s1`` ...) and with client-level DP (``client-dp-s1``); encryption stays on. Names and groups mix,
as in ``--arms paper,fedavg-gated``.

Each run's final model is its best validation round (``selection-metric``); the table reports the
test split on it. Where the data have no test records (``../shared/data/ptbxl`` lacks fold 10) the
validation split stands in for the test split, the title says so, and the figures are optimistic
(the round was chosen on that split); the last round's figures are given beside them.
Writes ``results.md``, ``results.json``, ``validation_auc.png``, ``bytes.png`` (with private arms also
``accuracy_epsilon.png``: macro-AUC against the updates' epsilon) and every run's folder
under ``runs/``; prints one line per finished run. ``--resume`` continues a study that was stopped: a run
whose folder holds a finished result made with the run config it would get now (keys added to the app since
left at their defaults) is read, not rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from common.config import ConfigError, RunConfig
from data_prep.format_error import DataFormatError
from data_prep.registry import dataset_spec, datasets_help
from server_app.simulation_runner import run_config_from_overrides, run_simulation


@dataclass(frozen=True)
class Arm:
    name: str
    run_config: str  # keys on top of the shared ones; "" for the centralised reference
    what: str


HYBRID = "model='hybrid' n-qubits=4 n-layers=2"
ARMS = (
    Arm("fedavg", f"strategy='fedavg' {HYBRID}", "Standard-FedQNN: sample-weighted FedAvg, hybrid head"),
    Arm("fhe-fedqnn", f"strategy='fhe-fedqnn' {HYBRID}", "uniform weights, every layer encrypted"),
    Arm("adeptheq-4q2l", f"strategy='adeptheq' {HYBRID}", "AdeptHEQ, 4 qubits, 2 layers (the default)"),
    Arm("adeptheq-4q1l", "strategy='adeptheq' model='hybrid' n-qubits=4 n-layers=1", "AdeptHEQ, 4 qubits, 1 layer"),
    Arm("adeptheq-2q1l", "strategy='adeptheq' model='hybrid' n-qubits=2 n-layers=1", "AdeptHEQ, 2 qubits, 1 layer"),
    Arm("fedavg-classical", "strategy='fedavg' model='classical'", "FedAvg, the classical twin of the head"),
    Arm("centralised", "", "the hybrid model trained on the pooled training data"),
    Arm("adeptheq-no-dp", f"strategy='adeptheq' {HYBRID} weighting='samples'", "AdeptHEQ, sample weights"),
    Arm("adeptheq-no-he", f"strategy='adeptheq' {HYBRID} he-layers='none'", "AdeptHEQ, no encryption"),
    Arm("adeptheq-no-freeze", f"strategy='adeptheq' {HYBRID} freeze-threshold=0.0", "AdeptHEQ, no freezing"),
)
PAPER_ARMS = tuple(a.name for a in ARMS)
NOTE_TRAINING = "optimizer='adamw' weight-decay=0.0001 lr-schedule='cosine-restarts' mixed-precision=true"
GREEN = f"strategy='fedavg' model='green' {NOTE_TRAINING}"
ARMS += (
    Arm("fedavg-gated", "strategy='fedavg' model='gated'", "FedAvg, the hybrid and classical heads fused by a gate"),
    Arm("fedavg-green", GREEN, "FedAvg, the design note's green model and training"),
    Arm("green-adam", "strategy='fedavg' model='green'", "the green model with the default training (Adam)"),
    Arm("green-no-spikes", f"{GREEN} green-spiking=false", "green, ReLU stages instead of spiking neurons"),
    Arm("green-real-weights", f"{GREEN} green-binary=false", "green, real weights instead of one-bit ones"),
    Arm("green-fixed-entanglement", f"{GREEN} green-entanglement='fixed'", "green, no attention: fixed couplings"),
    Arm("green-classical-path", f"{GREEN} green-paths='classical'", "green, the spiking path alone"),
    Arm("green-quantum-path", f"{GREEN} green-paths='quantum'", "green, the quantum path alone"),
)
GREEN_ARMS = ("fedavg", "fedavg-classical") + tuple(a.name for a in ARMS if a.name not in PAPER_ARMS)
PRIVATE = f"strategy='adeptheq' {HYBRID}"  # encryption on: the noise is added before it
ARMS += tuple(
    Arm(f"dp-sgd-s{sigma:g}", f"{PRIVATE} update-dp='example' update-dp-noise={sigma} update-dp-clip=1.0",
        f"AdeptHEQ with DP-SGD on every client, noise multiplier {sigma:g}, clip 1")
    for sigma in (1.0, 2.0, 4.0, 8.0)
) + (Arm("client-dp-s1", f"{PRIVATE} update-dp='client' update-dp-noise=1.0 update-dp-clip=1.0",
         "AdeptHEQ with client-level DP (clipped updates, distributed noise), noise multiplier 1, clip 1"),)
ARM_NAMES = tuple(a.name for a in ARMS)
ARM_GROUPS = {"paper": PAPER_ARMS, "green": GREEN_ARMS,
              "privacy": ("fedavg", "adeptheq-4q2l") + tuple(a.name for a in ARMS
                                                              if a.name.startswith(("dp-sgd", "client-dp")))}
QUICK = {"seeds": 1, "rounds": 3, "local_epochs": 1, "clients": 3, "central_epochs": 3}
METRICS = ("loss", "accuracy", "macro-f1", "macro-auc")


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise_run(metrics: dict, clients: int) -> dict:
    """One federated run's row: the chosen round's test figures (validation where the test split is empty),
    the last round's, bytes per client per round, seconds per round and the epsilon spent."""
    rounds = metrics["rounds"]
    test = metrics.get("test") or {}
    selection = metrics.get("selection") or {}
    no_test = not test or not test.get("num-examples")
    chosen = selection.get("validation", {}) if no_test else test
    last = rounds[-1]["validation"] if no_test else (metrics.get("test_last_round") or {})
    train_bytes = sum(r["bytes"]["train_up"] + r["bytes"]["train_down"] for r in rounds)
    privacy = metrics.get("privacy") or {}
    ledger = (privacy.get("ledger") or {}).get("total") or {}
    update_dp = privacy.get("update_dp", "none")
    mechanism = {"example": "dp_sgd", "client": "client_level"}.get(update_dp, "")
    per_client = [c.get(mechanism) for c in ((privacy.get("ledger") or {}).get("per_client") or {}).values()]
    return {
        "chosen_round": selection.get("round"), "no_test_split": no_test,
        "chosen": {k: chosen.get(k) for k in METRICS}, "last": {k: last.get(k) for k in METRICS},
        "bytes_per_client_round": train_bytes / clients / len(rounds),
        "seconds_per_round": metrics.get("total_seconds", math.nan) / len(rounds),
        # every mechanism composed, largest over clients (runs before the ledger: the accuracy release's)
        "epsilon": ledger.get("composed", privacy.get("best")),
        "update_dp": update_dp,
        "epsilon_updates": ledger.get(mechanism),
        "epsilon_updates_median": statistics.median(per_client) if mechanism and per_client else None,
        "validation_auc": [r["validation"].get("macro-auc") for r in rounds],
        "fusion_alpha": (rounds[-1].get("model") or {}).get("fusion-alpha"),
        "bytes_per_round": [r["bytes"]["train_up"] + r["bytes"]["train_down"] for r in rounds],
    }


def summarise_centralised(result: dict) -> dict:
    """The centralised reference's row in the same shape (its best validation epoch is the chosen one)."""
    history = result["history"]
    best = history[result["best_epoch"] - 1]
    no_test = not result["test"].get("num_examples")
    chosen = best if no_test else result["test"]
    pick = lambda report: {k: report.get(k.replace("-", "_")) for k in METRICS}  # noqa: E731
    return {"chosen_round": result["best_epoch"], "no_test_split": no_test, "chosen": pick(chosen),
            "last": pick(history[-1]) if no_test else {}, "bytes_per_client_round": 0.0,
            "seconds_per_round": result["seconds"] / len(history), "epsilon": None, "epsilon_updates": None,
            "validation_auc": [h.get("macro_auc") for h in history], "bytes_per_round": [], "fusion_alpha": None}


def _same_config(stored: dict, expected: dict) -> bool:
    """Whether a run stored with ``stored`` is the run ``expected`` asks for: every stored key has the expected
    value, and a key the stored run did not know (added to the app since) has its default, which by the app's
    rule keeps the old behaviour."""
    defaults = json.loads(json.dumps(RunConfig.model_construct().as_flat_dict()))
    return (all(key in expected and expected[key] == value for key, value in stored.items())
            and all(key in stored or (key in defaults and defaults[key] == value) for key, value in expected.items()))


def _finished(path: Path, config: dict, complete) -> dict | None:
    """The result stored at ``path`` if it was made with the run config ``config`` (``_same_config``) and
    ``complete(result)`` holds."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    config = json.loads(json.dumps(config))  # as the run wrote it: tuples become lists
    if not isinstance(result, dict) or not isinstance(result.get("config"), dict):
        return None
    return result if _same_config(result["config"], config) and complete(result) else None


def run_arm(arm: Arm, seed: int, args: argparse.Namespace, folder: Path) -> tuple[dict, bool]:
    """Run one arm for one seed: (the row, or ``{"error": ...}`` when the run failed; whether it was reused)."""
    shared = (f"dataset='{args.dataset}' data-path='{args.data_path}' num-server-rounds={args.rounds} "
              f"local-epochs={args.local_epochs} dirichlet-alpha={args.alpha} seed={seed} "
              f"synthetic-records={args.synthetic_records} min-clients={min(2, args.clients)} {args.run_config}")
    if arm.name == "centralised":
        from benchmarks.centralised import run as train_centrally  # heavy imports only when this arm runs
        from flwr.common.config import parse_config_args

        cfg = RunConfig.from_flower(parse_config_args([f"{shared} {HYBRID}"]))
        config = {**cfg.as_flat_dict(), "central-epochs": args.central_epochs}
        path = folder / "centralised.json"
        done = args.resume and _finished(path, config, lambda r: len(r.get("history", [])) == args.central_epochs)
        if done:
            return summarise_centralised(done), True
        result = train_centrally(cfg, args.central_epochs)
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**result, "config": config}, indent=1))
        return summarise_centralised(result), False
    overrides = f"{shared} {arm.run_config} results-dir='{folder}'"
    metrics_path = folder / "metrics.json"
    if args.resume:
        done = _finished(metrics_path, run_config_from_overrides(overrides).as_flat_dict(),
                         lambda m: len(m.get("rounds", [])) == args.rounds and "selection" in m)
        if done:
            return summarise_run(done, args.clients), True
    proc = run_simulation(overrides, num_supernodes=args.clients, capture=True)
    if proc.returncode != 0 or not metrics_path.is_file():
        return {"error": proc.reason or f"exit {proc.returncode}"}, False
    return summarise_run(json.loads(metrics_path.read_text()), args.clients), False


def aggregate(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Mean and standard deviation over seeds of every figure of each arm."""
    table = {}
    for arm, runs in rows.items():
        ok = [r for r in runs if "error" not in r]
        entry = {"seeds": len(runs), "failed": [r["error"] for r in runs if "error" in r]}
        if ok:
            for part in ("chosen", "last"):
                entry[part] = {k: _mean_std([r[part].get(k) for r in ok if r[part]]) for k in METRICS}
            for key in ("bytes_per_client_round", "seconds_per_round", "epsilon", "epsilon_updates",
                        "epsilon_updates_median", "fusion_alpha"):
                entry[key] = _mean_std([r.get(key) for r in ok])
            entry["chosen_round"] = [r["chosen_round"] for r in ok]
            entry["update_dp"] = ok[0].get("update_dp", "none")
            entry["no_test_split"] = any(r["no_test_split"] for r in ok)
            for key in ("validation_auc", "bytes_per_round"):  # per round, mean over seeds
                width = max(len(r[key]) for r in ok)
                entry[key] = [_mean_std([r[key][i] for r in ok if i < len(r[key])])[0] for i in range(width)]
        table[arm] = entry
    reference = rows.get("fedavg")
    if reference:  # differences within a seed: the partitions move every arm together
        for arm, runs in rows.items():
            paired = [r["chosen"]["macro-auc"] - f["chosen"]["macro-auc"] for r, f in zip(runs, reference)
                      if "error" not in r and "error" not in f and r["chosen"].get("macro-auc") is not None
                      and f["chosen"].get("macro-auc") is not None]
            table[arm]["auc_minus_fedavg"] = _mean_std(paired)
    return table


def _pm(pair, digits: int = 3) -> str:
    mean, std = pair
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(table: dict, args: argparse.Namespace, command: str) -> str:
    no_test = any(e.get("no_test_split") for e in table.values())
    split = dataset_spec(args.dataset).split_label("val" if no_test else "test")
    title = (f"{args.dataset}: {split} as the test split (the data hold no test records; figures of the chosen "
             f"round are optimistic, it was chosen on this split)" if no_test else f"{args.dataset}: {split}")
    lines = [f"# {title}", "", f"`{command}`", "",
             f"{args.seeds} seed(s), {args.clients} clients, Dirichlet({args.alpha}), {args.rounds} rounds x "
             f"{args.local_epochs} local epochs; centralised: {args.central_epochs} epochs. Mean ± standard "
             "deviation over seeds; the model of each run is its best validation round. \"minus fedavg's\": the "
             "arm's macro-AUC minus fedavg's on the same seed (same partitions), averaged.", "",
             "| arm | loss | accuracy | macro-F1 | macro-AUC | minus fedavg's, same seed | macro-AUC, last round | "
             "bytes / client / round | s / round | epsilon | gate alpha, last round | chosen rounds |",
             "|" + "---|" * 12]
    for arm in table:
        e = table[arm]
        if "chosen" not in e:
            lines.append(f"| {arm} | failed: {'; '.join(e['failed'])} | | | | | | | | | | |")
            continue
        c = e["chosen"]
        eps = "-" if math.isnan(e["epsilon"][0]) else f"{e['epsilon'][0]:.2f}"
        alpha = e.get("fusion_alpha", (math.nan, 0))
        alpha = "-" if math.isnan(alpha[0]) else _pm(alpha, 2)
        lines.append(f"| {arm} | {_pm(c['loss'])} | {_pm(c['accuracy'])} | {_pm(c['macro-f1'])} | "
                     f"{_pm(c['macro-auc'])} | {_pm(e.get('auc_minus_fedavg', (math.nan, 0)))} | "
                     f"{_pm(e['last'].get('macro-auc', (math.nan, 0)))} | "
                     f"{e['bytes_per_client_round'][0] / 1e3:,.1f} kB | {e['seconds_per_round'][0]:.1f} | {eps} | "
                     f"{alpha} | {e['chosen_round']} |")
    lines += privacy_lines(table)
    lines += ["", "Arms: " + "; ".join(f"`{a.name}`: {a.what}" for a in args.arm_list), ""]
    return "\n".join(lines)


def _private(entry: dict) -> bool:
    return "chosen" in entry and not math.isnan(entry.get("epsilon_updates", (math.nan, 0))[0])


def privacy_lines(table: dict) -> list[str]:
    """Where an arm's updates are private: epsilon of the updates alone and of everything composed, per arm."""
    if not any(_private(e) for e in table.values()):
        return []
    lines = ["", "Privacy at dp-delta (one record of a client's data; client-level DP: the updates' epsilon is per "
             "client's whole data set), the largest over clients unless said, mean over seeds:", "",
             "| arm | epsilon, updates | epsilon, updates, median client | epsilon, all mechanisms composed | "
             "macro-AUC |", "|---|---|---|---|---|"]
    for arm, e in table.items():
        if "chosen" in e and not math.isnan(e["epsilon"][0]):
            updates, median = e["epsilon_updates"][0], e.get("epsilon_updates_median", (math.nan, 0))[0]
            lines.append(f"| {arm} | {'not private' if math.isnan(updates) else f'{updates:.2f}'} | "
                         f"{'-' if math.isnan(median) else f'{median:.2f}'} | "
                         f"{e['epsilon'][0]:.2f} | {_pm(e['chosen']['macro-auc'])} |")
    return lines


def plot(table: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, name, label in (("validation_auc", "validation_auc.png", "validation macro-AUC (mean over seeds)"),
                             ("bytes_per_round", "bytes.png", "train bytes per round, all clients")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for arm, e in table.items():
            if e.get(key):
                ax.plot(range(1, len(e[key]) + 1), e[key], marker="o", label=arm)
        ax.set_xlabel("round (centralised: epoch)")
        ax.set_ylabel(label)
        if ax.lines:  # every arm may have failed
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
    private = {arm: e for arm, e in table.items() if _private(e)}
    if private:
        fig, ax = plt.subplots(figsize=(7, 5))
        for unit, marker in (("example", "o"), ("client", "s")):  # a curve per mechanism, by epsilon
            arms = sorted((e["epsilon_updates"][0], arm) for arm, e in private.items() if e["update_dp"] == unit)
            if len(arms) > 1:
                ax.plot([x for x, _ in arms], [private[a]["chosen"]["macro-auc"][0] for _, a in arms], color="grey",
                        linewidth=0.8)
            for _, arm in arms:
                e = private[arm]
                ax.errorbar(e["epsilon_updates"][0], e["chosen"]["macro-auc"][0],
                            yerr=e["chosen"]["macro-auc"][1], marker=marker, capsize=3,
                            label=arm + (" (epsilon per client's data set)" if unit == "client" else ""))
        for arm, e in table.items():
            if arm not in private and "chosen" in e:
                ax.axhline(e["chosen"]["macro-auc"][0], linestyle="--", linewidth=1,
                           label=f"{arm} (updates not private)", color="grey" if arm == "fedavg" else "black")
        ax.set_xscale("log")
        ax.set_xlabel("epsilon of the updates at dp-delta (largest over clients)")
        ax.set_ylabel("macro-AUC of the chosen round")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "accuracy_epsilon.png", dpi=120)
        plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=datasets_help())
    parser.add_argument("--dataset", default="ptbxl")
    parser.add_argument("--data-path", default="", help="the data set's folder; empty: its built-in set")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed, first-seed + 1, ...")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the partitions")
    parser.add_argument("--central-epochs", type=int, default=20)
    parser.add_argument("--synthetic-records", type=int, default=1000, help="size of the built-in set")
    parser.add_argument("--arms", default="paper", help=f"comma-separated names from {', '.join(ARM_NAMES)}, or "
                        f"groups {', '.join(f'{g} ({len(a)} arms)' for g, a in ARM_GROUPS.items())} "
                        "(empty with --extra-arm: those only)")
    parser.add_argument("--run-config", default="", help="further run config keys for every arm")
    parser.add_argument("--extra-arm", action="append", default=[], metavar="NAME=RUN_CONFIG",
                        help="one more federated arm (a study's variant), e.g. \"adeptheq-hamming=strategy='adeptheq' "
                             "dp-score='hamming'\"; repeatable")
    parser.add_argument("--quick", action="store_true", help=f"the chosen arms, small: {QUICK}")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true",
                        help="read the runs already finished under --out with the same run config instead of rerunning")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    arms = [name for a in args.arms.split(",") if a.strip() for name in ARM_GROUPS.get(a.strip(), (a.strip(),))]
    unknown = [a for a in arms if a not in ARM_NAMES]
    if unknown or not (arms or args.extra_arm):
        parser.error(f"--arms {args.arms!r}: expected a comma-separated list from {', '.join(ARM_NAMES)} or the "
                     f"groups {', '.join(ARM_GROUPS)}")
    for key in ("seeds", "rounds", "local_epochs", "clients", "central_epochs"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} {getattr(args, key)}: expected an integer >= 1")
    args.arm_list = [a for a in ARMS if a.name in arms]
    for spec in args.extra_arm:
        name, _, run_config = (part.strip() for part in spec.partition("="))
        if not name or not run_config or name in ARM_NAMES or name in {a.name for a in args.arm_list}:
            parser.error(f"--extra-arm {spec!r}: expected NAME=RUN_CONFIG with a new name and some run config keys")
        args.arm_list.append(Arm(name, run_config, f"`{run_config}`"))
    args.out = args.out.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:  # the shared keys once, before any run: a bad value stops here with one message
        RunConfig.from_flower({"dataset": args.dataset, "data-path": args.data_path, "seed": 0})
    except (ConfigError, DataFormatError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {a.name: [] for a in args.arm_list}
    started = time.time()
    total = len(args.arm_list) * args.seeds
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for arm in args.arm_list:
            t0 = time.time()
            try:
                row, reused = run_arm(arm, seed, args, args.out / "runs" / f"{arm.name}-seed{seed}")
            except Exception as err:  # one arm's crash must not end a study of hours; the table names it
                traceback.print_exc()
                row, reused = {"error": f"{type(err).__name__}: {err}"}, False
            rows[arm.name].append(row)
            done = sum(map(len, rows.values()))
            figure = "failed: " + row["error"] if "error" in row else f"macro-AUC {row['chosen']['macro-auc']:.3f}"
            took = "read from its folder" if reused else f"{time.time() - t0:.0f} s"
            print(f"[compare] {done}/{total} {arm.name} seed {seed}: {figure} ({took}, "
                  f"{time.time() - started:.0f} s in all)", file=sys.stderr, flush=True)
    table = aggregate(rows)
    (args.out / "results.json").write_text(json.dumps({"command": command, "runs": rows, "table": table},
                                                      indent=1, default=str))
    (args.out / "results.md").write_text(markdown(table, args, command))
    plot(table, args.out)
    print(markdown(table, args, command))
    return 0 if all("chosen" in e for e in table.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
