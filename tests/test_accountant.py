"""Known answers for the accountant; calibration; refusal before overspending."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsecure.errors import PrivacyBudgetExceeded
from fedsecure.privacy.accountant import MAX_NOISE_MULTIPLIER, calibrate_noise, epsilon


def _gaussian_rdp_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Hand-derived: without subsampling (q = 1) the Gaussian mechanism's RDP at order a
    is a / (2 sigma^2) per step (Mironov 2017, Prop. 7); composition adds; conversion as
    in Balle et al. 2020 (Thm. 21), minimised over Opacus's default orders."""
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), dtype=float)
    rdp = steps * orders / (2 * sigma**2)
    eps = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    return float(np.min(eps))


@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (2.0, 10), (5.0, 100)])
def test_rdp_known_answer_without_subsampling(sigma: float, steps: int) -> None:
    expected = _gaussian_rdp_epsilon(sigma, steps, 1e-5)
    assert epsilon([(sigma, 1.0, steps)], delta=1e-5, kind="rdp") == pytest.approx(expected, rel=1e-9)


def test_subsampling_amplifies_and_composition_adds() -> None:
    full = epsilon([(1.0, 1.0, 100)], delta=1e-5)
    sub = epsilon([(1.0, 0.01, 100)], delta=1e-5)
    assert sub < full / 10
    split = epsilon([(1.0, 0.01, 40), (1.0, 0.01, 60)], delta=1e-5)
    assert split == pytest.approx(sub, rel=1e-12)  # same steps, however they are grouped
    assert epsilon([], delta=1e-5) == 0.0


def test_prv_is_tighter_than_rdp_but_close() -> None:
    history = [(1.0, 0.01, 1000)]
    rdp, prv = epsilon(history, delta=1e-5, kind="rdp"), epsilon(history, delta=1e-5, kind="prv")
    assert prv < rdp < 1.3 * prv
    with pytest.raises(ValueError):
        epsilon(history, delta=1e-5, kind="nope")


def test_independent_dp_accounting_agrees() -> None:
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting import rdp as dprdp

    acc = dprdp.RdpAccountant(orders=[1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0)), 1000)
    assert epsilon([(1.0, 0.01, 1000)], delta=1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=0.01)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_calibration_hits_the_target_from_below(kind: str) -> None:
    history = [(1.2, 0.02, 50)]
    sigma = calibrate_noise(history, sample_rate=0.02, steps=200, delta=1e-5, target_epsilon=6.0, kind=kind)
    assert epsilon([*history, (sigma, 0.02, 200)], delta=1e-5, kind=kind) <= 6.0
    assert epsilon([*history, (sigma * 0.97, 0.02, 200)], delta=1e-5, kind=kind) > 6.0 * 0.99


def test_refuses_when_budget_is_spent() -> None:
    spent = [(0.5, 0.05, 5000)]
    assert epsilon(spent, delta=1e-5) > 8
    with pytest.raises(PrivacyBudgetExceeded, match="exceed"):
        calibrate_noise(spent, sample_rate=0.05, steps=10, delta=1e-5, target_epsilon=8.0)
    assert math.isfinite(MAX_NOISE_MULTIPLIER)


@pytest.mark.parametrize("blocked", [False, True])
def test_audit_accountant_is_independent_and_falls_back(blocked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from fedsecure.privacy.audit import IndependentAccountant

    if blocked:  # as if dp-accounting were not installed
        monkeypatch.setitem(sys.modules, "dp_accounting", None)
    acc = IndependentAccountant(delta=1e-5, trained_with="rdp")
    first = acc.compose((1.0, 0.01, 400))
    both = acc.compose((1.0, 0.01, 600))
    assert ("absent" in acc.name) is blocked and "opacus-rdp" not in acc.name  # never the training accountant
    assert first < both
    reference = epsilon([(1.0, 0.01, 1000)], delta=1e-5, kind="rdp")
    assert both == pytest.approx(reference, rel=0.01 if not blocked else 0.3)
