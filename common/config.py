"""Run configuration and node configuration, validated once at the boundary.

Flower hands the app a flat ``run_config`` (``[tool.flwr.app.config]`` merged with
``--run-config`` overrides) and, per SuperNode, a ``node_config``. Both are parsed here
with pydantic; any bad value stops the run with one message naming the key, the value
and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from data_prep.registry import DATASETS, check_data_folder



GREEN_KEYS = ("green_qubits", "green_layers", "green_steps", "green_spiking", "green_binary", "green_entanglement",
              "green_paths")


class ConfigError(ValueError):
    """A run or node configuration value is invalid."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _expectation(msg: str) -> str:
    """Pydantic's 'Input should be X' as 'X' phrased as what was expected."""
    if not msg.startswith("Input should be "):
        return msg
    rest = msg.removeprefix("Input should be ")
    if rest.startswith("'"):
        return f"one of {rest}"
    if rest.startswith(("a ", "an ")):
        return rest
    return f"a value {rest}"


def _format_validation_error(kind: str, err: ValidationError, raw: Mapping[str, Any]) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        if not key:  # a check across keys: the message names them itself
            lines.append(f"{kind}: expected {_expectation(item['msg'].removeprefix('Value error, '))}")
            continue
        if item["type"] == "extra_forbidden":
            lines.append(f"{kind}: unknown key '{key}' (value {raw.get(key)!r}); check the spelling against pyproject.toml")
            continue
        value = raw.get(key, item.get("input"))
        msg = _expectation(item["msg"].removeprefix("Value error, "))
        lines.append(f"{kind}: key '{key}' has value {value!r}; expected {msg}")
    return "\n".join(lines)


