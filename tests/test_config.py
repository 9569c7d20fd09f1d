"""The run and node configs fail with one message naming the key, the value and what was expected."""

from __future__ import annotations

import ast
import csv
import re
import tomllib
from pathlib import Path

import pytest

from common.config import ConfigError, NodeConfig, RunConfig
from data_prep.client_data import check_federation_size, training_record_count
from data_prep.ptbxl import load_ptbxl
from data_prep.synth_ptbxl import ensure_synthetic_ptbxl, write_synthetic_ptbxl

PROJECT = Path(__file__).resolve().parents[1]


def defaults() -> dict:
    return dict(tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])


def test_pyproject_defaults_parse_and_cover_every_field():
    raw = defaults()
    cfg = RunConfig.from_flower(raw)
    assert set(cfg.as_flat_dict()) == set(raw)


@pytest.mark.parametrize("key,value,fragment", [
    ("n-qubits", 0, "expected a value greater than or equal to 1"),
    ("dirichlet-alpha", -0.5, "greater than 0"),
    ("dataset", "mnist", "one of ptbxl"),
    ("strategy", "fedprox", "expected one of 'fedavg', 'adeptheq' or 'fhe-fedqnn'"),
    ("local-epochs", "ten", "expected a valid integer"),
    ("data-path", "/nonexistent/ptb-xl", "does not exist"),
    ("data-path", "relative/path", "absolute path"),
    ("results-dir", "relative", "absolute path"),
    ("he-layers", " , ", "comma-separated"),
])
def test_bad_values_name_key_value_and_expectation(key, value, fragment):
    raw = defaults() | {key: value}
    with pytest.raises(ConfigError) as info:
        RunConfig.from_flower(raw)
    message = str(info.value)
    assert f"'{key}'" in message and repr(value) in message and fragment in message


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match="unknown key 'n-qubit'"):
        RunConfig.from_flower(defaults() | {"n-qubit": 4})


def test_malformed_data_folder_names_what_is_missing(tmp_path):
    (tmp_path / "ptbxl_database.csv").write_text("ecg_id\n")
    with pytest.raises(ConfigError, match="lacks scp_statements.csv, records100/"):
        RunConfig.from_flower(defaults() | {"data-path": str(tmp_path)})


def test_node_config_checks_partition_and_files(tmp_path):
    assert NodeConfig.from_flower({"partition-id": 2, "num-partitions": 3}).partition_id == 2
    with pytest.raises(ConfigError, match="partition-id 3 to be < num-partitions 3"):
        NodeConfig.from_flower({"partition-id": 3, "num-partitions": 3})
    with pytest.raises(ConfigError, match="key-path '/missing/client.ctx'"):
        NodeConfig.from_flower({"partition-id": 0, "num-partitions": 3, "key-path": "/missing/client.ctx"})
    with pytest.raises(ConfigError, match="data-path"):
        NodeConfig.from_flower({"partition-id": 0, "num-partitions": 3, "data-path": str(tmp_path / "nope")})


def test_more_clients_than_the_data_can_serve_is_refused():
    check_federation_size(RunConfig(synthetic_records=1000), 10)  # about 800 training records: 80 each
    expected = "20 clients need at least 10 training records each, but synthetic-records 100 gives 78 training records"
    with pytest.raises(ConfigError, match=re.escape(expected + " (strat_fold 1-8)")):
        check_federation_size(RunConfig(synthetic_records=100), 20)


def test_synthetic_training_count_from_tables_equals_the_written_set(tmp_path):
    """Counting from the generator's tables (no file written) agrees with the files the reader parses."""
    cfg = RunConfig(synthetic_records=100)
    written = load_ptbxl(ensure_synthetic_ptbxl(100, cache_root=tmp_path), 100, tmp_path, verbose=False)
    assert training_record_count(cfg) == len(written.split_indices("train")) == 78


def test_federation_size_counts_labelled_records_of_the_real_training_folds(tmp_path):
    root = write_synthetic_ptbxl(tmp_path / "ptbxl", n_records=40, seed=5)
    with open(root / "scp_statements.csv", newline="") as handle:  # independent count: csv + literal_eval
        diagnostic = {row[""] for row in csv.DictReader(handle) if row["diagnostic"] and float(row["diagnostic"]) == 1}
    with open(root / "ptbxl_database.csv", newline="") as handle:
        expected = sum(1 <= int(row["strat_fold"]) <= 8 and bool(set(ast.literal_eval(row["scp_codes"])) & diagnostic)
                       for row in csv.DictReader(handle))
    cfg = RunConfig(data_path=str(root))
    assert training_record_count(cfg) == expected
    check_federation_size(cfg, expected // 10)
    with pytest.raises(ConfigError, match=f"{expected // 10 + 1} clients need .* but data-path '{root}' gives "
                                          f"{expected} training records"):
        check_federation_size(cfg, expected // 10 + 1)


def test_split_data_paths_name_the_other_data_sets_folders(tmp_path):
    from data_prep.synth_wesad import write_synthetic_wesad

    wesad = write_synthetic_wesad(tmp_path / "wesad", n_windows=200, seed=1)
    mixed = defaults() | {"mode": "split", "split-variant": "u-shaped", "split-datasets": "ptbxl,wesad"}
    cfg = RunConfig.from_flower(mixed | {"split-data-paths": f"wesad={wesad}"})
    assert cfg.for_dataset("wesad").data_path == str(wesad) and cfg.for_dataset("ptbxl").data_path == ""
    for value, fragment in [(f"pamap2={wesad}", "naming data sets of split-datasets (ptbxl, wesad)"),
                            (f"ptbxl={wesad}", "no pair for the run's own dataset 'ptbxl'"),
                            (f"wesad={tmp_path / 'absent'}", "absent"), ("wesad", "got 'wesad'")]:
        with pytest.raises(ConfigError) as info:
            RunConfig.from_flower(mixed | {"split-data-paths": value})
        assert "'split-data-paths'" in str(info.value) and fragment in str(info.value)
