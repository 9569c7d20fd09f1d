r"""One accountant for every differentially private mechanism a client takes part in during a run.

Each client's ledger records, round by round, the mechanisms that touched its data:

* the Laplace release of its validation score at :math:`\epsilon_a` (``common.privacy``): a
  ``LaplaceDpEvent`` with noise multiplier :math:`1/\epsilon_a` (scale over the L1 sensitivity);
* example-level DP-SGD (``common.dp_sgd``): ``steps`` Poisson-subsampled Gaussian mechanisms with
  sampling rate :math:`q` and noise multiplier :math:`\sigma`, ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``;
* the client-level Gaussian mechanism on its clipped update (``common.update_noise``), with the round's effective
  noise multiplier :math:`z_r` for adding or removing the client's whole data set (sensitivity :math:`C w_{max}`).
  Gaussian mechanisms compose into one Gaussian mechanism with :math:`z = (\sum_r z_r^{-2})^{-1/2}` (their
  privacy-loss distributions are Gaussian and add; Dong, Roth and Su, "Gaussian differential privacy", 2022,
  Corollary 3.3), so the ledger keeps :math:`\sum_r z_r^{-2}`. The weights, hence :math:`z_r`, are chosen from
  earlier outputs (sample counts, released DP accuracies); the sum is then the privacy odometer of the rounds run,
  not a guarantee fixed in advance, and the weights are taken as public.

``epsilon_by_mechanism(delta)`` gives each mechanism alone at its own unit: ``accuracy_release`` and ``dp_sgd`` for
one record (add/remove), ``client_level`` for the client's whole data set. ``epsilon(delta)`` composes everything
for one record of the client's data, wherever it is (training or validation), with the tight
privacy-loss-distribution accountant of ``dp_accounting`` (pessimistic discretisation, so an upper bound). There
the client-level mechanism enters at :math:`z/2`: with the client present, changing one of its records can move
its clipped update anywhere within a ball of radius :math:`C` around the old one, twice the sensitivity of its
absence. Composing the validation release with the training mechanisms is conservative: a record in only one of
the two sets is covered by that set's mechanisms alone, which ``epsilon_by_mechanism`` gives.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache


@lru_cache(maxsize=256)
def _epsilon(spec: tuple, delta: float) -> float:
    """PLD epsilon at ``delta`` of the mechanisms in ``spec``, a tuple of ("laplace", 1/eps, count),
    ("dp-sgd", q, sigma, steps) and ("gaussian", z); cached, since clients of one run often ran the same ones."""
    if not spec:
        return 0.0
    import dp_accounting  # lazily: only the server's report needs it

    def event(kind, *args):
        if kind == "laplace":
            return dp_accounting.SelfComposedDpEvent(dp_accounting.LaplaceDpEvent(args[0]), args[1])
        if kind == "dp-sgd":
            return dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(args[0], dp_accounting.GaussianDpEvent(args[1])), args[2])
        return dp_accounting.GaussianDpEvent(args[0])

    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent([event(*item) for item in spec]))
    return float(accountant.get_epsilon(delta))


@dataclass
class ClientLedger:
    """The mechanisms one client ran; add with the ``record_*`` methods, read with ``epsilon``."""

    accuracy_releases: Counter = field(default_factory=Counter)  # epsilon per release -> count
    dp_sgd_steps: Counter = field(default_factory=Counter)  # (sample rate, noise multiplier) -> steps
    gaussian_inverse_square: float = 0.0  # sum over rounds of z_r^-2 (client-level mechanism)
    unaccounted_rounds: int = 0  # rounds whose DP-SGD figures never arrived (a dropped reply without them)

    def record_accuracy_release(self, epsilon: float) -> None:
        if not epsilon > 0 or not math.isfinite(epsilon):
            raise ValueError(f"accuracy release epsilon must be a positive finite number, got {epsilon!r}")
        self.accuracy_releases[float(epsilon)] += 1

    def record_dp_sgd(self, sample_rate: float, noise_multiplier: float, steps: int) -> None:
        if not 0 < sample_rate <= 1 or not noise_multiplier > 0 or steps < 0 or int(steps) != steps:
            raise ValueError(f"DP-SGD needs 0 < sample rate <= 1, noise multiplier > 0 and whole steps >= 0; got "
                             f"{sample_rate!r}, {noise_multiplier!r}, {steps!r}")
        self.dp_sgd_steps[(float(sample_rate), float(noise_multiplier))] += int(steps)

    def record_gaussian(self, noise_multiplier: float) -> None:
        if not noise_multiplier > 0 or not math.isfinite(noise_multiplier):
            raise ValueError(f"Gaussian noise multiplier must be a positive finite number, got {noise_multiplier!r}")
        self.gaussian_inverse_square += noise_multiplier ** -2

    def _events(self, record_unit: bool = False) -> dict[str, tuple]:
        """Each mechanism's events as ``_epsilon`` specs; the Laplace noise multiplier is 1/eps (scale over L1
        sensitivity)."""
        releases = tuple(("laplace", 1.0 / eps, count) for eps, count in sorted(self.accuracy_releases.items()))
        dp_sgd = tuple(("dp-sgd", q, sigma, steps) for (q, sigma), steps in sorted(self.dp_sgd_steps.items())
                       if steps > 0)
        z = self.client_level_noise_multiplier()
        gaussian = (("gaussian", z / 2 if record_unit else z),) if z is not None else ()
        return {"accuracy_release": releases, "dp_sgd": dp_sgd, "client_level": gaussian}

    def epsilon_by_mechanism(self, delta: float) -> dict[str, float]:
        """Epsilon at ``delta`` of each mechanism alone, at its own unit (0 for one that did not run)."""
        return {name: _epsilon(events, delta) for name, events in self._events().items()}

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` of every mechanism composed, for one record of the client's data."""
        return _epsilon(sum(self._events(record_unit=True).values(), ()), delta)

    def client_level_noise_multiplier(self) -> float | None:
        """The one Gaussian mechanism the client-level rounds compose into, or None without them."""
        return self.gaussian_inverse_square ** -0.5 if self.gaussian_inverse_square > 0 else None


class PrivacyLedger:
    """Every client's :class:`ClientLedger`, keyed by the client's id, and the run's report."""

    def __init__(self, delta: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        self.delta = float(delta)
        self.clients: dict[str, ClientLedger] = {}

    def client(self, client_id: object) -> ClientLedger:
        return self.clients.setdefault(str(client_id), ClientLedger())

    def report(self) -> dict:
        """Per client: epsilon of each mechanism and composed; in total: the largest over clients (the guarantee
        every client's records have), with the client-level guarantee where that mechanism ran."""
        per_client = {}
        for client_id, ledger in sorted(self.clients.items()):
            per_client[client_id] = {**ledger.epsilon_by_mechanism(self.delta), "composed": ledger.epsilon(self.delta)}
            z = ledger.client_level_noise_multiplier()
            if z is not None:
                per_client[client_id]["client_level_noise_multiplier"] = z
            if ledger.unaccounted_rounds:
                per_client[client_id]["unaccounted_rounds"] = ledger.unaccounted_rounds
        total = {"composed": max((c["composed"] for c in per_client.values()), default=0.0)}
        for name in ("accuracy_release", "dp_sgd", "client_level"):
            total[name] = max((c[name] for c in per_client.values()), default=0.0)
        return {"delta": self.delta, "accountant": "dp_accounting PLD (pessimistic)", "total": total,
                "per_client": per_client}
