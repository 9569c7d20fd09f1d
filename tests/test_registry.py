"""A data set's spec is the one place its shape lives: the model, loss and labels read it."""

from __future__ import annotations

import pytest
import torch

from common.config import ConfigError, RunConfig
from common.model import build_model
from data_prep.ptbxl import LEAD_NAMES, SUPERCLASSES
from data_prep.registry import DATASETS, check_data_folder, dataset_spec


def test_ptbxl_spec_states_the_published_facts():
    spec = dataset_spec("ptbxl")
    assert spec.channels == LEAD_NAMES and spec.num_channels == 12
    assert spec.classes == SUPERCLASSES and spec.task == "multilabel" and spec.group == "site"
    assert spec.window_samples(100) == 1000 and spec.window_samples(500) == 5000
    assert spec.split_label("val") == "validation (strat_fold 9)"
    assert spec.split_label("test") == "test (strat_fold 10)"


@pytest.mark.parametrize("head", ["hybrid", "classical"])
def test_model_shape_follows_the_spec(head):
    spec = dataset_spec("ptbxl")
    model = build_model(RunConfig(model=head))
    assert model.conv1[0].in_channels == spec.num_channels and model.fc.out_features == spec.num_classes
    out = model(torch.zeros(3, spec.num_channels, spec.window_samples(100)))
    assert tuple(out.shape) == (3, spec.num_classes)


def test_unknown_dataset_and_bad_folder_are_named(tmp_path):
    with pytest.raises(ValueError, match="dataset 'mnist': expected one of ptbxl"):
        dataset_spec("mnist")
    with pytest.raises(ValueError, match="lacks ptbxl_database.csv, scp_statements.csv, records100/"):
        check_data_folder("ptbxl", str(tmp_path), 100)
    with pytest.raises(ConfigError, match="key 'dataset' has value 'mnist'; expected one of " + ", ".join(DATASETS)):
        RunConfig.from_flower({"dataset": "mnist"})



@pytest.mark.parametrize("module", ["server_app.simulation_runner", "data_prep.__main__"])
def test_help_says_where_to_get_each_data_set_and_what_its_folder_holds(module, capsys):
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for spec in DATASETS.values():
        assert spec.source and spec.layout, spec.name
        for text in (f"{spec.name}: {spec.title}", spec.source, spec.layout, spec.splits["test"], *spec.classes):
            assert " ".join(text.split()) in out, (module, text)
