"""What the key holder checks before it decrypts anything. Each check raises
:class:`DecryptionRefused` with the reason (fail closed, docs/design.md §2):
(a) >= quorum distinct clients, each with a CA-issued client certificate that is not on
    the revocation list and signed (canonical low-S signature) an envelope for this run
    and round over a manifest naming this group; no client's contribution to this
    group in this run and round was decrypted before in another aggregate, however it
    is (re-)signed;
(b) the declared total weight is the sum of the signed weights, and at most 1 (the
    bound the CKKS parameters were chosen for);
(c) (after the commit) the re-addition of the challenged chunks matches — done by the
    service as the chunks stream in.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Set
from dataclasses import dataclass

from cryptography import x509

from fedsecure.crypto import pki, signing
from fedsecure.crypto.ckks import CkksParams
from fedsecure.crypto.packing import Section, parse_encoding
from fedsecure.errors import CertificateError, CkksError, DecryptionRefused, SignatureError
from fedsecure.types import DecryptCommit, PayloadKind, Role

from fedsecure.crypto.receipts import aggregate_digest
from keyholder.decryption_log import DecryptionLog

# Float sums of the same weights in another order can differ in the last bits.
WEIGHT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class CheckedCommit:
    """A commit that passed (a) and (b): the group's section and each contribution's offset."""

    commit: DecryptCommit
    section: Section
    chunk_count: int
    offsets: tuple[int, ...]          # per contribution: index of the group's first chunk
    submissions: tuple[str, ...]      # digests of the signed envelopes (hex), commit order
    repeat_of: int | None             # seq of an identical earlier decryption (a retry)


def check_commit(commit: DecryptCommit, *, ca_cert: x509.Certificate, params: CkksParams, context: str,
                 quorum: int, log: DecryptionLog, revoked: Set[str]) -> CheckedCommit:
    """Checks (a) and (b); returns what the re-addition needs."""
    contribs = commit.contributions
    clients = [c.envelope.client_id for c in contribs]
    if len(set(clients)) != len(clients):
        raise DecryptionRefused(f"a contributor appears more than once: {sorted(clients)}")
    if len(contribs) < quorum:
        raise DecryptionRefused(f"{len(contribs)} contributions are fewer than the quorum of {quorum}")
    section: Section | None = None
    offsets, submissions = [], []
    for c in contribs:
        env, m = c.envelope, c.manifest
        who = f"contribution of {env.client_id!r}"
        try:
            cert = pki.load_certificate(c.certificate_pem)
            ident = pki.verify_issued_by(cert, ca_cert)
        except CertificateError as exc:
            raise DecryptionRefused(f"{who}: {exc}") from exc
        if ident.role is not Role.CLIENT or ident.name != env.client_id:
            raise DecryptionRefused(f"{who}: certificate belongs to {ident.role.value}:{ident.name}")
        if ident.name in revoked:
            # A revoked (perhaps stolen) key must not help reach quorum: with one honest
            # client it would expose that client's update (signed revocation list).
            raise DecryptionRefused(f"{who}: client {ident.name} is revoked")
        try:
            signing.verify(cert.public_key(), signing.envelope_bytes(env), env.signature, what="envelope")
        except SignatureError as exc:
            raise DecryptionRefused(f"{who}: unsigned or tampered envelope ({exc})") from exc
        if env.payload_kind is not PayloadKind.UPDATE:
            raise DecryptionRefused(f"{who}: envelope signs a {env.payload_kind.name}, not an update")
        if not hmac.compare_digest(signing.manifest_digest(m), env.payload_sha256):
            raise DecryptionRefused(f"{who}: manifest does not match the signed digest (tampered)")
        if (env.run_id, env.round) != (commit.run_id, commit.round):
            raise DecryptionRefused(f"{who}: signed for run {env.run_id!r} round {env.round}, not "
                                    f"run {commit.run_id!r} round {commit.round}")
        if not (math.isfinite(m.weight) and 0.0 < m.weight <= 1.0):
            raise DecryptionRefused(f"{who}: weight {m.weight} is outside (0, 1]")
        try:
            enc = parse_encoding(m.encoding)
            mine = enc.section(commit.group)
        except CkksError as exc:
            raise DecryptionRefused(f"{who}: {exc}") from exc
        if enc.context != context:
            raise DecryptionRefused(f"{who}: encrypted under another context")
        if len(m.chunk_sha256) != enc.total_chunks(params):
            raise DecryptionRefused(f"{who}: manifest lists the wrong number of chunks")
        if section is not None and mine != section:
            raise DecryptionRefused(f"{who}: layout of group {commit.group} differs from the others'")
        section = mine
        offsets.append(enc.chunk_ranges(params)[commit.group][0])
        submissions.append(signing.envelope_digest(env).hex())
    assert section is not None  # quorum >= 1 and the loop ran
    declared, signed = commit.total_weight, math.fsum(c.manifest.weight for c in contribs)
    if not (math.isfinite(declared) and abs(declared - signed) <= WEIGHT_TOLERANCE):
        raise DecryptionRefused(f"declared total weight {declared} is not the signed weights' sum {signed}")
    if signed > 1.0 + WEIGHT_TOLERANCE:
        raise DecryptionRefused(f"weights sum to {signed} > 1: the sum could overflow the CKKS bound")
    count = params.chunk_count(section.numel)
    if len(commit.aggregate_chunk_sha256) != count:
        raise DecryptionRefused(f"aggregate has {len(commit.aggregate_chunk_sha256)} chunks, the group needs {count}")
    repeat_of = _check_unused(commit, submissions, log)
    return CheckedCommit(commit, section, count, tuple(offsets), tuple(submissions), repeat_of)


def _check_unused(commit: DecryptCommit, submissions: list[str], log: DecryptionLog) -> int | None:
    # A client's contribution to a group is decrypted inside one aggregate only: otherwise
    # two aggregates that differ by one client would reveal that client's update by
    # subtraction. Keyed by (client, run, round, group), what the client signed, so a
    # re-signed or re-sent copy is the same contribution. Exactly the same aggregate again
    # (a retry after a lost answer) reveals nothing new.
    agg = aggregate_digest(commit.aggregate_chunk_sha256)
    repeat_of = None
    for c in commit.contributions:
        earlier = log.used_by(client=c.envelope.client_id, run_id=commit.run_id, round_=commit.round,
                              group=commit.group)
        if earlier is None:
            continue
        same = earlier.submissions == tuple(sorted(submissions)) and earlier.aggregate_sha256 == agg
        if not same:
            raise DecryptionRefused(f"the contribution of {c.envelope.client_id!r} to {commit.group} was already "
                                    f"decrypted in another aggregate (log entry {earlier.seq})")
        repeat_of = earlier.seq
    return repeat_of


def challenge(chunk_count: int, fraction: float) -> tuple[int, ...]:
    """Chunk indices to re-add, drawn with a CSPRNG (the server must not predict them)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError("sample fraction must be in (0, 1]")
    k = max(1, math.ceil(fraction * chunk_count))
    picked = set()
    while len(picked) < min(k, chunk_count):
        picked.add(secrets.randbelow(chunk_count))
    return tuple(sorted(picked))
