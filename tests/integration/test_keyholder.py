"""The key holder's refusals over real gRPC: each decryption it must not do is refused
with FAILED_PRECONDITION and the reason, and nothing is logged for it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
import pytest

from fedsecure.crypto import ckks, signing
from fedsecure.crypto.packing import parse_encoding
from fedsecure.kit import Kit, load_kit
from fedsecure.provision import Provisioned
from fedsecure.types import DecryptCommit, Envelope, PayloadKind, SignedContribution, UpdateManifest
from server.keyholder.service import KeyHolderPolicy, start_keyholder
from server.keyholder_client import KeyHolderClient
from tests.conftest import LoopThread
from tests.helpers import encrypted_update

N = 2048
GROUP = "attn.text"


@dataclasses.dataclass
class Party:
    contribution: SignedContribution
    chunks: tuple[bytes, ...]
    values: np.ndarray


def _party(kit: Kit, value: float, *, run: str = "run-k", round_: int = 1, weight: float = 0.25) -> Party:
    values = np.full(N, value)
    update = encrypted_update(kit, {GROUP: values}, weight)
    manifest = UpdateManifest(group="attn", weight=weight, encoding=update.encoding,
                              chunk_sha256=tuple(signing.sha256(c) for c in update.chunks),
                              total_bytes=sum(map(len, update.chunks)))
    env = Envelope(client_id=kit.name, run_id=run, round=round_, task_id=f"t-{kit.name}", nonce=signing.new_nonce(),
                   timestamp_ms=int(time.time() * 1000), payload_kind=PayloadKind.UPDATE,
                   payload_sha256=signing.manifest_digest(manifest))
    env = dataclasses.replace(env, signature=signing.sign(kit.private_key, signing.envelope_bytes(env)))
    return Party(SignedContribution(env, manifest, kit.cert_pem), update.chunks, values * weight)


def _sum(kit: Kit, chunks: Sequence[bytes]) -> list[bytes]:
    params = ckks.kit_params(kit)
    total = ckks.ChunkSum(ckks.load_public_context(ckks.kit_public_context(kit), params), params, 1)
    for c in chunks:
        total.add(c)
    return [total.to_bytes()]


@pytest.fixture
def keyholder(kits: Provisioned, tmp_path) -> Iterator[tuple[LoopThread, int, object]]:  # type: ignore[no-untyped-def]
    loop = LoopThread()
    running = loop.run(start_keyholder(kit=load_kit(kits.keyholder), state_dir=tmp_path / "kh",
                                       policy=KeyHolderPolicy(quorum=2, sample_fraction=1.0)))
    yield loop, running.port, running
    loop.run(running.stop(grace=0.1))
    loop.close()


def _decrypt(loop: LoopThread, kit: Kit, port: int, parties: Sequence[Party], *, aggregate: list[bytes] | None = None,
             chunk_override: dict[int, bytes] | None = None, **changes: object):  # type: ignore[no-untyped-def]
    """Run one DecryptAggregate as ``kit`` (the server's, unless a test says otherwise)."""
    contribs = tuple(p.contribution for p in parties)
    agg = aggregate if aggregate is not None else _sum(kit, [p.chunks[0] for p in parties])
    commit = DecryptCommit(run_id="run-k", round=1, group=GROUP, contributions=contribs,
                           aggregate_chunk_sha256=tuple(signing.sha256(a) for a in agg),
                           total_weight=sum(c.manifest.weight for c in contribs))
    commit = dataclasses.replace(commit, **changes)  # type: ignore[arg-type]

    def chunk_of(k: int, index: int) -> bytes:
        return (chunk_override or {}).get(k, parties[k].chunks[index])

    async def go():  # type: ignore[no-untyped-def]
        client = KeyHolderClient(kit=kit, address=f"127.0.0.1:{port}")
        try:
            offsets = [parse_encoding(c.manifest.encoding).chunk_ranges(ckks.kit_params(kit))[GROUP][0]
                       for c in commit.contributions]
            return await client.decrypt(commit=commit, offsets=offsets, aggregate=agg, chunk_of=chunk_of)
        finally:
            await client.close()

    return loop.run(go())


def _refused(fn, text: str, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        fn()
    assert err.value.code() is code, err.value.details()
    assert text in (err.value.details() or ""), err.value.details()


def test_keyholder_decrypts_a_quorum_sum_and_refuses_everything_else(kits: Provisioned, keyholder) -> None:  # type: ignore[no-untyped-def]
    loop, port, running = keyholder
    server = load_kit(kits.server)
    a, b, c, d = (_party(load_kit(kits.clients[n]), v) for n, v in zip("abcd", (0.1, -0.4, 0.7, 0.2), strict=True))
    log = running.servicer.log

    _refused(lambda: _decrypt(loop, server, port, [a]), "fewer than the quorum of 2")
    _refused(lambda: _decrypt(loop, server, port, [a, b], aggregate=list(a.chunks)), "re-addition check failed")
    _refused(lambda: _decrypt(loop, server, port, [a, a]), "more than once")
    unsigned = dataclasses.replace(a, contribution=dataclasses.replace(
        a.contribution, envelope=dataclasses.replace(a.contribution.envelope, signature=b"")))
    _refused(lambda: _decrypt(loop, server, port, [unsigned, b]), "unsigned or tampered")
    forged = dataclasses.replace(a, contribution=dataclasses.replace(
        a.contribution, manifest=dataclasses.replace(a.contribution.manifest, weight=0.5)))
    _refused(lambda: _decrypt(loop, server, port, [forged, b]), "manifest does not match")
    _refused(lambda: _decrypt(loop, server, port, [a, b], chunk_override={1: c.chunks[0]}), "does not match the digest")
    other_round = _party(load_kit(kits.clients["c"]), 0.3, round_=2)
    _refused(lambda: _decrypt(loop, server, port, [a, other_round]), "round 2")
    other_run = _party(load_kit(kits.clients["c"]), 0.3, run="run-other")
    _refused(lambda: _decrypt(loop, server, port, [a, other_run]), "run 'run-other'")
    _refused(lambda: _decrypt(loop, server, port, [a, b], total_weight=0.9), "declared total weight")
    stranger = dataclasses.replace(a, contribution=dataclasses.replace(a.contribution,
                                                                       certificate_pem=load_kit(kits.server).cert_pem))
    _refused(lambda: _decrypt(loop, server, port, [stranger, b]), "certificate belongs to server")
    _refused(lambda: _decrypt(loop, load_kit(kits.clients["a"]), port, [a, b]), "may not call",
             grpc.StatusCode.PERMISSION_DENIED)
    assert log.entries == []  # nothing above was decrypted or logged

    result = _decrypt(loop, server, port, [a, b, c])
    # The CKKS bound the parameters are chosen for (fresh asymmetric noise alone reaches ~1e-5).
    assert np.max(np.abs(result.values - (a.values + b.values + c.values))) < 1e-4
    assert result.receipt.log_seq == 0 and len(log.entries) == 1
    # The same aggregate again (a retry after a lost answer) is fine; a new combination
    # reusing a decrypted contribution would reveal it by subtraction and is refused.
    assert _decrypt(loop, server, port, [a, b, c]).receipt.log_seq == 1
    _refused(lambda: _decrypt(loop, server, port, [a, b]), "already decrypted")
    _refused(lambda: _decrypt(loop, server, port, [c, d]), "already decrypted")
    assert log.entries[0].contributors == ("a", "b", "c") and log.entries[0].sampled_chunks == (0,)


def test_sampled_challenge_covers_at_least_one_chunk() -> None:
    from server.keyholder.checks import challenge

    assert challenge(1, 0.01) == (0,)
    picks = {challenge(10, 0.2) for _ in range(50)}
    assert all(len(p) == 2 and all(0 <= i < 10 for i in p) for p in picks) and len(picks) > 1
    assert challenge(7, 1.0) == tuple(range(7))
    with pytest.raises(ValueError):
        challenge(3, 0.0)
