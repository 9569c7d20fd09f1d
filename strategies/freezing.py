"""Layer-wise adaptive freezing of AdeptHEQ-FL (paper section 3.5, eqs. 15-17)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any

import numpy as np

from common.layer_change import rms_change


class EMALayerFreezer:
    r"""Freeze layers whose exponential moving average of per-round change falls below a threshold.

    The server calls :meth:`observe` once per round with the current global parameters of each
    layer (one array per layer: the flattened, concatenated parameters of that layer).

    Score (paper eq. 15, normalised per parameter): for a layer with :math:`n_l` parameters,

    .. math::
        s_l^{(t)} = \frac{\lVert \theta_l^{(t)} - \theta_l^{(t-1)} \rVert_2}{\sqrt{n_l}},

    the root-mean-square change of one parameter. The paper uses the raw L2 norm; that grows like
    :math:`\sqrt{n_l}` for the same per-parameter change, so one absolute threshold would freeze
    small layers long before large ones. Dividing by :math:`\sqrt{n_l}` makes layers of different
    sizes comparable against the single threshold ``thr``.

    EMA (paper eq. 16, where :math:`\alpha` weighs the history):

    .. math::
        \bar s_l^{(1)} = s_l^{(1)}, \qquad
        \bar s_l^{(t)} = \alpha \bar s_l^{(t-1)} + (1 - \alpha) s_l^{(t)},

    where :math:`s_l^{(1)}` is the first observed change (second call of :meth:`observe`; the first
    call only stores the reference parameters). Starting from the first observed value rather than
    from a constant such as 1.0 matters: from 1.0 with :math:`\alpha = 0.9` the EMA needs 66
    rounds to fall below 1e-3 even when the layer stops changing completely.

    Freezing (paper eq. 17): layer l is frozen as soon as :math:`\bar s_l^{(t)} <` ``threshold``
    (strictly), including on its first observed change. A frozen layer stays frozen for the rest of
    training: it is no longer trained or transmitted, so no new observation of it exists. Layers in
    ``never_freeze`` (the quantum layers) are tracked but never frozen, whatever their score.

    Args:
        alpha: EMA history weight, ``0 <= alpha < 1`` (paper: 0.9).
        threshold: freezing threshold on the EMA, finite and ``>= 0`` (paper: 1e-3; 0 disables
            freezing).
        never_freeze: names of layers that must never be frozen.
    """

    def __init__(self, alpha: float = 0.9, threshold: float = 1e-3, never_freeze: Iterable[str] = ()) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not (0.0 <= alpha < 1.0):
            raise ValueError(f"alpha must be a number with 0 <= alpha < 1, got {alpha!r}")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, Real)
            or not math.isfinite(threshold)
            or threshold < 0.0
        ):
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
        if isinstance(never_freeze, str):
            raise ValueError(f"never_freeze must be an iterable of layer names, not the string {never_freeze!r}")
        names = list(never_freeze)
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"never_freeze must contain layer names (str), got {name!r}")
        self.alpha = float(alpha)
        self.threshold = float(threshold)
        self.never_freeze: frozenset[str] = frozenset(names)
        self._reference: dict[str, np.ndarray] = {}
        self._ema: dict[str, float] = {}
        self._scores: dict[str, float] = {}
        self._frozen: set[str] = set()

    @property
    def frozen(self) -> frozenset[str]:
        """Layers frozen so far."""
        return frozenset(self._frozen)

    @property
    def ema(self) -> dict[str, float]:
        """Current EMA :math:`\\bar s_l` per layer (layers with at least one observed change)."""
        return dict(self._ema)

    @property
    def scores(self) -> dict[str, float]:
        """Last per-parameter RMS change :math:`s_l` per layer."""
        return dict(self._scores)

    @property
    def layers(self) -> tuple[str, ...]:
        """Layer names fixed by the first call of :meth:`observe` (empty before it)."""
        return tuple(self._reference)

    def observe(self, layers: Mapping[str, np.ndarray]) -> set[str]:
        """Take this round's global parameters per layer; return the layers frozen by this round.

        The first call fixes the set of layers and stores the reference parameters. Later calls
        must contain every layer that is not frozen, with the same shape; frozen layers may be
        present (and are then ignored) or absent.
        """
        if not isinstance(layers, Mapping) or len(layers) == 0:
            raise ValueError(f"layers must be a non-empty mapping of layer name to array, got {type(layers).__name__}")
        arrays: dict[str, np.ndarray] = {}
        for name, value in layers.items():
            if not isinstance(name, str):
                raise ValueError(f"layer names must be str, got {name!r}")
            array = np.array(value, dtype=np.float64, copy=True)
            if array.size == 0:
                raise ValueError(f"layer {name!r} has no parameters")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"layer {name!r} contains non-finite values")
            arrays[name] = array

        if not self._reference:
            self._reference = arrays
            return set()

        unknown = sorted(set(arrays) - set(self._reference))
        if unknown:
            raise ValueError(f"unknown layers {unknown}; expected a subset of {sorted(self._reference)}")
        missing = sorted(set(self._reference) - set(arrays) - self._frozen)
        if missing:
            raise ValueError(f"missing non-frozen layers {missing}")
        for name, array in arrays.items():
            expected = self._reference[name].shape
            if array.shape != expected:
                raise ValueError(f"layer {name!r} changed shape from {expected} to {array.shape}")

        newly_frozen: set[str] = set()
        for name, array in arrays.items():
            if name in self._frozen:
                continue
            score = rms_change(array, self._reference[name])
            self._reference[name] = array
            if self._update(name, score):
                newly_frozen.add(name)
        return newly_frozen

    def observe_scores(self, scores: Mapping[str, float]) -> set[str]:
        """Take RMS-change scores computed elsewhere; return the layers frozen by them.

        For layers the caller cannot see (homomorphically encrypted ones): the client that
        decrypts the aggregate computes s_l with the same formula and reports only s_l.
        """
        newly_frozen: set[str] = set()
        for name, score in scores.items():
            if not isinstance(name, str) or name in self._reference:
                raise ValueError(f"score for {name!r}: layers observed by parameters cannot also get scores")
            if isinstance(score, bool) or not isinstance(score, Real) or not math.isfinite(score) or score < 0:
                raise ValueError(f"score for layer {name!r} is {score!r}; expected a finite number >= 0")
            if name not in self._frozen and self._update(name, float(score)):
                newly_frozen.add(name)
        return newly_frozen

    def _update(self, name: str, score: float) -> bool:
        """EMA step for one layer; True when the layer freezes now."""
        previous = self._ema.get(name)
        ema = score if previous is None else self.alpha * previous + (1.0 - self.alpha) * score
        self._scores[name] = score
        self._ema[name] = ema
        if ema < self.threshold and name not in self.never_freeze:
            self._frozen.add(name)
            return True
        return False

    def state_dict(self, include_reference: bool = True) -> dict[str, Any]:
        """Plain-JSON state (floats, strings, lists).

        With ``include_reference=False`` the (possibly large) reference parameters are left out: the
        result is a per-round summary for logging that :meth:`load_state_dict` refuses.
        """
        state: dict[str, Any] = {
            "alpha": self.alpha,
            "threshold": self.threshold,
            "never_freeze": sorted(self.never_freeze),
            "frozen": sorted(self._frozen),
            "ema": {name: float(v) for name, v in sorted(self._ema.items())},
            "scores": {name: float(v) for name, v in sorted(self._scores.items())},
        }
        if include_reference:
            state["reference"] = {
                name: {"shape": list(array.shape), "values": array.ravel().tolist()}
                for name, array in self._reference.items()
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (with reference); validates every field."""
        required = ("alpha", "threshold", "never_freeze", "frozen", "ema", "scores", "reference")
        for key in required:
            if key not in state:
                raise ValueError(f"freezer state lacks {key!r} (was it saved with include_reference=False?)")
        restored = EMALayerFreezer(state["alpha"], state["threshold"], state["never_freeze"])
        reference: dict[str, np.ndarray] = {}
        for name, entry in state["reference"].items():
            if not isinstance(entry, Mapping) or "shape" not in entry or "values" not in entry:
                raise ValueError(f"reference of layer {name!r} must have 'shape' and 'values', got {entry!r}")
            values = np.asarray(entry["values"], dtype=np.float64)
            shape = tuple(int(d) for d in entry["shape"])
            if values.ndim != 1 or values.size != math.prod(shape) or values.size == 0:
                raise ValueError(f"reference of layer {name!r}: {values.size} values do not fill shape {shape}")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"reference of layer {name!r} contains non-finite values")
            reference[str(name)] = values.reshape(shape)
        for key in ("ema", "scores"):
            for name, value in state[key].items():
                if name not in reference:
                    raise ValueError(f"{key} names layer {name!r} which has no reference")
                if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
                    raise ValueError(f"{key}[{name!r}] must be a finite number >= 0, got {value!r}")
        frozen = set(state["frozen"])
        for name in frozen:
            if name not in reference or name in restored.never_freeze:
                raise ValueError(f"frozen layer {name!r} is unknown or listed in never_freeze")
        restored._reference = reference
        restored._ema = {str(k): float(v) for k, v in state["ema"].items()}
        restored._scores = {str(k): float(v) for k, v in state["scores"].items()}
        restored._frozen = frozen
        self.__dict__.update(restored.__dict__)
