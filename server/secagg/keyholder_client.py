"""The server's side of the KeyHolder stream: commit, answer the challenge with the
requested chunks, collect the plaintext sum. Retries only while the key holder cannot
be reached; a refusal is final for that commit (never a weaker fallback)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from fedsecure import serde
from fedsecure.crypto.signing import sha256
from fedsecure.kit import Kit
from fedsecure.proto.v1 import keyholder_pb2, keyholder_pb2_grpc
from fedsecure.transport import chunking
from fedsecure.transport.credentials import channel_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, STREAM_DEADLINE_S, Limits, channel_options
from fedsecure.transport.retry import RETRYABLE, Backoff
from fedsecure.crypto.receipts import verify_receipt
from fedsecure.types import DecryptCommit, DecryptReceipt, TensorChunk

log = logging.getLogger("fedsecure.server.keyholder")

# (contribution position in the commit, chunk index in that contribution) -> chunk bytes
ChunkSource = Callable[[int, int], bytes]


class KeyHolderUnavailable(ConnectionError):
    """The key holder could not be reached within the retry budget; the phase stays closing."""


@dataclass(frozen=True)
class Decrypted:
    """The plaintext sum of one group and the key holder's receipt for it."""

    values: np.ndarray
    receipt: DecryptReceipt


class KeyHolderClient:
    """One mTLS channel to the key holder, presenting the server's certificate."""

    def __init__(self, *, kit: Kit, address: str | None = None, limits: Limits = DEFAULT_LIMITS,
                 backoff: Backoff = Backoff(initial_s=0.5, max_delay_s=5.0, max_elapsed_s=30.0)) -> None:
        self.address = address or kit.keyholder_address
        self.backoff = backoff
        self.ca_cert = kit.ca_cert
        self._channel = grpc.aio.secure_channel(self.address, channel_credentials(kit),
                                                options=channel_options(limits, target_name=kit.keyholder_name))
        self._stub = keyholder_pb2_grpc.KeyHolderStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def decrypt(self, *, commit: DecryptCommit, offsets: Sequence[int], aggregate: Sequence[bytes],
                      chunk_of: ChunkSource) -> Decrypted:
        """Decrypt one aggregate; retries with backoff while the key holder is unreachable."""
        for delay in [*self.backoff.delays(), None]:
            try:
                return await self._once(commit, offsets, aggregate, chunk_of)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise  # a refusal: the reason is in the status details
                if delay is None:
                    raise KeyHolderUnavailable(f"key holder at {self.address} unreachable: {exc.details()}") from exc
                log.warning("key holder unreachable (%s); retrying in %.1fs", exc.code().name, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _once(self, commit: DecryptCommit, offsets: Sequence[int], aggregate: Sequence[bytes],
                    chunk_of: ChunkSource) -> Decrypted:
        call = self._stub.DecryptAggregate(timeout=STREAM_DEADLINE_S)
        try:
            return await self._exchange(call, commit, offsets, aggregate, chunk_of)
        except grpc.aio.AioRpcError as exc:
            # A refusal ends the call while we are still writing; the write then fails with
            # a transport error. Surface the key holder's own status and reason instead.
            code = await call.code()
            if code is grpc.StatusCode.OK or code == exc.code():
                raise
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details=await call.details()) from exc

    async def _exchange(self, call, commit: DecryptCommit, offsets: Sequence[int],  # type: ignore[no-untyped-def]
                        aggregate: Sequence[bytes], chunk_of: ChunkSource) -> Decrypted:
        await call.write(keyholder_pb2.DecryptRequest(commit=serde.commit_to_proto(commit)))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("part") != "challenge":
            raise ValueError("key holder did not answer the commit with a challenge")
        picked = set(first.challenge.indices)
        for j, data in enumerate(aggregate):
            if j in picked:
                for k, c in enumerate(commit.contributions):
                    index = offsets[k] + j
                    part = await asyncio.to_thread(chunk_of, k, index)
                    chunk = TensorChunk(name=commit.group, dtype="bytes", shape=(), index=index, data=part,
                                        sha256=sha256(part))
                    await call.write(keyholder_pb2.DecryptRequest(contribution_chunk=keyholder_pb2.ContributionChunk(
                        client_id=c.envelope.client_id, chunk=serde.chunk_to_proto(chunk))))
            agg = TensorChunk(name=commit.group, dtype="bytes", shape=(), index=j, data=data, sha256=sha256(data))
            await call.write(keyholder_pb2.DecryptRequest(aggregate_chunk=serde.chunk_to_proto(agg)))
        await call.done_writing()
        parts: list[bytes] = []
        receipt = None
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                break
            which = msg.WhichOneof("part")
            if which == "plaintext_chunk" and receipt is None:
                chunk = serde.chunk_from_proto(msg.plaintext_chunk)
                chunking.check_chunk(chunk, expected_index=len(parts))
                parts.append(chunk.data)
            elif which == "receipt" and receipt is None:
                receipt = serde.receipt_from_proto(msg.receipt)
            else:
                raise ValueError(f"unexpected {which} from the key holder")
        if receipt is None:
            raise ValueError("key holder stream ended without a receipt")
        plaintext = b"".join(parts)
        # Fail closed before anything is published: the plaintext must be the one a
        # CA-certified key holder logged for exactly this commit (fedsecure.crypto.receipts).
        verify_receipt(receipt, ca_cert=self.ca_cert, run_id=commit.run_id, round_=commit.round, group=commit.group,
                       contributors=[c.envelope.client_id for c in commit.contributions],
                       aggregate_chunk_sha256=commit.aggregate_chunk_sha256, plaintext=plaintext)
        return Decrypted(np.frombuffer(plaintext, dtype="<f8").copy(), receipt)
