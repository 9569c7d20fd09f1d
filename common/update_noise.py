r"""Client-level differential privacy of the aggregated update, with the noise added by the clients (distributed).

Round r, n clients told to take part (``shares``). Client i holds the global layers :math:`\theta` it received and
its trained layers :math:`\theta_i`; it sends, in plaintext or encrypted alike,

.. math::
    \theta + \tilde\Delta_i, \qquad
    \tilde\Delta_i = \Delta_i \min\bigl(1, C / \lVert\Delta_i\rVert_2\bigr) + \xi_i, \qquad
    \xi_i \sim \mathcal N\bigl(0, \sigma^2 C^2 / n \, I\bigr), \qquad \Delta_i = \theta_i - \theta,

where the norm is over every layer the client sends this round (flat clipping, McMahan et al., "Learning
differentially private recurrent language models", ICLR 2018; the clip is Flower's own ``clip_inputs_inplace``,
the one its ``fixedclipping_mod`` uses). The server's weighted sum :math:`\sum_i w_i(\theta + \tilde\Delta_i)`
with weights summing to 1 then carries Gaussian noise of standard deviation
:math:`\sigma C \sqrt{\sum_i w_i^2 / n}` over the valid replies, while adding or removing one client's data (the
weights held fixed) moves the sum by at most :math:`C \max_i w_i`. The effective noise multiplier of the round is

.. math:: z = \sigma \sqrt{\textstyle\sum_i w_i^2 / n} \,/\, \max_i w_i \qquad (\text{uniform } w_i = 1/n: z = \sigma).

Changing one record of a client that takes part moves its clipped update by up to :math:`2C`, so for one record
the multiplier is :math:`z/2` (``common.privacy_ledger`` counts it so). Conventions and limits: the weights are
taken as public (sample counts are sent in clear); the guarantee is for the aggregate (what the other clients and anyone who sees the
model get). It assumes every client adds its share: a client that skips it lowers everyone's noise. A single
reply carries only :math:`\sigma/\sqrt n` of noise relative to its own clip, so against a server that sees a
client's plaintext layers the protection is that weaker multiplier; layers under CKKS are seen only as the sum.
Noise is drawn from OS entropy, never from the run seed.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from flwr.supercore.differential_privacy import clip_inputs_inplace, get_norm


class DistributedGaussianUpdate:
    """Clip one client's update to ``clip`` and add its 1/``shares`` part of ``N(0, (noise_multiplier clip)^2)``."""

    def __init__(self, noise_multiplier: float, clip: float, shares: int) -> None:
        for name, value in (("noise multiplier", noise_multiplier), ("clip", clip)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(f"client-level DP: {name} must be a positive finite number, got {value!r}")
        if isinstance(shares, bool) or not isinstance(shares, int) or shares < 1:
            raise ValueError(f"client-level DP: shares must be an integer >= 1, got {shares!r}")
        self.noise_multiplier, self.clip, self.shares = float(noise_multiplier), float(clip), shares

    @property
    def share_std(self) -> float:
        """Standard deviation of one client's noise per coordinate: sigma C / sqrt(n)."""
        return self.noise_multiplier * self.clip / math.sqrt(self.shares)

    def privatise(self, trained: "OrderedDict[str, np.ndarray]", global_layers: "OrderedDict[str, np.ndarray]",
                  rng: np.random.Generator) -> tuple["OrderedDict[str, np.ndarray]", float]:
        """(theta + clipped update + noise share, the update's L2 norm before clipping), name by name."""
        if list(trained) != list(global_layers):
            raise ValueError(f"client-level DP: trained parameters {list(trained)} differ from the global ones "
                             f"{list(global_layers)}")
        update = [trained[n].astype(np.float64) - global_layers[n].astype(np.float64) for n in trained]
        norm = get_norm(update)
        if norm > 0:
            clip_inputs_inplace(update, self.clip)
        noisy = OrderedDict()
        for (name, base), delta in zip(global_layers.items(), update):
            noise = rng.normal(0.0, self.share_std, size=delta.shape)
            noisy[name] = (base.astype(np.float64) + delta + noise).astype(trained[name].dtype)
        return noisy, norm

    @staticmethod
    def effective_noise_multiplier(weights: np.ndarray, noise_multiplier: float, shares: int) -> float:
        """z = sigma sqrt(sum w^2 / n) / max w for the aggregation weights of the valid replies."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"aggregation weights must be non-negative and sum to 1, got {w.tolist()}")
        return float(noise_multiplier * math.sqrt(float(np.sum(w ** 2)) / shares) / w.max())
