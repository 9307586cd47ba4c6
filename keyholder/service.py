"""The KeyHolder gRPC service and how to start it. Only the server role may ask for a
decryption, only the admin (or the server relaying the admin's signed list) may add
revocations (the interceptor enforces both); everything else is
:mod:`keyholder.checks`. The secret key comes from the key holder's own key
folder (:mod:`keyholder.keys`), never from a kit.

Stream protocol of ``DecryptAggregate`` (one aggregate per call):
  server -> commit;                   key holder -> challenge (chunk indices)
  server -> for each aggregate chunk j in order: if j was challenged, every
            contribution's chunk j (commit order), then the aggregate chunk j
  key holder -> the plaintext sum in chunks (float64 LE), then a signed receipt.
Memory stays one model's worth: challenged chunks are re-added as they arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from fedsecure import serde
from fedsecure.crypto import ckks
from fedsecure.crypto.ckks import ChunkSum, CkksParams
from fedsecure.errors import CkksError, DecryptionRefused
from fedsecure.kit import Kit
from fedsecure.state_version import claim_state_dir
from fedsecure.proto.v1 import keyholder_pb2, keyholder_pb2_grpc
from fedsecure.transport import chunking
from fedsecure.transport.auth import AuthInterceptor
from fedsecure.transport.credentials import server_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, Limits, server_options
from fedsecure.types import Role, TensorChunk

from keyholder.checks import CheckedCommit, challenge, check_commit
from fedsecure.crypto.receipts import aggregate_digest
from keyholder.decryption_log import DecryptionLog
from keyholder.keys import load_secret
from keyholder.revocations import RevocationStore
from fedsecure.transport.status_codes import domain_errors

log = logging.getLogger("fedsecure.keyholder")

SERVICE_ROLES = {
    "fedsecure.v1.KeyHolder": frozenset({Role.SERVER}),
    # The list's own signature is what counts; the server may relay the admin's list.
    "fedsecure.v1.KeyHolder/Revoke": frozenset({Role.ADMIN, Role.SERVER}),
}
PLAINTEXT_DTYPE = "float64"
PLAINTEXT_VALUES_PER_CHUNK = 65536


@dataclass(frozen=True)
class KeyHolderPolicy:
    """The key holder's own rules, independent of what the server's run says."""

    quorum: int = 2
    sample_fraction: float = 1.0   # 1.0: re-add every chunk (the secure default)

    def __post_init__(self) -> None:
        if self.quorum < 2:
            raise ValueError("the key holder's quorum must be at least 2 (one client's update is never an aggregate)")
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ValueError("sample_fraction must be in (0, 1]")


class KeyHolderServicer(keyholder_pb2_grpc.KeyHolderServicer):
    """Verifies, re-adds, decrypts, logs."""

    def __init__(self, *, kit: Kit, keys_dir: Path, state_dir: Path, policy: KeyHolderPolicy) -> None:
        self.kit, self.policy = kit, policy
        self.params: CkksParams = ckks.kit_params(kit)
        claim_state_dir(state_dir, role=Role.KEYHOLDER)
        self.secret = load_secret(keys_dir=keys_dir, kit=kit)
        self.context = ckks.context_fingerprint(ckks.kit_public_context(kit))
        self.log = DecryptionLog(state_dir / "decryptions.jsonl", kit=kit)
        self.revocations = RevocationStore(state_dir / "revocations.jsonl", ca_cert=kit.ca_cert)
        self._lock = asyncio.Lock()  # one decryption at a time: the used-contribution check is then race-free

    @domain_errors
    async def DecryptAggregate(self, request_iterator, context) -> AsyncIterator[keyholder_pb2.DecryptResponse]:  # type: ignore[no-untyped-def, override]
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != "commit":
            raise DecryptionRefused("a decryption starts with the server's commit")
        commit = serde.commit_from_proto(first.commit)
        async with self._lock:
            checked = check_commit(commit, ca_cert=self.kit.ca_cert, params=self.params, context=self.context,
                                   quorum=self.policy.quorum, log=self.log, revoked=self.revocations.names)
            picked = challenge(checked.chunk_count, self.policy.sample_fraction)
            yield keyholder_pb2.DecryptResponse(challenge=keyholder_pb2.ChunkChallenge(indices=list(picked)))
            try:
                plain = await self._verify_and_decrypt(checked, set(picked), requests)
            except DecryptionRefused:
                # Read what the server still sends (bounded by the protocol) before refusing, so
                # the refusal reaches it as our status, not as a failed write on its side.
                await self._drain(requests, checked.chunk_count + len(picked) * len(commit.contributions))
                raise
            data = plain.astype("<f8").tobytes()
            receipt = self.log.append(
                run_id=commit.run_id, round_=commit.round, group=commit.group,
                contributors=[c.envelope.client_id for c in commit.contributions], submissions=checked.submissions,
                total_weight=commit.total_weight, aggregate_sha256=aggregate_digest(commit.aggregate_chunk_sha256),
                sampled_chunks=picked, plaintext_sha256=hashlib.sha256(data).hexdigest())
        log.info("decrypted %s/%d/%s from %d contributors (re-added chunks %s)%s", commit.run_id, commit.round,
                 commit.group, len(commit.contributions), list(picked),
                 f", repeat of entry {checked.repeat_of}" if checked.repeat_of is not None else "")
        step = PLAINTEXT_VALUES_PER_CHUNK * 8
        for index, chunk in enumerate(chunking.split(data, name=commit.group, chunk_bytes=step, dtype=PLAINTEXT_DTYPE)):
            yield keyholder_pb2.DecryptResponse(plaintext_chunk=serde.chunk_to_proto(chunk))
        yield keyholder_pb2.DecryptResponse(receipt=serde.receipt_to_proto(receipt))

    @domain_errors
    async def Revoke(self, request, context):  # type: ignore[no-untyped-def]
        rl = serde.revocations_from_proto(request)
        async with self._lock:  # never while a commit is being checked
            newly = self.revocations.add(rl)
        if newly:
            log.warning("revoked %s (list issued %d by %s)", list(newly), rl.issued_ms,
                        "an admin" if rl.signer_certificate else "the CA")
        return keyholder_pb2.RevokeResponse(newly_revoked=list(newly), revoked_total=len(self.revocations.names))

    async def _verify_and_decrypt(self, checked: CheckedCommit, picked: set[int],
                                  requests: AsyncIterator[keyholder_pb2.DecryptRequest]) -> np.ndarray:
        commit, params = checked.commit, self.params
        out: list[np.ndarray] = []
        for j in range(checked.chunk_count):
            count = ckks.ciphertexts_in_chunk(params, checked.section.numel, j)
            readd = ChunkSum(self.secret, params, count) if j in picked else None
            if readd is not None:
                for k, c in enumerate(commit.contributions):
                    part = await self._next(requests, "contribution_chunk")
                    got = serde.chunk_from_proto(part.contribution_chunk.chunk)
                    if part.contribution_chunk.client_id != c.envelope.client_id:
                        raise DecryptionRefused(f"chunk {j}: expected {c.envelope.client_id}'s chunk")
                    index = checked.offsets[k] + j
                    self._check_digest(got, index, c.manifest.chunk_sha256[index], f"{c.envelope.client_id}'s chunk")
                    await asyncio.to_thread(self._add, readd, got.data, j)
            agg = serde.chunk_from_proto((await self._next(requests, "aggregate_chunk")).aggregate_chunk)
            self._check_digest(agg, j, commit.aggregate_chunk_sha256[j], "aggregate chunk")
            out.append(await asyncio.to_thread(self._decrypt, readd, agg.data, count, j))
        if await anext(requests, None) is not None:
            raise DecryptionRefused("the server sent more than the protocol allows")
        return np.concatenate(out)[:checked.section.numel]

    @staticmethod
    async def _drain(requests: AsyncIterator[keyholder_pb2.DecryptRequest], limit: int) -> None:
        for _ in range(limit + 1):
            if await anext(requests, None) is None:
                return

    @staticmethod
    async def _next(requests: AsyncIterator[keyholder_pb2.DecryptRequest], part: str) -> keyholder_pb2.DecryptRequest:
        msg = await anext(requests, None)
        if msg is None or msg.WhichOneof("part") != part:
            raise DecryptionRefused(f"expected a {part}, the stream {'ended' if msg is None else 'sent something else'}")
        return msg

    @staticmethod
    def _check_digest(chunk: TensorChunk, index: int, expected: bytes, what: str) -> None:
        if chunk.index != index or not hmac.compare_digest(hashlib.sha256(chunk.data).digest(), expected):
            raise DecryptionRefused(f"{what} {index} does not match the digest it was committed under")

    def _add(self, readd: ChunkSum, data: bytes, j: int) -> None:
        try:
            readd.add(data)
        except CkksError as exc:
            raise DecryptionRefused(f"chunk {j}: a contribution's ciphertext is unusable: {exc}") from exc

    def _decrypt(self, readd: ChunkSum | None, data: bytes, count: int, j: int) -> np.ndarray:
        try:
            if readd is not None and readd.to_bytes() != ckks.canonical_chunk(self.secret, self.params, data, count):
                # The sum the server presents is not the sum of the signed contributions.
                raise DecryptionRefused(f"re-addition check failed at chunk {j}: the aggregate is not the sum "
                                        "of the committed contributions")
            return ckks.decrypt_chunk(self.secret, self.params, data, count)
        except CkksError as exc:
            raise DecryptionRefused(f"aggregate chunk {j} is unusable: {exc}") from exc


@dataclass
class RunningKeyHolder:
    """A started key holder: its port and how to stop it."""

    port: int
    server: grpc.aio.Server
    servicer: KeyHolderServicer

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving."""
        await self.server.stop(grace)


