"""The client's privacy ledger: append-only JSONL, one signed entry per DP release,
hash-chained so that an edit, truncation, re-ordering or re-signing is detectable.

Entry 0 (genesis) binds the ledger to the client: its certificate, budget and
accountant. Every later entry records the raw mechanism parameters (noise multiplier,
sample rate, steps, delta) so an auditor can recompute ε independently.

Crash rule (documented choice): an entry is written and fsynced *before* the training
it describes starts, so a crash mid-training leaves a conservative charge for a release
that never happened — never a release missing from the ledger. A torn final line (a
crash inside the write itself) was never acknowledged and is dropped on reopen.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cryptography import x509

from fedsecure.crypto import pki, signing
from fedsecure.errors import CertificateError, SignatureError
from fedsecure.kit import Kit
from fedsecure.privacy.accountant import Step
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.types import LedgerHead

DOMAIN_LEDGER = b"fedsecure/v1/ledger-entry"
GENESIS_HASH = "0" * 64
MECHANISM = "poisson_subsampled_gaussian"


class LedgerError(ValueError):
    """A ledger fails verification; the message names the entry (seq and line)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One line of the ledger (seq 0 is the genesis entry, with no release)."""

    seq: int
    prev_sha256: str
    time: float
    client: str
    run_id: str
    round: int
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon_after: float
    epsilon_budget: float
    accountant: str
    data_digest: str
    certificate: str = ""   # PEM, genesis only
    signature: str = ""     # hex DER
    purpose: str = ""       # "" = federated training; "personalise:replace", "personalise:distill"

    def body(self) -> bytes:
        """Canonical JSON of every field but the signature (what is signed). An empty
        ``purpose`` is left out, so entries written before the field existed verify."""
        d = asdict(self)
        d.pop("signature")
        if not d["purpose"]:
            d.pop("purpose")
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    def sha256(self) -> str:
        """This entry's hash (its identity in the chain and in reported heads): over what
        was signed, never over the signature bytes, which are not unique to a statement."""
        return hashlib.sha256(self.body()).hexdigest()

    def step(self) -> Step:
        """The release as an accountant step."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


_TYPES = {"int": int, "float": float, "str": str}
_MAX_INT = 2**63 - 1


