"""What the server tells a client in a message: the named keys of its ``config`` record, read through types.

As Flower's DP wrappers and client mods do, the server decides and the client follows: which layers
to pack and encrypt, which are frozen, whether to release a differentially private validation
accuracy and at which epsilon, which splits to evaluate. A client therefore needs no server code and
does not re-derive those choices from the run config. Every reader validates what it receives and
raises :class:`InstructionError` naming the key, the value and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import ConfigRecord

from common.validation_scores import SCORES

SERVER_ROUND = "server-round"
FROZEN_LAYERS = "frozen-layers"  # layers the client keeps from its node state and does not train or send
ENCRYPTED_LAYERS = "encrypted-layers"  # layers packed into CKKS vectors, in this order
DP_ACCURACY_EPSILON = "dp-accuracy-epsilon"  # > 0: release the Laplace-noised validation accuracy at this epsilon
DP_SCORE, DP_LOSS_CLIP = "dp-score", "dp-loss-clip"  # which per-record score that accuracy is (validation_scores)
UPDATE_DP = "update-dp"  # "none", "example" (DP-SGD) or "client" (clipped update + a share of the noise)
UPDATE_DP_NOISE, UPDATE_DP_CLIP = "update-dp-noise", "update-dp-clip"  # noise multiplier and clipping norm
UPDATE_DP_SHARES = "update-dp-shares"  # client-level: the number of clients the noise is split between
UPDATE_DP_MODES = ("none", "example", "client")
EVALUATE_SPLITS = "evaluate-splits"  # splits the evaluator scores, e.g. ["val", "test"]
SIM_KEY_DIR = "sim-key-dir"  # simulation only: the run folder's key directory
EMPTY = ""  # a ConfigRecord list may not be empty: [""] stands for no names
SPLITS = ("val", "test")


class InstructionError(ValueError):
    """A message from the server did not carry what the client needs; the text names the key."""


def _names(config: ConfigRecord, key: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    value = config.get(key, [EMPTY])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InstructionError(f"message config: key '{key}' has value {value!r}; expected a list of {what}")
    names = tuple(v for v in value if v != EMPTY)
    unknown = [v for v in names if v not in allowed]
    if unknown or len(set(names)) != len(names):
        raise InstructionError(f"message config: key '{key}' has value {list(names)}; expected distinct {what} "
                               f"from {list(allowed)}")
    return names


def _round(config: ConfigRecord) -> int:
    value = config.get(SERVER_ROUND)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InstructionError(f"message config: key '{SERVER_ROUND}' has value {value!r}; expected a round >= 1")
    return value


def _key_dir(config: ConfigRecord) -> str:
    value = config.get(SIM_KEY_DIR, "")
    if not isinstance(value, str):
        raise InstructionError(f"message config: key '{SIM_KEY_DIR}' has value {value!r}; expected a folder path")
    return value


@dataclass(frozen=True)
class TrainInstructions:
    """One train message's orders: the round, frozen and packed layers, the DP release, the key folder."""

    server_round: int
    frozen_layers: tuple[str, ...] = ()
    encrypted_layers: tuple[str, ...] = ()  # packing order (model order)
    dp_accuracy_epsilon: float = 0.0  # 0: no accuracy release
    sim_key_dir: str = ""
    dp_score: str = "exact-match"  # the released validation quality (common.validation_scores)
    dp_loss_clip: float = 1.0
    update_dp: str = "none"  # DP of the sent layers: "example" or "client" (common.dp_sgd, common.update_noise)
    update_dp_noise: float = 0.0
    update_dp_clip: float = 0.0
    update_dp_shares: int = 0

    def to_config(self) -> ConfigRecord:
        return ConfigRecord({SERVER_ROUND: self.server_round, FROZEN_LAYERS: list(self.frozen_layers) or [EMPTY],
                             ENCRYPTED_LAYERS: list(self.encrypted_layers) or [EMPTY],
                             DP_ACCURACY_EPSILON: float(self.dp_accuracy_epsilon), SIM_KEY_DIR: self.sim_key_dir,
                             DP_SCORE: self.dp_score, DP_LOSS_CLIP: float(self.dp_loss_clip),
                             UPDATE_DP: self.update_dp, UPDATE_DP_NOISE: float(self.update_dp_noise),
                             UPDATE_DP_CLIP: float(self.update_dp_clip), UPDATE_DP_SHARES: int(self.update_dp_shares)})

    @classmethod
    def from_config(cls, config: ConfigRecord, layers: Sequence[str]) -> TrainInstructions:
        """Read and check against the client's model ``layers``; a frozen layer is never packed."""
        frozen = _names(config, FROZEN_LAYERS, layers, "layer names")
        packed = _names(config, ENCRYPTED_LAYERS, layers, "layer names")
        if set(frozen) & set(packed):
            raise InstructionError(f"message config: layers {sorted(set(frozen) & set(packed))} are both in "
                                   f"'{FROZEN_LAYERS}' and '{ENCRYPTED_LAYERS}'; expected a frozen layer not to be "
                                   "sent")
        epsilon = config.get(DP_ACCURACY_EPSILON, 0.0)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0:
            raise InstructionError(f"message config: key '{DP_ACCURACY_EPSILON}' has value {epsilon!r}; expected "
                                   "a number >= 0 (0: no accuracy release)")
        score, clip = config.get(DP_SCORE, "exact-match"), config.get(DP_LOSS_CLIP, 1.0)
        if score not in SCORES:
            raise InstructionError(f"message config: key '{DP_SCORE}' has value {score!r}; expected one of "
                                   f"{list(SCORES)}")
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
            raise InstructionError(f"message config: key '{DP_LOSS_CLIP}' has value {clip!r}; expected a number > 0")
        return cls(_round(config), frozen, packed, float(epsilon), _key_dir(config), score, float(clip),
                   *_update_dp(config))


