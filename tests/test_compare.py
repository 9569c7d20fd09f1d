"""benchmarks.compare: the rows it derives from a run, their mean over seeds, and a two-arm smoke run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.compare import aggregate, main, markdown, parse_args, summarise_run


def _metrics(aucs, test=None, selection_round=2, up=1000, down=3000, seconds=12.0):
    rounds = [{"round": i + 1, "validation": {"macro-auc": a, "accuracy": 0.5, "loss": 0.4, "macro-f1": 0.3},
               "bytes": {"train_up": up, "train_down": down}} for i, a in enumerate(aucs)]
    return {"rounds": rounds, "test": test, "test_last_round": test and {**test, "macro-auc": 0.6},
            "selection": {"round": selection_round, "validation": rounds[selection_round - 1]["validation"]},
            "total_seconds": seconds, "privacy": {"best": 1.9}}


def test_a_run_without_test_records_reports_its_chosen_validation_round_and_says_so():
    row = summarise_run(_metrics([0.7, 0.9, 0.8], test={"num-examples": 0}), clients=4)
    assert row["no_test_split"] and row["chosen_round"] == 2
    assert row["chosen"]["macro-auc"] == 0.9 and row["last"]["macro-auc"] == 0.8
    assert row["bytes_per_client_round"] == pytest.approx(4000 / 4) and row["seconds_per_round"] == 4.0
    assert row["epsilon"] == 1.9 and row["validation_auc"] == [0.7, 0.9, 0.8]
    with_test = summarise_run(_metrics([0.7, 0.9], test={"num-examples": 5, "macro-auc": 0.75}), clients=2)
    assert not with_test["no_test_split"] and with_test["chosen"]["macro-auc"] == 0.75
    assert with_test["last"]["macro-auc"] == 0.6


def test_figures_are_averaged_over_seeds_with_their_standard_deviation():
    rows = {"a": [summarise_run(_metrics([0.7, 0.8], test={"num-examples": 3, "macro-auc": v}), 2)
                  for v in (0.6, 0.8)] + [{"error": "exit 1"}]}
    entry = aggregate(rows)["a"]
    mean, std = entry["chosen"]["macro-auc"]
    assert mean == pytest.approx(0.7) and std == pytest.approx(math.sqrt(0.02))  # sample std of 0.6, 0.8
    assert entry["failed"] == ["exit 1"] and entry["seeds"] == 3 and entry["validation_auc"] == [0.7, 0.8]
    rows["fedavg"] = [summarise_run(_metrics([0.7], test={"num-examples": 3, "macro-auc": v}, selection_round=1), 2)
                      for v in (0.5, 0.9, 0.7)]
    table = aggregate(rows)
    mean, std = table["a"]["auc_minus_fedavg"]  # paired by seed: 0.6 - 0.5 and 0.8 - 0.9; seed 3 failed in "a"
    assert mean == pytest.approx(0.0) and std == pytest.approx(math.sqrt(0.02))
    assert table["fedavg"]["auc_minus_fedavg"] == (0.0, 0.0)


def test_private_arms_report_the_composed_epsilon_and_a_privacy_table():
    private, plain = (_metrics([0.7, 0.8], test={"num-examples": 3, "macro-auc": v}) for v in (0.7, 0.8))
    private["privacy"].update(update_dp="example", ledger={"total": {
        "composed": 25.0, "accuracy_release": 19.1, "dp_sgd": 9.5, "client_level": 0.0}, "per_client": {
        "1": {"dp_sgd": 9.5}, "2": {"dp_sgd": 3.0}, "3": {"dp_sgd": 5.0}}})
    plain["privacy"].update(update_dp="none", ledger={"total": {  # what a run without update DP writes
        "composed": 1.9, "accuracy_release": 1.9, "dp_sgd": 0.0, "client_level": 0.0}})
    rows = {"adeptheq-4q2l": [summarise_run(plain, 2)], "dp-sgd-s4": [summarise_run(private, 2)]}
    assert rows["dp-sgd-s4"][0]["epsilon"] == 25.0 and rows["dp-sgd-s4"][0]["epsilon_updates"] == 9.5
    assert rows["adeptheq-4q2l"][0]["epsilon"] == 1.9 and rows["adeptheq-4q2l"][0]["epsilon_updates"] is None
    args = parse_args(["--arms", "privacy", "--seeds", "1", "--out", "x"])
    assert [a.name for a in args.arm_list] == ["fedavg", "adeptheq-4q2l", "dp-sgd-s1", "dp-sgd-s2", "dp-sgd-s4",
                                               "dp-sgd-s8", "client-dp-s1"]
    text = markdown(aggregate(rows), args, "cmd")
    assert "| dp-sgd-s4 | 9.50 | 5.00 | 25.00 | 0.700 ± 0.000 |" in text
    assert "| adeptheq-4q2l | not private | - | 1.90 | 0.800 ± 0.000 |" in text


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        parse_args(["--arms", "fedavg,fedprox", "--out", "x"])
    with pytest.raises(SystemExit):
        parse_args(["--seeds", "0", "--out", "x"])
    quick = parse_args(["--quick", "--out", "x"])
    assert quick.seeds == 1 and len(quick.arm_list) == 10 and quick.first_seed == 0
    assert parse_args(["--seeds", "2", "--first-seed", "3", "--out", "x"]).first_seed == 3  # seeds 3 and 4
    study = parse_args(["--arms", "fedavg", "--extra-arm", "adeptheq-hamming=strategy='adeptheq' dp-score='hamming'",
                        "--out", "x"])
    assert [(a.name, a.run_config) for a in study.arm_list] == [
        ("fedavg", "strategy='fedavg' model='hybrid' n-qubits=4 n-layers=2"),
        ("adeptheq-hamming", "strategy='adeptheq' dp-score='hamming'")]
    with pytest.raises(SystemExit):
        parse_args(["--extra-arm", "fedavg=strategy='fedavg'", "--out", "x"])  # a name already taken


def test_the_green_group_runs_the_note_models_beside_the_hybrid_and_classical_references():
    from common.config import RunConfig
    from server_app.simulation_runner import run_config_from_overrides

    green = parse_args(["--arms", "green", "--out", "x"])
    names = [a.name for a in green.arm_list]
    assert names[:2] == ["fedavg", "fedavg-classical"] and "fedavg-gated" in names and len(names) == 10
    for arm in green.arm_list:  # every arm's run config parses
        cfg = run_config_from_overrides(arm.run_config)
        assert isinstance(cfg, RunConfig) and cfg.strategy == "fedavg"
    note = run_config_from_overrides(next(a for a in green.arm_list if a.name == "fedavg-green").run_config)
    assert (note.model, note.optimizer, note.weight_decay, note.lr_schedule) == (
        "green", "adamw", 1e-4, "cosine-restarts")
    mixed = parse_args(["--arms", "paper,fedavg-gated", "--out", "x"])
    assert len(mixed.arm_list) == 11


def test_two_arm_smoke_run_on_the_same_partitions_then_resumed(tmp_path, monkeypatch):
    argv = ["--arms", "fedavg,adeptheq-4q2l", "--seeds", "1", "--rounds", "2", "--local-epochs", "1",
            "--clients", "3", "--synthetic-records", "300", "--out", str(tmp_path)]
    rc = main(argv)
    assert rc == 0
    result = json.loads((tmp_path / "results.json").read_text())
    table = result["table"]
    assert set(table) == {"fedavg", "adeptheq-4q2l"}
    for arm, entry in table.items():
        assert 0.0 <= entry["chosen"]["macro-auc"][0] <= 1.0 and entry["chosen"]["macro-auc"][1] == 0.0
        assert entry["bytes_per_client_round"][0] > 0 and len(entry["validation_auc"]) == 2
    assert table["adeptheq-4q2l"]["epsilon"][0] > 0 and math.isnan(table["fedavg"]["epsilon"][0])
    configs = [json.loads((tmp_path / "runs" / f"{arm}-seed0" / "metrics.json").read_text()) for arm in table]
    assert configs[0]["rounds"][0]["train"]["num_examples"] == configs[1]["rounds"][0]["train"]["num_examples"]
    markdown = (tmp_path / "results.md").read_text()
    assert "| fedavg |" in markdown and "| adeptheq-4q2l |" in markdown and "# ptbxl: test (strat_fold 10)" in markdown
    assert (tmp_path / "validation_auc.png").stat().st_size > 0 and (tmp_path / "bytes.png").stat().st_size > 0

    # --resume reads the finished runs made with the same run config and reruns any other one
    reran = []

    class Failed:
        returncode, reason = 1, "stub: not rerun"

    monkeypatch.setattr("benchmarks.compare.run_simulation", lambda overrides, **kw: reran.append(overrides) or Failed)
    assert main([*argv, "--resume"]) == 0 and not reran
    assert json.loads((tmp_path / "results.json").read_text())["table"]["fedavg"]["chosen"] == table["fedavg"]["chosen"]
    metrics_path = tmp_path / "runs" / "fedavg-seed0" / "metrics.json"
    unfinished = json.loads(metrics_path.read_text())
    unfinished["rounds"] = unfinished["rounds"][:1]
    metrics_path.write_text(json.dumps(unfinished))
    assert main([*argv, "--resume", "--local-epochs", "2"]) == 1 and len(reran) == 2  # another budget: both rerun
    assert main([*argv, "--resume"]) == 1 and len(reran) == 3 and "strategy='fedavg'" in reran[-1]  # unfinished


def test_chance_level_of_a_split_and_of_an_empty_one():
    from benchmarks.centralised import chance_level

    multilabel = np.array([[1, 0], [1, 0], [0, 1], [1, 1]])
    assert chance_level(multilabel, "multilabel") == pytest.approx(2 / 4)  # the set {0} twice out of four
    onehot = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert chance_level(onehot, "multiclass") == pytest.approx(2 / 3)
    assert chance_level(multilabel[:0], "multilabel") is None  # real PTB-XL here has no fold 10


def test_an_arm_that_crashes_is_a_failed_row_and_the_study_goes_on(tmp_path, monkeypatch):
    seen = []

    def fake_run_arm(arm, seed, args, folder):
        seen.append(arm.name)
        if arm.name == "centralised":
            raise ValueError("zero-size array")
        return summarise_run(_metrics([0.7, 0.8], test={"num-examples": 3, "macro-auc": 0.8}), 2), False

    monkeypatch.setattr("benchmarks.compare.run_arm", fake_run_arm)
    monkeypatch.setattr("benchmarks.compare.plot", lambda table, out: None)
    assert main(["--arms", "centralised,fedavg", "--seeds", "1", "--out", str(tmp_path)]) == 1
    table = json.loads((tmp_path / "results.json").read_text())["table"]
    assert sorted(seen) == ["centralised", "fedavg"]
    assert table["centralised"]["failed"] == ["ValueError: zero-size array"]
    assert table["fedavg"]["chosen"]["macro-auc"][0] == pytest.approx(0.8)


def test_a_resumed_run_must_have_had_the_same_run_config_and_may_predate_a_key_left_at_its_default():
    from benchmarks.compare import _same_config
    from common.config import RunConfig

    expected = RunConfig.from_flower({"seed": 3, "num-server-rounds": 20}).as_flat_dict()
    stored = dict(expected)
    assert _same_config(stored, expected)
    assert not _same_config({**stored, "seed": 4}, expected)
    older = {k: v for k, v in stored.items() if k != "split-nopeek-weight"}  # a run from before that key existed
    assert _same_config(older, expected)
    assert not _same_config(older, {**expected, "split-nopeek-weight": 0.5})  # the key is not at its default now
    assert not _same_config({**stored, "a-removed-key": 1}, expected)