def _typed_entry(raw: object, where: str) -> LedgerEntry:
    """One parsed line as a :class:`LedgerEntry`, every field of its declared type.

    Why: a ledger comes from the party it audits; its signature only proves who wrote
    it, not that the values are sane. A string where a number belongs once crashed the
    whole audit and reached the HTML page unescaped (OWASP: validate input, then encode
    output). Fails closed: raises :class:`LedgerError` naming the entry and field."""
    if not isinstance(raw, dict):
        raise LedgerError(f"{where}: malformed: not a JSON object")
    known = {f.name: _TYPES[str(f.type)] for f in fields(LedgerEntry)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise LedgerError(f"{where}: malformed: unknown field(s) {', '.join(map(repr, unknown[:5]))}")
    for name, value in raw.items():
        want = known[name]
        ok = (isinstance(value, str) if want is str
              else isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT if want is int
              else isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
        if not ok:
            raise LedgerError(f"{where}: malformed: field {name!r} must be a "
                              f"{'non-negative integer' if want is int else 'finite number' if want is float else 'string'}")
    try:
        return LedgerEntry(**raw)
    except TypeError as exc:  # a required field missing
        raise LedgerError(f"{where}: malformed: {exc}") from exc


class Ledger:
    """A client's ledger file, opened for appending with the client's kit key."""

    def __init__(self, path: Path, *, kit: Kit, budget: PrivacyBudget, accountant: str = "rdp") -> None:
        self.path, self.kit, self.budget, self.accountant = path, kit, budget, accountant
        path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self.entries = verify_ledger(path, ca_cert=kit.ca_cert) if path.exists() and path.stat().st_size else []
        if not self.entries:
            self._append(self._entry(seq=0, prev=GENESIS_HASH, run_id="", round_=0, step=(0.0, 0.0, 0),
                                     eps=0.0, data_digest="", certificate=pki.cert_pem(kit.cert).decode()))
        genesis = self.entries[0]
        if genesis.client != kit.name:
            raise LedgerError(f"{path}: ledger belongs to {genesis.client}, not {kit.name}")
        if (genesis.epsilon_budget, genesis.delta, genesis.accountant) != (budget.epsilon, budget.delta, accountant):
            raise LedgerError(f"{path}: budget or accountant differs from the ledger's genesis entry "
                              f"(ε={genesis.epsilon_budget}, δ={genesis.delta}, {genesis.accountant}); "
                              "a budget cannot be changed after the fact")

    def _drop_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
                os.fsync(fh.fileno())

    def _entry(self, *, seq: int, prev: str, run_id: str, round_: int, step: Step, eps: float, data_digest: str,
               certificate: str = "", purpose: str = "") -> LedgerEntry:
        unsigned = LedgerEntry(seq=seq, prev_sha256=prev, time=time.time(), client=self.kit.name, run_id=run_id,
                               round=round_, mechanism=MECHANISM, noise_multiplier=step[0], sample_rate=step[1],
                               steps=step[2], delta=self.budget.delta, epsilon_after=eps,
                               epsilon_budget=self.budget.epsilon, accountant=self.accountant,
                               data_digest=data_digest, certificate=certificate, purpose=purpose)
        sig = signing.sign(self.kit.private_key, signing.canonical(DOMAIN_LEDGER, [unsigned.body()]))
        return LedgerEntry(**{**asdict(unsigned), "signature": sig.hex()})

    def _append(self, entry: LedgerEntry) -> None:
        fields = asdict(entry)
        if not fields["purpose"]:
            fields.pop("purpose")  # the line as it was before the field existed
        line = json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)  # one write of one whole line, then fsync: all or (torn) nothing
            fh.flush()
            os.fsync(fh.fileno())
        self.entries.append(entry)

    def history(self) -> list[Step]:
        """Every release so far (the accountant's state)."""
        return [e.step() for e in self.entries[1:]]

    @property
    def epsilon(self) -> float:
        """ε spent so far, as recorded."""
        return self.entries[-1].epsilon_after

    def head(self) -> LedgerHead:
        """What the client reports to the server each round."""
        last = self.entries[-1]
        return LedgerHead(seq=last.seq, entry_sha256=bytes.fromhex(last.sha256()), epsilon=last.epsilon_after,
                          delta=self.budget.delta, epsilon_budget=self.budget.epsilon)

    def record(self, *, run_id: str, round_: int, step: Step, epsilon_after: float, data_digest: str,
               purpose: str = "") -> LedgerEntry:
        """Append one release (before the training it describes starts); ``purpose``
        names a release that is not federated training (personalisation's stages)."""
        if epsilon_after > self.budget.epsilon:
            raise LedgerError("refusing to record a release beyond the budget")
        last = self.entries[-1]
        entry = self._entry(seq=last.seq + 1, prev=last.sha256(), run_id=run_id, round_=round_, step=step,
                            eps=epsilon_after, data_digest=data_digest, purpose=purpose)
        self._append(entry)
        return entry


def verify_ledger(path: Path, *, ca_cert: x509.Certificate) -> list[LedgerEntry]:
    """Parse and verify a ledger: genesis certificate issued by the CA, every signature
    by that certificate, the hash chain and sequence. Raises :class:`LedgerError`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"{path}: unreadable: {exc}") from exc
    if not lines:
        raise LedgerError(f"{path}: empty ledger (no genesis entry)")
    entries: list[LedgerEntry] = []
    public_key = None
    prev = GENESIS_HASH
    for lineno, line in enumerate(lines, start=1):
        where = f"{path}: entry {lineno - 1} (line {lineno})"
        try:
            raw = json.loads(line)
        except (ValueError, RecursionError) as exc:  # bad JSON, 5,000-digit numbers, deep nesting
            raise LedgerError(f"{where}: malformed: not one JSON object per line") from exc
        entry = _typed_entry(raw, where)
        if entry.seq != lineno - 1:
            raise LedgerError(f"{where}: sequence number {entry.seq}, expected {lineno - 1} (re-ordered or cut)")
        if entry.prev_sha256 != prev:
            raise LedgerError(f"{where}: hash chain broken (edited, removed or re-ordered entry before it)")
        if entry.seq == 0:
            try:
                cert = pki.load_certificate(entry.certificate.encode())
                ident = pki.verify_issued_by(cert, ca_cert)
            except CertificateError as exc:
                raise LedgerError(f"{where}: genesis certificate refused: {exc}") from exc
            if ident.name != entry.client:
                raise LedgerError(f"{where}: certificate names {ident.name}, ledger says {entry.client}")
            public_key = cert.public_key()
        elif entry.client != entries[0].client:
            raise LedgerError(f"{where}: entry for client {entry.client} in {entries[0].client}'s ledger")
        try:
            signing.verify(public_key, signing.canonical(DOMAIN_LEDGER, [entry.body()]), bytes.fromhex(entry.signature),
                           what=where)
        except (SignatureError, ValueError) as exc:
            raise LedgerError(f"{where}: signature does not verify with the client's certificate") from exc
        entries.append(entry)
        prev = entry.sha256()
    return entries