def _update_dp(config: ConfigRecord) -> tuple[str, float, float, int]:
    """The update-DP orders: mode, noise multiplier and clip (> 0 unless the mode is "none"), client-level shares."""
    mode = config.get(UPDATE_DP, "none")
    if mode not in UPDATE_DP_MODES:
        raise InstructionError(f"message config: key '{UPDATE_DP}' has value {mode!r}; expected one of "
                               f"{list(UPDATE_DP_MODES)}")
    if mode == "none":
        return mode, 0.0, 0.0, 0
    values = []
    for key in (UPDATE_DP_NOISE, UPDATE_DP_CLIP):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise InstructionError(f"message config: key '{key}' has value {value!r}; expected a positive finite "
                                   f"number with {UPDATE_DP} = {mode!r}")
        values.append(float(value))
    shares = config.get(UPDATE_DP_SHARES, 0)
    if mode == "client" and (isinstance(shares, bool) or not isinstance(shares, int) or shares < 1):
        raise InstructionError(f"message config: key '{UPDATE_DP_SHARES}' has value {shares!r}; expected the "
                               "number of clients sharing the noise, an integer >= 1")
    return mode, values[0], values[1], int(shares) if mode == "client" else 0


@dataclass(frozen=True)
class EvaluateInstructions:
    """One evaluate message's orders: the round, the splits to score, the key folder."""

    server_round: int
    splits: tuple[str, ...] = ("val",)
    sim_key_dir: str = ""

    def to_config(self) -> ConfigRecord:
        return ConfigRecord({SERVER_ROUND: self.server_round, EVALUATE_SPLITS: list(self.splits),
                             SIM_KEY_DIR: self.sim_key_dir})

    @classmethod
    def from_config(cls, config: ConfigRecord) -> EvaluateInstructions:
        splits = _names(config, EVALUATE_SPLITS, SPLITS, "split names")
        if not splits:
            raise InstructionError(f"message config: key '{EVALUATE_SPLITS}' names no split; expected some of "
                                   f"{list(SPLITS)}")
        return cls(_round(config), splits, _key_dir(config))


