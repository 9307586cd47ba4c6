"""Known-answer and fault tests for the CKKS pipeline (contexts, packing, chunks, sums)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsecure.crypto import ckks
from fedsecure.crypto.ckks import CkksParams
from fedsecure.crypto.ckks_encryptor import Encryptor
from fedsecure.crypto.packing import Encoding, TensorLayout, encoding_for, parse_encoding
from fedsecure.errors import CkksError
from fedsecure.kit import load_kit
from tasks.easyvqa import TASK as EASYVQA
from fedsecure.provision import Provisioned
from fedsecure.types import Role

P = ckks.DEFAULT_PARAMS


@pytest.fixture(scope="module")
def secret_ctx():  # type: ignore[no-untyped-def]
    return ckks.create_secret_context(P)


@pytest.fixture(scope="module")
def public_bytes(secret_ctx) -> bytes:  # type: ignore[no-untyped-def]
    return ckks.public_context_bytes(secret_ctx)


def _sum(chunks_per_client: list[list[bytes]], public: bytes, numel: int) -> list[bytes]:
    ctx = ckks.load_public_context(public, P)
    sums = [ckks.ChunkSum(ctx, P, ckks.ciphertexts_in_chunk(P, numel, i)) for i in range(P.chunk_count(numel))]
    for chunks in chunks_per_client:
        for s, c in zip(sums, chunks, strict=True):
            s.add(c)
    return [s.to_bytes() for s in sums]


def test_weighted_sum_of_64_clients_within_1e4(secret_ctx, public_bytes) -> None:  # type: ignore[no-untyped-def]
    """Issue target: values in [-1, 1] from 64 clients, weights summing to 1, error <= 1e-4."""
    rng = np.random.default_rng(7)
    k, numel = 64, 3 * P.slots + 100
    xs = rng.uniform(-1, 1, (k, numel))
    xs[0, :10] = 1.0  # the extremes of the range, too
    xs[1, :10] = -1.0
    counts = rng.integers(10, 1000, k)
    weights = counts / counts.sum()
    enc = Encryptor(public_context=public_bytes, params=P, workers=1)
    chunks = [enc.encrypt(xs[i], weight=float(weights[i])) for i in range(k)]
    total = ckks.decrypt_all(secret_ctx, P, _sum(chunks, public_bytes, numel), numel)
    expected = (weights[:, None] * xs).sum(axis=0)
    assert np.max(np.abs(total - expected)) <= 1e-4


def test_process_pool_encryption_matches(secret_ctx, public_bytes) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(1).uniform(-1, 1, P.slots * 70)  # above the pool threshold
    with Encryptor(public_context=public_bytes, params=P, workers=2) as enc:
        chunks = enc.encrypt(x, weight=0.25)
    assert len(chunks) == P.chunk_count(x.size) == 3
    out = ckks.decrypt_all(secret_ctx, P, chunks, x.size)
    assert np.max(np.abs(out - 0.25 * x)) < 1e-5


def test_public_contexts_cannot_decrypt(kits: Provisioned, public_bytes) -> None:  # type: ignore[no-untyped-def]
    """The server's and a client's kit contexts hold no secret key: decrypting raises."""
    for path in (kits.server, kits.clients["a"]):
        kit = load_kit(path)
        public = ckks.kit_public_context(kit)
        ctx = ckks.load_public_context(public, ckks.kit_params(kit))
        assert not ctx.is_private()
        chunk = Encryptor(public_context=public, workers=1).encrypt(np.full(10, 0.5), weight=1.0)[0]
        with pytest.raises(ValueError, match="secret"):
            ckks.decrypt_chunk(ctx, P, chunk, 1)
        with pytest.raises(CkksError):
            ckks.load_secret_context(public)


def test_provisioning_output_holds_no_ckks_secret_key(kits: Provisioned, keyholder_keys) -> None:  # type: ignore[no-untyped-def]
    """Every file provisioning wrote is tried as a TenSEAL context: none holds a secret
    key. The key holder's own folder does (0600), and its public part is what every kit
    seals, so clients encrypt for the key holder's key."""
    import tenseal as ts

    files = [p for p in kits.root.rglob("*") if p.is_file()]
    contexts = 0
    for path in files:
        try:
            ctx = ts.context_from(path.read_bytes())
        except Exception:  # noqa: BLE001 - not a context at all
            continue
        contexts += 1
        assert not ctx.is_private(), f"{path} holds a CKKS secret key"
    assert contexts == 3 + len(kits.clients)  # one public context per kit: server, key holder, admin, clients
    secret_path = keyholder_keys / ckks.SECRET_CONTEXT_FILE
    assert secret_path.stat().st_mode & 0o077 == 0
    kh = load_kit(kits.keyholder, expected_role=Role.KEYHOLDER)
    secret = ckks.load_secret_context(secret_path.read_bytes(), ckks.kit_params(kh))
    assert secret.is_private() and ckks.public_context_bytes(secret) == ckks.kit_public_context(kh)
    for path in (kits.server, kits.admin, *kits.clients.values()):
        assert ckks.kit_public_context(load_kit(path)) == ckks.kit_public_context(kh)


