"""Differential privacy of the released validation accuracies (AdeptHEQ-FL, section 3.4).

Two objects:

* :class:`LaplaceAccuracyRelease` -- the client-side Laplace mechanism (paper eq. 12) that turns the
  exact validation accuracy into the privatised value sent to the server.
* :class:`PrivacyAccountant` -- the total privacy loss of T such releases, by basic composition,
  by the advanced composition theorem quoted in the paper (Theorem 1), and by a tight numerical
  privacy-loss-distribution (PLD) accountant from ``dp_accounting``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np


def _check_epsilon(epsilon: float, name: str) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, Real):
        raise ValueError(f"{name} must be a positive finite number, got {epsilon!r}")
    value = float(epsilon)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {epsilon!r}")
    return value


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, Real):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    value = float(delta)
    if not (0.0 < value < 1.0):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    return value


def _check_rounds(rounds: int) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, Integral) or rounds < 0:
        raise ValueError(f"number of rounds must be a non-negative integer, got {rounds!r}")
    return int(rounds)


class LaplaceAccuracyRelease:
    r"""Laplace mechanism releasing one client's validation accuracy (paper eq. 12).

    For a validation set of ``m`` examples of which ``correct`` are classified correctly the exact
    accuracy is :math:`a = \mathrm{correct}/m`. The released value is

    .. math::
        \tilde a = \min\bigl(1, \max(0, a + \zeta)\bigr), \qquad
        \zeta \sim \mathrm{Lap}(0, b), \qquad b = \Delta / \epsilon, \qquad \Delta = 1/m,

    where :math:`\mathrm{Lap}(0, b)` has density :math:`\exp(-|x|/b) / (2b)`.

    Conventions:

    * Neighbouring validation sets differ by replacing one example (``m`` is fixed and public).
      Replacing one example changes ``correct`` by at most 1, hence ``a`` by at most
      :math:`\Delta = 1/m` (the L1 sensitivity).
    * Each call of :meth:`release` is :math:`(\epsilon, 0)`-DP for the validation set. Clipping to
      [0, 1] is post-processing of the noisy value, so it does not weaken the guarantee.
    * Only :math:`\tilde a` leaves the client; the exact accuracy ``a`` is computed and discarded
      inside :meth:`release` and is never returned.
    * Repeated releases over rounds compose; use :class:`PrivacyAccountant` for the total.

    Args:
        epsilon: privacy budget :math:`\epsilon > 0` spent by one release.
    """

    def __init__(self, epsilon: float) -> None:
        self.epsilon = _check_epsilon(epsilon, "epsilon")

    @staticmethod
    def sensitivity(m: int) -> float:
        """L1 sensitivity :math:`\\Delta = 1/m` of the accuracy over ``m`` validation examples."""
        if isinstance(m, bool) or not isinstance(m, Integral) or m < 1:
            raise ValueError(f"validation set size m must be an integer >= 1, got {m!r}")
        return 1.0 / int(m)

    def scale(self, m: int) -> float:
        """Laplace scale :math:`b = \\Delta/\\epsilon = 1/(m\\epsilon)` for ``m`` validation examples."""
        return self.sensitivity(m) / self.epsilon

    def release(self, correct: int, m: int, rng: np.random.Generator) -> float:
        """Return the privatised accuracy :math:`\\mathrm{clip}(correct/m + \\mathrm{Lap}(0, b), 0, 1)`.

        Args:
            correct: number of correctly classified validation examples, ``0 <= correct <= m``.
            m: validation set size, ``m >= 1``.
            rng: source of the Laplace noise (one ``rng.laplace`` draw per call).
        """
        if isinstance(correct, bool) or not isinstance(correct, Integral):
            raise ValueError(f"correct must be an integer, got {correct!r}")
        return self.release_total(int(correct), m, rng)

    def release_total(self, total: float, m: int, rng: np.random.Generator) -> float:
        r""":meth:`release` for the sum of any per-record score in [0, 1] (``common.validation_scores``):
        :math:`\mathrm{clip}(total/m + \mathrm{Lap}(0, b), 0, 1)`, the same sensitivity 1/m."""
        b = self.scale(m)
        if isinstance(total, bool) or not isinstance(total, Real) or not (0 <= total <= m):
            raise ValueError(f"correct (the score total) must satisfy 0 <= correct <= m={m}, got {total!r}")
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        noisy = float(total) / int(m) + float(rng.laplace(0.0, b))
        return min(1.0, max(0.0, noisy))


class PrivacyAccountant:
    r"""Total privacy loss of T rounds of an :math:`(\epsilon, 0)`-DP Laplace release.

    Every round each client releases its accuracy once with :class:`LaplaceAccuracyRelease`
    at budget :math:`\epsilon` (``epsilon_per_round``). The adaptive T-fold composition is
    :math:`(\epsilon_\mathrm{total}, \delta)`-DP with :math:`\epsilon_\mathrm{total}` given by any of:

    * ``basic(T)``: :math:`T\epsilon` (valid with :math:`\delta = 0`, hence for every :math:`\delta`).
    * ``advanced(T, delta)``: the advanced composition theorem (Dwork, Rothblum, Vadhan 2010), as in
      the paper's Theorem 1,
      :math:`\sqrt{2T\ln(1/\delta)}\,\epsilon + T\epsilon(e^\epsilon - 1)`. For k mechanisms that are
      :math:`(\epsilon, \delta_0)`-DP the theorem gives :math:`(\epsilon', k\delta_0 + \delta)`; here
      :math:`\delta_0 = 0`, so the total is :math:`(\epsilon', \delta)`.
    * ``pld(T, delta)``: the tight numerical bound of the privacy loss distribution of the Laplace
      mechanism with noise multiplier :math:`b/\Delta = 1/\epsilon`, self-composed T times
      (``dp_accounting.pld.PLDAccountant``, pessimistic discretisation, so an upper bound).

    All three are valid upper bounds at the same :math:`\delta`, so their minimum (``best``) is too.

    Args:
        epsilon_per_round: :math:`\epsilon` of one release.
        delta: default target :math:`\delta \in (0, 1)` for ``advanced``, ``pld`` and ``report``.
    """

    def __init__(self, epsilon_per_round: float, delta: float) -> None:
        self.epsilon_per_round = _check_epsilon(epsilon_per_round, "epsilon_per_round")
        self.delta = _check_delta(delta)
        self.rounds = 0
        self._pld_cache: dict[tuple[int, float], float] = {}

    def step(self, num_rounds: int = 1) -> None:
        """Record ``num_rounds`` more rounds of releases."""
        self.rounds += _check_rounds(num_rounds)

    def _resolve(self, rounds: int | None, delta: float | None) -> tuple[int, float]:
        rounds = self.rounds if rounds is None else _check_rounds(rounds)
        delta = self.delta if delta is None else _check_delta(delta)
        return rounds, delta

    def basic(self, rounds: int | None = None) -> float:
        """Basic composition :math:`T\\epsilon` (``rounds`` defaults to the rounds stepped so far)."""
        rounds, _ = self._resolve(rounds, None)
        return rounds * self.epsilon_per_round

    def advanced(self, rounds: int | None = None, delta: float | None = None) -> float:
        """Advanced composition :math:`\\sqrt{2T\\ln(1/\\delta)}\\epsilon + T\\epsilon(e^\\epsilon-1)`."""
        rounds, delta = self._resolve(rounds, delta)
        eps = self.epsilon_per_round
        return math.sqrt(2.0 * rounds * math.log(1.0 / delta)) * eps + rounds * eps * math.expm1(eps)

    def pld(self, rounds: int | None = None, delta: float | None = None) -> float:
        """Tight epsilon at ``delta`` of T self-composed Laplace mechanisms (PLD accountant)."""
        rounds, delta = self._resolve(rounds, delta)
        if rounds == 0:
            return 0.0
        key = (rounds, delta)
        if key not in self._pld_cache:
            # Imported lazily: dp_accounting pulls in scipy/attrs machinery clients never need.
            import dp_accounting

            accountant = dp_accounting.pld.PLDAccountant()
            # LaplaceDpEvent.noise_multiplier is the noise scale over the L1 sensitivity: b/Delta = 1/eps.
            event = dp_accounting.LaplaceDpEvent(noise_multiplier=1.0 / self.epsilon_per_round)
            accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
            self._pld_cache[key] = float(accountant.get_epsilon(delta))
        return self._pld_cache[key]

    def report(self, rounds: int | None = None, delta: float | None = None) -> dict[str, float]:
        """All three bounds for T rounds, their minimum ``best`` and the inputs, as plain floats."""
        rounds, delta = self._resolve(rounds, delta)
        basic = self.basic(rounds)
        advanced = self.advanced(rounds, delta)
        pld = self.pld(rounds, delta)
        return {
            "rounds": rounds,
            "epsilon_per_round": self.epsilon_per_round,
            "delta": delta,
            "basic": basic,
            "advanced": advanced,
            "pld": pld,
            "best": min(basic, advanced, pld),
        }