def split_report_metrics(split: str, report: dict) -> dict:
    """A split's evaluation report as reply metrics: ``accuracy`` of ``val`` becomes ``val-accuracy``."""
    return {f"{split}-{k.replace('_', '-')}": v if isinstance(v, list) else float(v) for k, v in report.items()}


# An evaluate reply's figures of the global model itself (not of a split), prefixed "model-":
FUSION_ALPHA = "model-fusion-alpha"  # a gated model's alpha, the weight of its quantum path


def metrics_of_split(metrics: dict, split: str) -> dict:
    """The figures of one split in an evaluate reply's metrics, without the split prefix."""
    return {k.removeprefix(f"{split}-"): v for k, v in metrics.items() if k.startswith(f"{split}-")}


# --- split learning (mode = "split") -----------------------------------------------------------
# message actions: Flower routes "<category>.<action>" to the ClientApp function registered for it
SPLIT_STEP = "split_step"  # train: apply the gradients carried (if any), reply with the next activations
SPLIT_READOUTS = "split_readouts"  # query, U-shaped: the head's read-outs; reply with their gradients
SPLIT_WEIGHTS = "split_weights"  # query: reply with the client's pieces at round end, as a federated train reply
SPLIT_ACTIVATIONS = "split_activations"  # query: the evaluator's activations of the splits named
SPLIT_EVALUATE = "split_evaluate"  # evaluate: the head's outputs of those splits; reply with metrics
# records of a split message: one ArrayRecord each, arrays keyed by micro-batch index ("0", "1", ...)
# or, for evaluation, by split name
ACTIVATIONS, LABELS, GRADIENTS = "activations", "labels", "gradients"
READOUTS, READOUT_GRADIENTS, OUTPUTS = "readouts", "readout-gradients", "outputs"
SPLIT_VARIANT, SPLIT_CUT, MICRO_BATCHES, DONE = "split-variant", "split-cut", "micro-batches", "done"
DATASET = "dataset"  # a client's split replies: the data set its pieces belong to
SPLIT_VARIANTS, SPLIT_CUTS = ("plain", "u-shaped"), ("conv2", "conv3", "conv4", "stage3")  # stage3: the green model
LOCAL_VAL = "local-val"  # a client's own validation share: what its DP accuracy is computed on


@dataclass(frozen=True)
class SplitInstructions:
    """A split message's orders: the round, the variant, the cut, micro-batches per message, splits."""

    server_round: int
    variant: str = "plain"
    cut: str = "conv4"
    micro_batches: int = 1
    splits: tuple[str, ...] = ("val",)

    def to_config(self) -> ConfigRecord:
        return ConfigRecord({SERVER_ROUND: self.server_round, SPLIT_VARIANT: self.variant, SPLIT_CUT: self.cut,
                             MICRO_BATCHES: self.micro_batches, EVALUATE_SPLITS: list(self.splits)})

    @classmethod
    def from_config(cls, config: ConfigRecord) -> SplitInstructions:
        variant, cut, micro = config.get(SPLIT_VARIANT), config.get(SPLIT_CUT), config.get(MICRO_BATCHES)
        if variant not in SPLIT_VARIANTS:
            raise InstructionError(f"message config: key '{SPLIT_VARIANT}' has value {variant!r}; expected one of "
                                   f"{list(SPLIT_VARIANTS)}")
        if cut not in SPLIT_CUTS:
            raise InstructionError(f"message config: key '{SPLIT_CUT}' has value {cut!r}; expected one of "
                                   f"{list(SPLIT_CUTS)}")
        if isinstance(micro, bool) or not isinstance(micro, int) or micro < 1:
            raise InstructionError(f"message config: key '{MICRO_BATCHES}' has value {micro!r}; expected an "
                                   "integer >= 1")
        splits = _names(config, EVALUATE_SPLITS, (*SPLITS, LOCAL_VAL), "split names") or ("val",)
        return cls(_round(config), variant, cut, micro, splits)
