"""The key holder's own append-only decryption log: one JSON line per decryption,
hash-chained and signed with the key holder's kit key, so an auditor (or the consortium)
can check what was decrypted, from whose contributions, and that no line was edited,
dropped or re-ordered. It is also the key holder's memory of which contributions were
already used (a client's contribution to a group is decrypted in one aggregate only)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509

from fedsecure.crypto import pki, signing
from fedsecure.crypto.receipts import decryption_statement, entry_json
from fedsecure.kit import Kit
from fedsecure.types import DecryptReceipt

GENESIS = "0" * 64


class DecryptionLogError(ValueError):
    """The decryption log fails verification; the message names the line."""


@dataclass(frozen=True)
class DecryptionEntry:
    """One decryption: what, from whom, which chunks were re-added, and what came out."""

    seq: int
    prev_sha256: str
    time: float
    run_id: str
    round: int
    group: str
    contributors: tuple[str, ...]
    submissions: tuple[str, ...]      # digests (hex) of what each contribution's signer signed, sorted
    total_weight: float
    aggregate_sha256: str             # over the aggregate's chunk digests
    sampled_chunks: tuple[int, ...]
    plaintext_sha256: str

    def body(self) -> bytes:
        """Canonical bytes the signature covers."""
        return decryption_statement(self.json())

    def json(self) -> str:
        """The entry's canonical JSON (what a receipt carries for the server to check)."""
        return entry_json({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()})

    def sha256(self) -> str:
        """This entry's hash (the next entry's ``prev_sha256``)."""
        return hashlib.sha256(self.body()).hexdigest()



class DecryptionLog:
    """Append-only, fsynced; reopened and verified at start."""

    def __init__(self, path: Path, *, kit: Kit) -> None:
        self.path, self.kit = path, kit
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries = verify_decryption_log(path, cert=kit.cert) if path.exists() else []
        self._first_use: dict[tuple[str, str, int, str], DecryptionEntry] = {}
        for entry in self.entries:
            self._index(entry)

    def _index(self, entry: DecryptionEntry) -> None:
        for client in entry.contributors:
            self._first_use.setdefault((client, entry.run_id, entry.round, entry.group), entry)

    def used_by(self, *, client: str, run_id: str, round_: int, group: str) -> DecryptionEntry | None:
        """The earlier decryption of ``group`` in this run and round that counted a
        contribution of ``client``, if any. Keyed by what the client signed (who, run,
        round, group), never by signature bytes, so re-signing cannot make a used
        contribution look new."""
        return self._first_use.get((client, run_id, round_, group))

    def append(self, *, run_id: str, round_: int, group: str, contributors: Sequence[str],
               submissions: Sequence[str], total_weight: float, aggregate_sha256: str,
               sampled_chunks: Sequence[int], plaintext_sha256: str) -> DecryptReceipt:
        """Record a decryption (fsynced before the plaintext is released)."""
        prev = self.entries[-1].sha256() if self.entries else GENESIS
        entry = DecryptionEntry(seq=len(self.entries), prev_sha256=prev, time=time.time(), run_id=run_id,
                                round=round_, group=group, contributors=tuple(contributors),
                                submissions=tuple(sorted(submissions)), total_weight=total_weight,
                                aggregate_sha256=aggregate_sha256, sampled_chunks=tuple(sampled_chunks),
                                plaintext_sha256=plaintext_sha256)
        sig = signing.sign(self.kit.private_key, entry.body())
        line = json.dumps({"entry": asdict(entry), "signature": sig.hex()}, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.entries.append(entry)
        self._index(entry)
        return DecryptReceipt(log_seq=entry.seq, log_entry_sha256=bytes.fromhex(entry.sha256()), signature=sig,
                              entry_json=entry.json(), keyholder_certificate=pki.cert_pem(self.kit.cert))


def verify_decryption_log(path: Path, *, cert: x509.Certificate) -> list[DecryptionEntry]:
    """Verify every line's signature and the hash chain; raise :class:`DecryptionLogError`."""
    pki.identity_of(cert)  # must be a fedsecure certificate
    entries: list[DecryptionEntry] = []
    prev = GENESIS
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            doc = json.loads(line)
            raw = doc["entry"]
            entry = DecryptionEntry(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
            signing.verify(cert.public_key(), entry.body(), bytes.fromhex(doc["signature"]), what="log entry")
        except (ValueError, KeyError, TypeError) as exc:  # SignatureError is a ValueError
            raise DecryptionLogError(f"{path}:{lineno}: {exc}") from exc
        if entry.seq != len(entries) or entry.prev_sha256 != prev:
            raise DecryptionLogError(f"{path}:{lineno}: hash chain broken (edited, dropped or re-ordered entry)")
        entries.append(entry)
        prev = entry.sha256()
    return entries
