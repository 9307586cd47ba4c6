"""The auditor's independent check of privacy ledgers.

For each ledger: verify the genesis certificate against the consortium CA, every
signature, the hash chain; recompute ε after every release from the raw mechanism
parameters with an accountant *independent of the one used in training* (Google's
``dp-accounting``: RDP for RDP-trained ledgers, PLD for PRV-trained ones; without it,
the other Opacus accountant, and the report says so); check the budget; and cross-check
the ledger heads the server recorded, so a rolled-back, forked or edited ledger fails.
Every violation is a reason string; a ledger passes only with none.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from fedsecure.privacy import accountant as opacus_accountant
from fedsecure.privacy.accountant import Step
from fedsecure.privacy.ledger import LedgerEntry, LedgerError, verify_ledger
from fedsecure.types import LedgerHead

TOLERANCE = 0.01  # the ledger may not under-report ε by more than 1% of the recomputation
OPACUS_RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@dataclass(frozen=True)
class Release:
    """One audited release: the ledger's ε and the independent recomputation."""

    seq: int
    run_id: str
    round: int
    epsilon_ledger: float
    epsilon_recomputed: float


@dataclass
class LedgerAudit:
    """The verdict on one ledger."""

    path: str
    client: str = ""
    accountant: str = ""
    independent_accountant: str = ""
    epsilon_budget: float = 0.0
    delta: float = 0.0
    releases: list[Release] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True only when no violation was found."""
        return not self.violations

    @property
    def epsilon(self) -> float:
        """ε spent as recorded (0 if no release)."""
        return self.releases[-1].epsilon_ledger if self.releases else 0.0


class IndependentAccountant:
    """An accountant other than the training one, composed one release at a time."""

    def __init__(self, *, delta: float, trained_with: str) -> None:
        self.delta = delta
        self.history: list[Step] = []
        try:
            import dp_accounting
            from dp_accounting import pld, rdp
        except ImportError:
            self._dp = None
            self.other = "prv" if trained_with == "rdp" else "rdp"
            self.name = f"opacus-{self.other} (dp-accounting absent)"
            return
        self._dp = dp_accounting
        # dp-accounting logs (via absl) each fractional order whose series does not converge
        # and drops it; dropping orders only loosens its bound, so the check stays sound.
        logging.getLogger("absl").setLevel(logging.ERROR)
        if trained_with == "rdp":
            self._acc: dp_accounting.PrivacyAccountant = rdp.RdpAccountant(orders=OPACUS_RDP_ORDERS)
            self.name = "dp-accounting-rdp"
        else:
            self._acc = pld.PLDAccountant()
            self.name = "dp-accounting-pld"

    def compose(self, step: Step) -> float:
        """Add one release; return ε after everything composed so far."""
        sigma, q, steps = step
        self.history.append(step)
        if self._dp is None:
            return opacus_accountant.epsilon(self.history, delta=self.delta, kind=self.other)
        self._acc.compose(self._dp.PoissonSampledDpEvent(q, self._dp.GaussianDpEvent(sigma)), int(steps))
        return float(self._acc.get_epsilon(self.delta))


def audit_ledger(path: Path, *, ca_cert: x509.Certificate,
                 server_heads: Mapping[str, Sequence[LedgerHead]] | None = None) -> LedgerAudit:
    """Audit one ledger file (never raises for a bad ledger: reports violations).

    ``server_heads``: the server's export of the heads each client reported
    (:mod:`fedsecure.privacy.heads_export`), to catch rollback and forks."""
    report = LedgerAudit(path=str(path))
    try:
        _audit_into(report, path, ca_cert=ca_cert, server_heads=server_heads)
    except LedgerError as exc:
        report.violations.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unforeseen: this ledger FAILs,
        # the others in the same command are still audited (never a traceback with no verdicts).
        report.violations.append(f"{path}: could not be audited ({type(exc).__name__}): treated as a violation")
    return report


def _audit_into(report: LedgerAudit, path: Path, *, ca_cert: x509.Certificate,
                server_heads: Mapping[str, Sequence[LedgerHead]] | None) -> None:
    entries = verify_ledger(path, ca_cert=ca_cert)
    genesis = entries[0]
    report.client, report.accountant = genesis.client, genesis.accountant
    report.epsilon_budget, report.delta = genesis.epsilon_budget, genesis.delta
    _check_releases(report, entries)
    if server_heads is not None:
        _check_heads(report, entries, server_heads.get(report.client, []))
    else:
        report.notes.append("no server heads given: rollback and forks not cross-checked")


def _check_releases(report: LedgerAudit, entries: list[LedgerEntry]) -> None:
    genesis = entries[0]
    accountant = IndependentAccountant(delta=genesis.delta, trained_with=genesis.accountant)
    report.independent_accountant = accountant.name
    for e in entries[1:]:
        if (e.delta, e.epsilon_budget, e.accountant, e.mechanism) != (genesis.delta, genesis.epsilon_budget,
                                                                      genesis.accountant, genesis.mechanism):
            report.violations.append(f"entry {e.seq}: budget, delta or accountant differs from the genesis entry")
        if not (e.noise_multiplier > 0 and 0 < e.sample_rate <= 1 and e.steps > 0):
            report.violations.append(f"entry {e.seq}: invalid mechanism parameters")
            continue
        eps, name = accountant.compose(e.step()), accountant.name
        report.releases.append(Release(e.seq, e.run_id, e.round, e.epsilon_after, eps))
        if e.epsilon_after < eps * (1 - TOLERANCE):
            report.violations.append(f"entry {e.seq}: ledger ε {e.epsilon_after:.4f} under-reports the "
                                     f"recomputed ε {eps:.4f} ({name})")
        if eps > genesis.epsilon_budget * (1 + TOLERANCE):
            report.violations.append(f"entry {e.seq}: recomputed ε {eps:.4f} exceeds the budget "
                                     f"{genesis.epsilon_budget}")
        if e.epsilon_after > genesis.epsilon_budget:
            report.violations.append(f"entry {e.seq}: ledger ε {e.epsilon_after:.4f} exceeds the budget")


def _check_heads(report: LedgerAudit, entries: list[LedgerEntry], heads: Sequence[LedgerHead]) -> None:
    if not heads:
        report.notes.append("the server recorded no head for this client")
    by_seq = {e.seq: e for e in entries}
    for seq, digest, eps in ((h.seq, h.entry_sha256, h.epsilon) for h in heads):
        entry = by_seq.get(seq)
        if entry is None:
            report.violations.append(f"server saw head seq {seq} but the ledger ends at seq {entries[-1].seq}: "
                                     "rolled back or truncated")
        elif bytes.fromhex(entry.sha256()) != digest:
            report.violations.append(f"entry {seq}: differs from the head the server recorded (forked or edited)")
        elif abs(entry.epsilon_after - eps) > 1e-12:
            report.violations.append(f"entry {seq}: ε differs from the head the server recorded")
