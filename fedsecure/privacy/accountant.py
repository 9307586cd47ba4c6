"""Privacy accounting for DP-SGD (Poisson-subsampled Gaussian), from a release history.

The state of a client's accountant *is* the list of (noise multiplier, sample rate,
steps) of its ledger entries, so the ledger and the accountant can never disagree,
across rounds and restarts. RDP and PRV (Opacus's implementations) are available.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedsecure.errors import PrivacyBudgetExceeded

Step = tuple[float, float, int]  # (noise multiplier, sample rate, steps)
ACCOUNTANTS = ("rdp", "prv")
RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS  # the orders Opacus's RDP accountant uses
MAX_NOISE_MULTIPLIER = 10.0  # beyond this DP-SGD learns nothing: refuse instead of training on noise


def epsilon(history: Sequence[Step], *, delta: float, kind: str = "rdp") -> float:
    """ε after every release in ``history`` at ``delta`` (0 for an empty history)."""
    steps = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    if not steps:
        return 0.0
    if kind == "rdp":
        acc = RDPAccountant()
    elif kind == "prv":
        acc = PRVAccountant()
    else:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {kind!r}")
    acc.history = steps
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound is valid, just not the tightest.
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=delta))


def calibrate_noise(history: Sequence[Step], *, sample_rate: float, steps: int, delta: float,
                    target_epsilon: float, kind: str = "rdp", tolerance: float = 1e-3) -> float:
    """The smallest noise multiplier (to ``tolerance``) such that ``history`` plus
    ``steps`` more steps at ``sample_rate`` stays within ``target_epsilon``.

    Raises :class:`PrivacyBudgetExceeded` when even ``MAX_NOISE_MULTIPLIER`` would not.
    """
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ValueError("steps must be >= 1")

    if kind == "rdp":
        # RDP composes by addition: compute the history's RDP curve once, not per candidate.
        past = sum((compute_rdp(q=q, noise_multiplier=s, steps=n, orders=RDP_ORDERS) for s, q, n in history if n > 0),
                   np.zeros(len(RDP_ORDERS)))

        def eps_at(sigma: float) -> float:
            rdp = past + compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps, orders=RDP_ORDERS)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return float(get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)[0])
    else:
        def eps_at(sigma: float) -> float:
            return epsilon([*history, (sigma, sample_rate, steps)], delta=delta, kind=kind)

    if eps_at(MAX_NOISE_MULTIPLIER) > target_epsilon:
        raise PrivacyBudgetExceeded(
            f"{steps} more steps would exceed ε={target_epsilon:g} even at noise multiplier "
            f"{MAX_NOISE_MULTIPLIER:g} (spent so far: ε={epsilon(history, delta=delta, kind=kind):.3f})")
    lo, hi = 0.05, MAX_NOISE_MULTIPLIER
    while hi - lo > tolerance * max(1.0, lo):
        mid = math.sqrt(lo * hi) if hi / lo > 2 else (lo + hi) / 2
        if eps_at(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
