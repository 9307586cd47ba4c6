"""Property test of the homomorphic running sum (security review, defect 2): after any
sequence of accepted and refused uploads — a chunk mixing scales, corrupt bytes, a
disconnect mid-stream, a refusal after every chunk was added — the running sum equals
the accepted contributions re-added from the object store, bit for bit. And a running
sum that does not (a defect) is caught at close and rebuilt, not presented again."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import tenseal as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsecure.crypto import ckks, signing
from fedsecure.crypto.ckks import CkksParams
from fedsecure.crypto.packing import TensorLayout, encoding_for
from fedsecure.errors import InvalidSubmission
from fedsecure.types import UpdateManifest
from server.secagg.accumulator import HomomorphicAccumulator
from server.rounds.objects import ObjectStore

P = CkksParams(ciphertexts_per_chunk=2)
NUMEL = 3 * P.slots  # two chunks: 2 ciphertexts, then 1
GROUP = "attn.text"
OUTCOMES = ("accept", "mixed_scale", "corrupt", "disconnect", "refused_at_admission")


@dataclass(frozen=True)
class Upload:
    manifest: UpdateManifest
    chunks: tuple[bytes, ...]
    mixed: bytes    # chunk 0 with its second ciphertext at another scale
    corrupt: bytes  # chunk 1, truncated


@dataclass(frozen=True, repr=False)
class Pool:
    secret: ts.Context
    public: bytes
    uploads: tuple[Upload, ...]

    def __repr__(self) -> str:  # hypothesis prints its arguments: keep it short
        return f"Pool({len(self.uploads)} uploads)"


@pytest.fixture(scope="module")
def pool() -> Pool:
    secret = ckks.create_secret_context(P)
    public = ckks.public_context_bytes(secret)
    ctx = ckks.load_public_context(public, P)
    rng = np.random.default_rng(11)
    encoding = str(encoding_for(ckks.context_fingerprint(public), {GROUP: TensorLayout.of({"w": np.zeros(NUMEL)})}))
    uploads = []
    for _ in range(3):
        values = rng.uniform(-0.25, 0.25, NUMEL)
        cts = ckks.encrypt_ciphertexts(ctx, values, P.slots)
        chunks = (ckks.frame(cts[:2]), ckks.frame(cts[2:]))
        odd = ts.ckks_vector(ctx, values[P.slots:2 * P.slots], scale=2.0 ** 26).serialize()
        manifest = UpdateManifest(group="attn", weight=0.25, encoding=encoding,
                                  chunk_sha256=tuple(signing.sha256(c) for c in chunks),
                                  total_bytes=sum(map(len, chunks)))
        uploads.append(Upload(manifest, chunks, ckks.frame([cts[0], odd]), chunks[1][:-7]))  # truncated
    return Pool(secret, public, tuple(uploads))


def _stream(acc: HomomorphicAccumulator, objects: ObjectStore, upload_id: str, up: Upload, outcome: str) -> bool:
    """What the servicer does for one upload; True if it was accepted."""
    session = acc.begin(upload_id=upload_id, run_id="r", round_=1, attempt=1, manifest=up.manifest)
    sent = {"mixed_scale": [up.mixed, up.chunks[1]], "corrupt": [up.chunks[0], up.corrupt],
            "disconnect": [up.chunks[0]]}.get(outcome, list(up.chunks))
    try:
        for i, data in enumerate(sent):
            digest = objects.put(data)
            acc.add_chunk(session, i, data, digest)
        if outcome in ("disconnect", "refused_at_admission"):
            raise ConnectionError(outcome)
    except (InvalidSubmission, ConnectionError):
        acc.rollback(session)
        return False
    acc.complete(session)
    return True


def _readd(secret: ts.Context, objects: ObjectStore, accepted: list[Upload]) -> list[bytes]:
    out = []
    for position in range(P.chunk_count(NUMEL)):
        total = ckks.ChunkSum(secret, P, ckks.ciphertexts_in_chunk(P, NUMEL, position))
        for up in accepted:
            total.add(objects.get(up.manifest.chunk_sha256[position]))
        out.append(total.to_bytes())
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          print_blob=False)
@given(ops=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(OUTCOMES)), min_size=1, max_size=7))
def test_running_sum_equals_the_accepted_contributions(pool, tmp_path_factory, ops) -> None:  # type: ignore[no-untyped-def]
    secret, public, uploads = pool.secret, pool.public, pool.uploads
    objects = ObjectStore(tmp_path_factory.mktemp("objects"))
    acc = HomomorphicAccumulator(public_context=public, params=P, objects=objects)
    accepted: list[tuple[str, Upload]] = []
    for i, (k, outcome) in enumerate(ops):
        if _stream(acc, objects, f"u{i}", uploads[k], outcome):
            accepted.append((f"u{i}", uploads[k]))
        assert (outcome == "accept") == (accepted[-1:] == [(f"u{i}", uploads[k])])
    group = acc._sums[("r", 1, 1, GROUP)]
    assert group.complete == {uid for uid, _ in accepted} and not group.in_flight
    assert all(c.terms == len(accepted) for c in group.chunks)
    if not accepted:
        return
    running = [ckks.canonical_chunk(secret, P, c.to_bytes(), c.count) for c in group.chunks]
    assert running == _readd(secret, objects, [up for _, up in accepted])
    # And it decrypts to the plain sum of what was accepted.
    summed = ckks.decrypt_all(secret, P, [c.to_bytes() for c in group.chunks], NUMEL)
    plain = sum(ckks.decrypt_all(secret, P, up.chunks, NUMEL) for _, up in accepted)
    assert np.max(np.abs(summed - plain)) < 1e-4


def test_a_corrupted_running_sum_is_rebuilt_at_close(pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret, public, uploads = pool.secret, pool.public, pool.uploads
    objects = ObjectStore(tmp_path / "objects")
    acc = HomomorphicAccumulator(public_context=public, params=P, objects=objects)
    for i, up in enumerate(uploads[:2]):
        assert _stream(acc, objects, f"u{i}", up, "accept")
    contributions = [(f"u{i}", up.manifest) for i, up in enumerate(uploads[:2])]
    expected = _readd(secret, objects, list(uploads[:2]))
    assert acc.sum_chunks(run_id="r", round_=1, attempt=1, group=GROUP, contributions=contributions) == expected
    # A defect adds a stray ciphertext chunk into every position without the bookkeeping
    # noticing: the spot check at close catches it whichever position it draws.
    group = acc._sums[("r", 1, 1, GROUP)]
    for position, chunk in enumerate(group.chunks):
        stray = ckks.ChunkSum(chunk.ctx, P, chunk.count)
        vecs = stray.load(uploads[2].chunks[position])
        chunk._vecs = [a + v for a, v in zip(chunk._vecs, vecs, strict=True)]  # terms unchanged
    got = acc.sum_chunks(run_id="r", round_=1, attempt=1, group=GROUP, contributions=contributions)
    assert [ckks.canonical_chunk(secret, P, c, k) for c, k in zip(got, (2, 1), strict=True)] == expected