def test_provisioning_refuses_a_secret_or_misfit_context(tmp_path, secret_ctx) -> None:  # type: ignore[no-untyped-def]
    from fedsecure.provision import provision

    with pytest.raises(CkksError, match="secret key"):
        provision(out=tmp_path / "a", clients=["x"], keyholder_public_context=ckks.secret_context_bytes(secret_ctx), task=EASYVQA)
    other = ckks.public_context_bytes(ckks.create_secret_context(ckks.NVFLARE_DEFAULT_PARAMS))
    with pytest.raises(CkksError):
        provision(out=tmp_path / "b", clients=["x"], keyholder_public_context=other, task=EASYVQA)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_keyholder_refuses_keys_that_are_not_its_kits(kits: Provisioned, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from fedsecure.errors import KitError
    from keyholder.keys import generate_keys, load_secret

    kh = load_kit(kits.keyholder, expected_role=Role.KEYHOLDER)
    generate_keys(keys_dir=tmp_path / "k")
    with pytest.raises(CkksError, match="does not match"):
        load_secret(keys_dir=tmp_path / "k", kit=kh)
    with pytest.raises(FileExistsError):
        generate_keys(keys_dir=tmp_path / "k")
    os.chmod(tmp_path / "k" / ckks.SECRET_CONTEXT_FILE, 0o644)
    with pytest.raises(KitError, match="0600"):
        load_secret(keys_dir=tmp_path / "k", kit=kh)
    with pytest.raises(KitError, match="keyholder-keygen"):
        load_secret(keys_dir=tmp_path / "none", kit=kh)


def test_nan_inf_and_out_of_range_refused_before_encryption(public_bytes) -> None:  # type: ignore[no-untyped-def]
    enc = Encryptor(public_context=public_bytes, workers=1)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(CkksError, match="NaN or Inf"):
            enc.encrypt(np.array([0.1, bad]), weight=0.5)
    with pytest.raises(CkksError, match="exceeds"):
        enc.encrypt(np.array([1.5]), weight=0.5)
    for w in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(CkksError, match="weight"):
            enc.encrypt(np.array([0.1]), weight=w)


def test_corrupt_and_foreign_ciphertexts_refused(public_bytes) -> None:  # type: ignore[no-untyped-def]
    ctx = ckks.load_public_context(public_bytes, P)
    chunk = Encryptor(public_context=public_bytes, workers=1).encrypt(np.full(P.slots, 0.5), weight=1.0)[0]
    total = ckks.ChunkSum(ctx, P, 1)
    total.add(chunk)
    before = total.to_bytes()
    # A flip inside the compressed coefficients can still parse (no checksum there; a CI run
    # once drew a ciphertext where a fixed offset did): the manifest's SHA-256 catches that in
    # transit. Here: flips of the structure every ciphertext has, SEAL's header magic (0xA15E,
    # little-endian) and the zstd frame magic that follows it.
    corrupt_seal, corrupt_zstd = bytearray(chunk), bytearray(chunk)
    corrupt_seal[chunk.index(b"\x5e\xa1")] ^= 0xFF
    corrupt_zstd[chunk.index(b"\x28\xb5\x2f\xfd")] ^= 0xFF
    ref_secret = ckks.create_secret_context(ckks.NVFLARE_DEFAULT_PARAMS)
    foreign = Encryptor(public_context=ckks.public_context_bytes(ref_secret), params=ckks.NVFLARE_DEFAULT_PARAMS,
                        workers=1).encrypt(np.full(10, 0.5), weight=1.0)[0]
    for bad in (bytes(corrupt_seal), bytes(corrupt_zstd), foreign, chunk[:-5], b"", chunk + chunk):
        with pytest.raises(CkksError):
            total.add(bad)
    assert total.to_bytes() == before  # a refused chunk never touches the sum


def test_subtract_undoes_add_exactly(public_bytes) -> None:  # type: ignore[no-untyped-def]
    ctx = ckks.load_public_context(public_bytes, P)
    enc = Encryptor(public_context=public_bytes, workers=1)
    a, b = (enc.encrypt(np.full(P.slots, v), weight=0.5)[0] for v in (0.2, -0.7))
    total = ckks.ChunkSum(ctx, P, 1)
    total.add(a)
    once = total.to_bytes()
    total.add(b)
    total.subtract(b)
    assert total.to_bytes() == once == ckks.canonical_chunk(ctx, P, a, 1)


def test_parameters_checked_against_the_security_table() -> None:
    with pytest.raises(CkksError, match="128-bit"):
        CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 60))
    with pytest.raises(CkksError, match="two primes"):
        CkksParams(coeff_mod_bit_sizes=(32,))
    with pytest.raises(CkksError, match="does not fit"):
        CkksParams(scale_bits=33)
    assert ckks.params_from_settings(ckks.params_to_settings(P)) == P


def test_layout_round_trip_and_mismatch() -> None:
    tensors = {"b": np.arange(6.0).reshape(2, 3), "a": np.array([7.0])}
    layout = TensorLayout.of(tensors)
    assert [n for n, _ in layout.entries] == ["a", "b"] and layout.numel == 7
    flat = layout.pack(tensors)
    assert flat.tolist() == [7.0, 0, 1, 2, 3, 4, 5]
    back = layout.unpack(np.concatenate([flat, np.zeros(5)]))
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)
    with pytest.raises(CkksError):
        layout.pack({"a": np.array([1.0]), "b": np.zeros((3, 2))})
    enc = encoding_for("0" * 16, {"attn.text": layout, "attn.image": TensorLayout.of({"x": np.zeros(P.slots * 40)})})
    assert parse_encoding(str(enc)) == enc
    assert [s.name for s in enc.sections] == ["attn.image", "attn.text"]
    assert enc.chunk_ranges(P) == {"attn.image": (0, 2), "attn.text": (2, 1)} and enc.total_chunks(P) == 3


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_parse_encoding_rejects_junk(text: str) -> None:
    try:
        enc = parse_encoding(text)
    except CkksError:
        return
    assert isinstance(enc, Encoding) and str(enc) == text


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_unframe_never_crashes(data: bytes) -> None:
    try:
        parts = ckks.unframe(data)
    except CkksError:
        return
    assert ckks.frame(parts) == data
