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
from keyholder.service import KeyHolderPolicy, start_keyholder
from server.secagg.keyholder_client import KeyHolderClient
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
def keyholder(kits: Provisioned, keyholder_keys, tmp_path) -> Iterator[tuple[LoopThread, int, object]]:  # type: ignore[no-untyped-def]
    loop = LoopThread()
    running = loop.run(start_keyholder(kit=load_kit(kits.keyholder), keys_dir=keyholder_keys, state_dir=tmp_path / "kh",
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
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            fn()
        # The interceptor may refuse while the aio client is still sending its request: the
        # client then reports INTERNAL "Failed execute_batch" instead of the refusal (seen
        # once in a fresh-clone run). That is the transport racing, not an acceptance: ask again.
        if not (err.value.code() is grpc.StatusCode.INTERNAL and "execute_batch" in (err.value.debug_error_string() or "")):
            break
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
    from keyholder.checks import challenge

    assert challenge(1, 0.01) == (0,)
    picks = {challenge(10, 0.2) for _ in range(50)}
    assert all(len(p) == 2 and all(0 <= i < 10 for i in p) for p in picks) and len(picks) > 1
    assert challenge(7, 1.0) == tuple(range(7))
    with pytest.raises(ValueError):
        challenge(3, 0.0)


def _high_s_twin(signature: bytes) -> bytes:
    """The other valid ECDSA signature of the same statement: (r, n - s)."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    r, s = decode_dss_signature(signature)
    return encode_dss_signature(r, signing.P256_ORDER - s)


def _with_envelope(p: Party, **changes: object) -> Party:
    env = dataclasses.replace(p.contribution.envelope, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(p, contribution=dataclasses.replace(p.contribution, envelope=env))


def test_resigned_subset_after_the_full_set_is_refused(kits: Provisioned, keyholder) -> None:  # type: ignore[no-untyped-def]
    """Defect 1 of the security review: after {a, b, c} was decrypted, {a, b} presented
    again under other valid signatures must not decrypt (c = (a+b+c) - (a+b))."""
    loop, port, running = keyholder
    server = load_kit(kits.server)
    kit_a, kit_b = load_kit(kits.clients["a"]), load_kit(kits.clients["b"])
    a, b, c = (_party(load_kit(kits.clients[n]), v) for n, v in zip("abc", (0.1, -0.4, 0.7), strict=True))
    log = running.servicer.log
    _decrypt(loop, server, port, [a, b, c])
    assert len(log.entries) == 1

    # (r, n - s): verifies under plain ECDSA, refused here as non-canonical.
    twins = [_with_envelope(p, signature=_high_s_twin(p.contribution.envelope.signature)) for p in (a, b)]
    _refused(lambda: _decrypt(loop, server, port, twins), "canonical low-S")
    # Fresh, canonical signatures of the very same statements (ECDSA is randomised).
    fresh = [_with_envelope(p, signature=signing.sign(k.private_key, signing.envelope_bytes(p.contribution.envelope)))
             for p, k in ((a, kit_a), (b, kit_b))]
    assert fresh[0].contribution.envelope.signature != a.contribution.envelope.signature
    _refused(lambda: _decrypt(loop, server, port, fresh), "already decrypted")
    # New envelopes (new nonce) over the same ciphertexts, validly signed by the clients.
    renewed = []
    for p, k in ((a, kit_a), (b, kit_b)):
        env = dataclasses.replace(p.contribution.envelope, nonce=signing.new_nonce(), signature=b"")
        renewed.append(_with_envelope(p, nonce=env.nonce,
                                      signature=signing.sign(k.private_key, signing.envelope_bytes(env))))
    _refused(lambda: _decrypt(loop, server, port, renewed), "already decrypted")
    assert len(log.entries) == 1  # nothing of the above was decrypted or logged


def test_revoked_client_never_counts_toward_quorum(kits: Provisioned, keyholder_keys, keyholder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Defect 4: the key holder enforces an admin-signed revocation list of its own."""
    from fedsecure.admin_client import KeyHolderAdminClient
    from fedsecure.crypto.revocation import sign_revocations
    from fedsecure.proto.v1 import keyholder_pb2_grpc
    from fedsecure import serde
    from fedsecure.transport.credentials import channel_credentials
    from fedsecure.transport.limits import DEFAULT_LIMITS, channel_options

    loop, port, running = keyholder
    server = load_kit(kits.server)
    admin = load_kit(kits.admin)
    a, b, c = (_party(load_kit(kits.clients[n]), v) for n, v in zip("abc", (0.1, -0.4, 0.7), strict=True))
    with KeyHolderAdminClient(kit=admin, address=f"127.0.0.1:{port}") as kh:
        assert kh.revoke(["c"], "key stolen") == (("c",), 1)
        assert kh.revoke(["c"]) == ((), 1)  # idempotent
    _refused(lambda: _decrypt(loop, server, port, [a, c]), "client c is revoked")
    assert running.servicer.log.entries == []

    # Lists the key holder must not accept: signed by a client, or altered after signing.
    client_kit = load_kit(kits.clients["a"])
    by_client = sign_revocations(names=["b"], private_key=client_kit.private_key, signer_pem=client_kit.cert_pem)
    altered = dataclasses.replace(sign_revocations(names=["b"], private_key=admin.private_key,
                                                   signer_pem=admin.cert_pem), names=("a", "b"))
    channel = grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(server),
                                  options=channel_options(DEFAULT_LIMITS, target_name=server.keyholder_name))
    stub = keyholder_pb2_grpc.KeyHolderStub(channel)  # the server may relay lists, not forge them
    for rl, text in ((by_client, "signed by an admin"), (altered, "does not verify")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Revoke(serde.revocations_to_proto(rl), timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and text in err.value.details()
    channel.close()
    assert running.servicer.revocations.names == {"c"}
    assert _decrypt(loop, server, port, [a, b]).receipt.log_seq == 0

    # A restarted key holder still knows (its list is re-verified from its state).
    again = loop.run(start_keyholder(kit=load_kit(kits.keyholder), keys_dir=keyholder_keys,
                                     state_dir=running.servicer.log.path.parent, policy=KeyHolderPolicy()))
    try:
        assert again.servicer.revocations.names == {"c"}
        d = _party(load_kit(kits.clients["d"]), 0.2)
        _refused(lambda: _decrypt(loop, server, again.port, [c, d]), "client c is revoked")
    finally:
        loop.run(again.stop(grace=0.1))