class RunConfig(BaseModel):
    """Every tunable of a run (``[tool.flwr.app.config]``), typed and range-checked."""

    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="forbid", frozen=True)

    # data
    dataset: str = "ptbxl"
    sampling_rate: int = Field(0, ge=0, le=100_000, validate_default=True)  # 0: the data set's first rate
    data_path: str = ""
    synthetic_records: int = Field(1000, ge=100, le=200_000)
    partitioning: Literal["dirichlet", "iid", "natural"] = "dirichlet"
    dirichlet_alpha: float = Field(0.5, gt=0.0, le=1e6)
    val_fraction: float = Field(0.15, gt=0.0, lt=0.9)
    seed: int = 42
    val_subjects: str = ""  # subject-wise data sets: comma-separated ids; empty: the data set's default
    test_subjects: str = ""
    window_seconds: float = Field(0.0, ge=0.0, le=3600.0)  # windowed data sets: 0 means the data set's default
    window_step_seconds: float = Field(0.0, ge=0.0, le=3600.0)
    # model
    model: Literal["hybrid", "classical", "gated", "green"] = "hybrid"
    n_qubits: int = Field(4, ge=1, le=10)
    n_layers: int = Field(2, ge=1, le=10)
    quantum_backend: Literal["torch", "pennylane"] = "torch"
    # the green model (the ECG design note): its circuit and its ablations
    green_qubits: int = Field(8, ge=2, le=10)
    green_layers: int = Field(3, ge=1, le=10)
    green_steps: int = Field(4, ge=1, le=64)  # time steps the window is presented to the spiking stages
    green_spiking: bool = True  # False: ReLU stages instead of leaky integrate-and-fire neurons
    green_binary: bool = True  # False: real convolution weights instead of one-bit ones
    green_entanglement: Literal["learned", "fixed"] = "learned"  # fixed: every pair at half strength, no attention
    green_paths: Literal["both", "classical", "quantum"] = "both"  # one path alone: no gate
    # local training
    local_epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=65536)
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)  # adam: L2 penalty; adamw: decoupled decay
    lr_schedule: Literal["constant", "cosine-restarts"] = "constant"  # cosine-restarts: one cosine cycle per round
    mixed_precision: bool = False  # float16 autocast on a CUDA client (quantum circuits stay float32); CPU: no effect
    # federation
    num_server_rounds: int = Field(20, ge=1, le=100_000)
    strategy: Literal["fedavg", "adeptheq", "fhe-fedqnn"] = "adeptheq"
    weighting: Literal["", "samples", "uniform", "dp-softmax"] = ""  # empty: the strategy's own (ablations)
    min_clients: int = Field(2, ge=1)
    round_timeout: float = Field(3600.0, gt=0.0)
    results_dir: str = ""
    selection_metric: Literal["macro-auc", "accuracy", "macro-f1", "balanced-accuracy", "hamming-accuracy",
                              "loss"] = "macro-auc"  # the final model: the round best on validation by this
    # AdeptHEQ: DP accuracy weighting
    dp_epsilon: float = Field(1.0, gt=0.0, le=100.0)
    dp_delta: float = Field(1e-5, gt=0.0, lt=1.0)
    softmax_tau: float = Field(0.5, gt=0.0, le=1e6)
    weight_by_samples: bool = True  # the paper's softmax times sample counts (docs/results.md: the weighting study)
    dp_score: Literal["exact-match", "hamming", "clipped-loss"] = "hamming"  # the released validation score
    dp_loss_clip: float = Field(1.0, gt=0.0, le=100.0)  # clipped-loss: per-record loss clipped at this
    # differential privacy of the model updates (common.dp_sgd, common.update_noise), at dp-delta
    update_dp: Literal["none", "example", "client"] = "none"
    update_dp_noise: float = Field(1.0, gt=0.0, le=1000.0)  # noise multiplier sigma
    update_dp_clip: float = Field(1.0, gt=0.0, le=1e6)  # L2 clipping norm C (per example, or of a client's update)
    # AdeptHEQ: homomorphic encryption (TenSEAL CKKS)
    he_layers: str = "fc"
    he_server_context: str = ""  # a path on the server machine: checked by the ServerApp only
    # AdeptHEQ: EMA layer freezing
    freeze_threshold: float = Field(1e-3, ge=0.0)
    freeze_ema_alpha: float = Field(0.9, ge=0.0, lt=1.0)
    # split learning (mode = "split"): client extractors, a shared server head
    mode: Literal["federated", "split"] = "federated"
    split_variant: Literal["plain", "u-shaped"] = "plain"
    split_cut: Literal["conv2", "conv3", "conv4", "stage3"] = Field("conv4", validate_default=True)  # green: stage3
    split_micro_batches: int = Field(1, ge=1, le=1024)  # per message: the head steps on each, the client once
    split_server_head: Literal["shared", "per-client"] = "shared"  # per-client: copies averaged at round end
    split_datasets: str = ""  # U-shaped: data sets simulated clients take in turn (a node config dataset overrides)
    split_data_paths: str = ""  # with split-datasets: "wesad=/data/WESAD,..." folders of the other data sets
    split_activation_noise: float = Field(0.0, ge=0.0, le=100.0)  # noise std on sent activations, x their RMS
    split_nopeek_weight: float = Field(0.0, ge=0.0, le=100.0)  # weight of dCor(input, activations) in the loss

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"one of {', '.join(DATASETS)}")
        return value

    @field_validator("sampling_rate")
    @classmethod
    def _offered_rate(cls, value: int, info: ValidationInfo) -> int:
        rates = DATASETS[info.data["dataset"]].sampling_rates if info.data.get("dataset") in DATASETS else ()
        if value == 0:
            return rates[0] if rates else 0
        if rates and value not in rates:
            raise ValueError(f"one of {', '.join(map(str, rates))} (Hz) for dataset '{info.data['dataset']}'")
        return value

    @field_validator("mode")
    @classmethod
    def _split_needs_a_quantum_head(cls, value: str, info: ValidationInfo) -> str:
        if value == "split" and info.data.get("model") == "classical":
            raise ValueError("'federated' with model 'classical' (split learning puts the quantum head on the "
                             "server: model 'hybrid', 'gated' or 'green')")
        if value == "split" and info.data.get("model") == "green" and info.data.get("green_paths") == "classical":
            raise ValueError("'federated' with green-paths 'classical' (split learning puts the quantum head on the "
                             "server)")
        return value

    @field_validator("split_variant")
    @classmethod
    def _u_shape_needs_the_hybrid_head(cls, value: str, info: ValidationInfo) -> str:
        if value == "u-shaped" and info.data.get("mode") == "split" and info.data.get("model") != "hybrid":
            raise ValueError(f"'plain' with model '{info.data.get('model')}' (the U-shaped variant returns the "
                             "quantum read-outs to the client's final layer; a gated model's fusion needs both paths "
                             "there, which is not built: use model 'hybrid' or split-variant 'plain')")
        return value

    @field_validator("split_cut")
    @classmethod
    def _cut_of_the_model(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("mode") != "split":
            return value
        if info.data.get("model") == "green" and value != "stage3":
            raise ValueError("'stage3' with model 'green' (the client runs the whole spiking pyramid and sends its "
                             "firing rates; an earlier cut would send spike trains per step, which is not built)")
        if info.data.get("model") != "green" and value == "stage3":
            raise ValueError(f"one of 'conv2', 'conv3', 'conv4' with model '{info.data.get('model')}' ('stage3' is "
                             "the green model's cut)")
        return value

    @field_validator("split_datasets")
    @classmethod
    def _mixed_needs_the_u_shape(cls, value: str, info: ValidationInfo) -> str:
        names = [v.strip() for v in value.split(",") if v.strip()]
        unknown = [n for n in names if n not in DATASETS]
        if unknown:
            raise ValueError(f"a comma-separated list of data sets from {', '.join(DATASETS)} (unknown: "
                             f"{', '.join(unknown)})")
        if names and (info.data.get("mode") != "split" or info.data.get("split_variant") != "u-shaped"
                      or info.data.get("split_cut") != "conv4"):
            raise ValueError("empty unless mode 'split', split-variant 'u-shaped' and split-cut 'conv4' (clients of "
                             "different data sets share only the head: each keeps its own extractor and final layer, "
                             "and at conv4 every extractor sends the same 64 numbers per example)")
        return value

    @field_validator("split_data_paths")
    @classmethod
    def _mixed_data_folders(cls, value: str, info: ValidationInfo) -> str:
        mixed = [v.strip() for v in info.data.get("split_datasets", "").split(",") if v.strip()]
        for pair in (v.strip() for v in value.split(",") if v.strip()):
            name, _, path = (part.strip() for part in pair.partition("="))
            if name not in mixed or not path:
                raise ValueError(f"comma-separated 'dataset=folder' pairs naming data sets of split-datasets "
                                 f"({', '.join(mixed) or 'empty'}); got {pair!r}")
            if name == info.data.get("dataset"):
                raise ValueError(f"no pair for the run's own dataset '{name}' (its folder is data-path); got {pair!r}")
            rates = DATASETS[name].sampling_rates
            check_data_folder(name, path, rates[0] if rates else 0)
        return value

    @field_validator("selection_metric")
    @classmethod
    def _metric_of_the_task(cls, value: str, info: ValidationInfo) -> str:
        task = DATASETS[info.data["dataset"]].task if info.data.get("dataset") in DATASETS else ""
        missing = {"multilabel": "balanced-accuracy", "multiclass": "hamming-accuracy"}.get(task)
        if value == missing:
            raise ValueError(f"a validation metric the {task} task reports: macro-auc, accuracy, macro-f1, loss or "
                             f"{'hamming-accuracy' if task == 'multilabel' else 'balanced-accuracy'}")
        return value

    @field_validator("results_dir")
    @classmethod
    def _absolute_results_dir(cls, value: str) -> str:
        if value and not Path(value).is_absolute():
            raise ValueError("an absolute path (or empty for a new folder under results/)")
        return value

    @field_validator("he_layers")
    @classmethod
    def _layer_list(cls, value: str) -> str:
        names = [v.strip() for v in value.split(",") if v.strip()]
        if not names:
            raise ValueError("a comma-separated list of layer names (e.g. 'fc' or 'proj,fc'), 'all' or 'none'")
        return ",".join(names)

    def _changed_from_defaults(self, names) -> list[str]:
        return [name for name in names if getattr(self, name) != type(self).model_fields[name].default]

    @model_validator(mode="after")
    def _green_keys_need_the_green_model(self) -> "RunConfig":
        if self.model != "green":
            changed = self._changed_from_defaults(GREEN_KEYS)
            if changed:
                raise ValueError(f"{', '.join(_kebab(n) for n in changed)} at their defaults with model "
                                 f"'{self.model}' (they shape model 'green' only)")
        return self

    @model_validator(mode="after")
    def _update_dp_fits_the_run(self) -> "RunConfig":
        if self.update_dp == "none":
            changed = self._changed_from_defaults(("update_dp_noise", "update_dp_clip"))
            if changed:
                raise ValueError(f"{', '.join(_kebab(n) for n in changed)} set with update-dp = 'none'; expected "
                                 "update-dp = 'example' or 'client' (they tune those only)")
        elif self.mode == "split":
            raise ValueError(f"update-dp = {self.update_dp!r} with mode = 'split'; expected 'none' there (split "
                             "learning sends activations every step, which these mechanisms do not cover)")
        elif self.update_dp == "example" and self.model == "green":
            raise ValueError("update-dp = 'example' with model = 'green'; expected model 'hybrid', 'classical' or "
                             "'gated' (Opacus has no per-example gradient of one-bit weights and spiking neurons)")
        elif self.update_dp == "example" and (self.lr_schedule != "constant" or self.mixed_precision):
            raise ValueError("update-dp = 'example' with lr-schedule = 'cosine-restarts' or mixed-precision = true; "
                             "expected lr-schedule = 'constant' and mixed-precision = false (DP-SGD's loop has "
                             "neither)")
        return self

    @property
    def val_subject_ids(self) -> tuple[str, ...]:
        return tuple(v.strip() for v in self.val_subjects.split(",") if v.strip())

    @property
    def test_subject_ids(self) -> tuple[str, ...]:
        return tuple(v.strip() for v in self.test_subjects.split(",") if v.strip())

    @property
    def mixed_datasets(self) -> tuple[str, ...]:
        return tuple(v.strip() for v in self.split_datasets.split(",") if v.strip())

    def for_dataset(self, dataset: str) -> RunConfig:
        """This run as a client of ``dataset`` sees it: that data set's default rate, windows, subjects and its
        folder in ``split-data-paths`` or else its built-in set (a node config ``data-path`` still names one)."""
        if dataset == self.dataset:
            return self
        rates = DATASETS[dataset].sampling_rates
        paths = dict(tuple(p.strip() for p in pair.partition("=")[::2])
                     for pair in self.split_data_paths.split(",") if pair.strip())
        return self.model_copy(update={"dataset": dataset, "sampling_rate": rates[0] if rates else 0,
                                       "data_path": paths.get(dataset, ""),
                                       "val_subjects": "", "test_subjects": "", "window_seconds": 0.0,
                                       "window_step_seconds": 0.0})

    @property
    def he_layer_names(self) -> list[str]:
        return self.he_layers.split(",")

    @field_validator("data_path")
    @classmethod
    def _data_folder(cls, value: str, info: ValidationInfo) -> str:
        if value:
            check_data_folder(info.data.get("dataset", "ptbxl"), value, info.data.get("sampling_rate", 100))
        return value

    @classmethod
    def from_flower(cls, raw: Mapping[str, Any]) -> "RunConfig":
        """Parse Flower's flat run config; raises ConfigError with one readable message."""
        return _parse(cls, raw, "run config")

    def as_flat_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class NodeConfig(BaseModel):
    """What a SuperNode tells its ClientApp: which partition it is and where its files are.

    In simulation Flower sets ``partition-id`` and ``num-partitions``; on a real device the
    operator passes them with ``flower-supernode --node-config``.
    """

    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="ignore", frozen=True)

    partition_id: int = Field(ge=0)
    num_partitions: int = Field(ge=1)
    dataset: str = ""  # this node's data set; empty: the run's
    data_path: str = ""
    key_path: str = ""

    @model_validator(mode="after")
    def _checks(self) -> "NodeConfig":
        if self.dataset and self.dataset not in DATASETS:
            raise ValueError(f"dataset '{self.dataset}' to be one of {', '.join(DATASETS)}")
        if self.partition_id >= self.num_partitions:
            raise ValueError(f"partition-id {self.partition_id} to be < num-partitions {self.num_partitions}")
        if self.key_path and not Path(self.key_path).is_file():
            raise ValueError(f"key-path '{self.key_path}' to be an existing CKKS client key file (client.ctx)")
        if self.data_path and not Path(self.data_path).is_dir():
            raise ValueError(f"data-path '{self.data_path}' to be an existing data folder")
        return self

    @classmethod
    def from_flower(cls, raw: Mapping[str, Any]) -> "NodeConfig":
        return _parse(cls, raw, "node config")

    def dataset_for(self, run: RunConfig) -> str:
        """The data set this node trains on: its node config's, else its turn in ``split-datasets``, else the run's.

        Federated averaging needs the run's own (one input shape); U-shaped split learning lets data sets mix.
        """
        mixed = run.mode == "split" and run.split_variant == "u-shaped"
        if self.dataset and self.dataset != run.dataset and not mixed:
            raise ConfigError(f"node config: key 'dataset' has value '{self.dataset}'; expected the run's dataset "
                              f"'{run.dataset}' (federated averaging needs one model shape) or no dataset key")
        if self.dataset:
            return self.dataset
        return run.mixed_datasets[self.partition_id % len(run.mixed_datasets)] if run.mixed_datasets else run.dataset

    def within_dataset(self, run: RunConfig) -> NodeConfig:
        """Simulated clients taking ``split-datasets`` in turn: this node's partition among those of its data set."""
        if self.dataset or not run.mixed_datasets:
            return self
        turns = len(run.mixed_datasets)
        position = self.partition_id % turns
        count = len(range(position, self.num_partitions, turns))
        return self.model_copy(update={"partition_id": self.partition_id // turns, "num_partitions": count})


def _parse(model: type[BaseModel], raw: Mapping[str, Any], kind: str):
    try:
        return model.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(kind, err, raw)) from None
