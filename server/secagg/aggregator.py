"""Closing a TRAIN phase with encrypted updates: per group, the homomorphic sum of the
accepted contributions goes to the key holder, and the plaintext *mean* (sum divided by
the signed weights' total) is published for clients to download (docs/design.md §4).

Groups with fewer contributors than the quorum are not decrypted at all (the clients
keep their local adapters for that group): an aggregate of fewer is never formed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from fedsecure import serde
from fedsecure.crypto.packing import parse_encoding, plain_encoding
from fedsecure.crypto.signing import sha256
from fedsecure.crypto import ckks
from fedsecure.kit import Kit
from fedsecure.state_version import claim_state_dir
from fedsecure.transport.limits import DEFAULT_LIMITS, Limits
from fedsecure.transport.retry import Backoff
from fedsecure.types import DecryptCommit, PayloadKind, Role, SignedContribution

from server.secagg.accumulator import HomomorphicAccumulator
from server.secagg.keyholder_client import KeyHolderClient
from server.rounds.objects import ObjectStore
from server.rounds.phases import PhaseContext
from server.rounds.store import Store, SubmissionRow
from server.secagg.garbage import GarbageReport, collect_garbage

log = logging.getLogger("fedsecure.server.aggregation")


class SecureAggregator:
    """Turns a round's accepted encrypted updates into published plaintext means."""

    def __init__(self, *, accumulator: HomomorphicAccumulator, objects: ObjectStore, keyholder: KeyHolderClient,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.accumulator, self.objects, self.keyholder, self.limits = accumulator, objects, keyholder, limits

    @classmethod
    def open(cls, *, kit: Kit, state_dir: Path, keyholder_address: str | None = None,
             keyholder_backoff: Backoff | None = None, limits: Limits = DEFAULT_LIMITS,
             object_store_bytes: int | None = None) -> SecureAggregator:
        """The server's aggregator over its object store (``state_dir/objects``, at most
        ``object_store_bytes``; None: no limit but the disk's), with a channel to the key
        holder (call from the server's event loop)."""
        claim_state_dir(state_dir, role=Role.SERVER)  # before anything is written there
        objects = ObjectStore(state_dir / "objects", max_bytes=object_store_bytes)
        accumulator = HomomorphicAccumulator(public_context=ckks.kit_public_context(kit), params=ckks.kit_params(kit),
                                             objects=objects)
        keyholder = KeyHolderClient(kit=kit, address=keyholder_address, limits=limits,
                                    **({"backoff": keyholder_backoff} if keyholder_backoff else {}))
        return cls(accumulator=accumulator, objects=objects, keyholder=keyholder, limits=limits)

    async def close(self) -> None:
        """Close the key holder channel."""
        await self.keyholder.close()

    @staticmethod
    def updates(accepted: Sequence[SubmissionRow]) -> list[tuple[str, SignedContribution]]:
        """(submission id, signed contribution) of each accepted encrypted update."""
        return [(s.submission_id, serde.stored_update(s.payload)) for s in accepted
                if s.payload_kind == int(PayloadKind.UPDATE)]

    async def aggregate(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> dict[str, int]:
        """Publish every group's mean; returns group -> contributors. Idempotent."""
        # Older rounds' garbage first: the aggregates about to be published need the space.
        await self.collect_garbage(ctx.store)
        members_of: dict[str, list[tuple[str, SignedContribution]]] = {}
        revoked = ctx.store.clients.revoked_names()
        for sid, c in self.updates(accepted):
            if c.envelope.client_id in revoked:
                # Revoked after its upload was accepted (a stolen key?): it never counts
                # toward an aggregate; the key holder would refuse the sum anyway.
                log.warning("%s round %d: leaving out the contribution of revoked client %s", ctx.run_id, ctx.round,
                            c.envelope.client_id)
                continue
            for section in parse_encoding(c.manifest.encoding).sections:
                members_of.setdefault(section.name, []).append((sid, c))
        quorum = max(2, ctx.config.quorum)
        published: dict[str, int] = {}
        for group, members in sorted(members_of.items()):
            if len(members) < quorum:
                log.warning("%s round %d: group %s has %d contributors < quorum %d; not aggregated", ctx.run_id,
                            ctx.round, group, len(members), quorum)
                continue
            if ctx.store.submissions.aggregate(ctx.run_id, ctx.round, group) is None:
                await self._one(ctx, group, members)
            published[group] = len(members)
        self.accumulator.drop(ctx.run_id, ctx.round)
        return published

    async def collect_garbage(self, store: Store) -> GarbageReport:
        """Free the object store of what no round can use any more (off the event loop)."""
        return await asyncio.to_thread(collect_garbage, store=store, objects=self.objects)

    async def _one(self, ctx: PhaseContext, group: str, members: list[tuple[str, SignedContribution]]) -> None:
        sums = await asyncio.to_thread(self.accumulator.sum_chunks, run_id=ctx.run_id, round_=ctx.round,
                                       attempt=ctx.attempt, group=group,
                                       contributions=[(sid, c.manifest) for sid, c in members])
        contribs = tuple(c for _, c in members)
        total_weight = math.fsum(c.manifest.weight for c in contribs)
        commit = DecryptCommit(run_id=ctx.run_id, round=ctx.round, group=group, contributions=contribs,
                               aggregate_chunk_sha256=tuple(sha256(s) for s in sums), total_weight=total_weight)
        encodings = [parse_encoding(c.manifest.encoding) for c in contribs]
        offsets = [e.chunk_ranges(self.accumulator.params)[group][0] for e in encodings]

        def chunk_of(k: int, index: int) -> bytes:
            return self.objects.get(contribs[k].manifest.chunk_sha256[index])

        try:
            result = await self.keyholder.decrypt(commit=commit, offsets=offsets, aggregate=sums, chunk_of=chunk_of)
        except grpc.aio.AioRpcError:
            # Refused (or unreachable): never present the same running sum again; the next
            # closing attempt rebuilds it from the object store (the accepted contributions).
            self.accumulator.discard(ctx.run_id, ctx.round, ctx.attempt, group)
            raise
        section = encodings[0].section(group)
        if result.values.size != section.numel or not np.all(np.isfinite(result.values)):
            raise ValueError(f"key holder returned {result.values.size} values for a {section.numel}-value group")
        mean = (result.values / total_weight).astype("<f4").tobytes()
        step = self.limits.max_chunk_bytes // 4 * 4
        digests = [await asyncio.to_thread(self.objects.put, mean[i:i + step]) for i in range(0, len(mean), step)]
        ctx.store.submissions.publish_aggregate(run_id=ctx.run_id, round_=ctx.round, group=group,
                                    encoding=plain_encoding(section.layout, section.numel), chunk_digests=digests,
                                    contributors=len(contribs))
        log.info("%s round %d: published %s, mean of %d contributions (key holder log entry %d)", ctx.run_id,
                 ctx.round, group, len(contribs), result.receipt.log_seq)
