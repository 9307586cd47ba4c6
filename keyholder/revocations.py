"""The key holder's revocation list: the union of every signed list it verified, kept
as JSON lines in its state folder and re-verified at start (a line that does not verify
stops the key holder: fail closed). A contribution signed by a revoked client never
counts toward quorum; a revoked caller is refused at the interceptor."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography import x509

from fedsecure.crypto.revocation import verify_revocations
from fedsecure.errors import KitError
from fedsecure.types import SignedRevocations


class RevocationStore:
    """Append-only, fsynced; ``names`` is the union of the stored lists."""

    def __init__(self, path: Path, *, ca_cert: x509.Certificate) -> None:
        self.path, self.ca_cert = path, ca_cert
        path.parent.mkdir(parents=True, exist_ok=True)
        self.names: set[str] = set()
        if path.exists():
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                try:
                    doc = json.loads(line)
                    rl = SignedRevocations(issued_ms=int(doc["issued_ms"]), names=tuple(doc["names"]),
                                           reason=str(doc["reason"]), signer_certificate=doc["signer"].encode(),
                                           signature=bytes.fromhex(doc["signature"]))
                    self.names.update(verify_revocations(rl, ca_cert=ca_cert))
                except (ValueError, KeyError, TypeError) as exc:  # SignatureError/CertificateError are ValueErrors
                    raise KitError(f"{path}:{lineno}: revocation list does not verify: {exc}") from exc

    def add(self, rl: SignedRevocations) -> tuple[str, ...]:
        """Verify ``rl`` (raises if it does not), record it, return the names it newly revokes."""
        names = verify_revocations(rl, ca_cert=self.ca_cert)
        newly = tuple(n for n in names if n not in self.names)
        if newly:
            line = json.dumps({"issued_ms": rl.issued_ms, "names": list(rl.names), "reason": rl.reason,
                               "signer": rl.signer_certificate.decode(), "signature": rl.signature.hex()},
                              sort_keys=True) + "\n"
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.names.update(newly)
        return newly