async def start_keyholder(*, kit: Kit, keys_dir: Path, address: str = "127.0.0.1:0", state_dir: Path,
                          policy: KeyHolderPolicy = KeyHolderPolicy(), limits: Limits = DEFAULT_LIMITS,
                          ) -> RunningKeyHolder:
    """Start the key holder on ``address`` (mTLS; the server asks for decryptions, the
    admin adds revocations) with the secret key from ``keys_dir``."""
    if kit.role is not Role.KEYHOLDER:
        raise ValueError(f"the key holder needs a keyholder kit, got a {kit.role.value} kit")
    servicer = KeyHolderServicer(kit=kit, keys_dir=keys_dir, state_dir=state_dir, policy=policy)
    names = servicer.revocations.names  # the live set: a revocation applies to the next call
    interceptor = AuthInterceptor(ca_cert=kit.ca_cert, service_roles=SERVICE_ROLES,
                                  is_revoked=lambda ident: ident.name in names)
    server = grpc.aio.server(interceptors=[interceptor], options=server_options(limits))
    keyholder_pb2_grpc.add_KeyHolderServicer_to_server(servicer, server)
    port = server.add_secure_port(address, server_credentials(kit))
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    log.info("key holder %s listening on port %d (mTLS, server role only)", kit.name, port)
    return RunningKeyHolder(port, server, servicer)
