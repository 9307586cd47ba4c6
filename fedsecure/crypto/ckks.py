"""CKKS (TenSEAL) contexts, ciphertext chunks and homomorphic sums (docs/design.md §2).

Who holds what: the key holder holds the only *secret* context; the server and the
clients hold a *public* context (encryption key only — no secret key, and no Galois or
relinearisation keys, since nothing here rotates or multiplies ciphertexts). Clients
encrypt with the public key (asymmetric), so no client can decrypt another's update.

Weighting: a client multiplies its values by its plaintext weight *before* encoding
(its weight is a public number it signs in its manifest), so the server only adds
ciphertexts. That is the cheapest and least noisy placement of the one plaintext-scalar
multiply (measured with `fedsecure bench he`: a server-side multiply needs a second 50-bit prime, ~2x the
bytes and ~35x the noise). Weights are normalised so that they sum to at most 1, which
keeps every sum inside ``value_bound`` and lets a 32-bit prime carry a 2^30 scale.

Parameters (chosen by measurement, `fedsecure bench he`): N = 4096, primes [32, 32],
scale 2^30 — 109 bits is the HE-standard 128-bit limit for N = 4096, we use 64. Fresh
ciphertexts carry one 32-bit prime and compress to ~16.6 bytes per value.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tenseal as ts

from fedsecure.errors import CkksError

# HE standard (homomorphicencryption.org, 2018), Table 1: largest log2(q) for 128-bit
# classical security with a ternary secret, by ring dimension N.
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# A chunk is a length-prefixed run of serialised ciphertexts; this caps how many a
# chunk may claim, so a hostile length field cannot make us allocate without bound.
MAX_CIPHERTEXTS_PER_CHUNK = 1024
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class CkksParams:
    """Ring dimension, prime sizes, scale, and the bound on every encoded value and sum."""

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (32, 32)
    scale_bits: int = 30
    value_bound: float = 1.0
    ciphertexts_per_chunk: int = 32

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_COEFF_BITS_128:
            raise CkksError(f"poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}")
        if len(self.coeff_mod_bit_sizes) < 2:
            raise CkksError("TenSEAL needs at least two primes (one data prime, one special prime)")
        if sum(self.coeff_mod_bit_sizes) > MAX_COEFF_BITS_128[n]:
            raise CkksError(f"{sum(self.coeff_mod_bit_sizes)} modulus bits exceed the 128-bit security limit "
                            f"of {MAX_COEFF_BITS_128[n]} for N={n}")
        # A sum of magnitude B at scale 2^s needs s + log2(B) + 1 bits below the first prime.
        headroom = self.coeff_mod_bit_sizes[0] - self.scale_bits - 1
        if not 0 < self.value_bound <= 2.0 ** headroom:
            raise CkksError(f"value_bound {self.value_bound} does not fit a {self.coeff_mod_bit_sizes[0]}-bit "
                            f"prime at scale 2^{self.scale_bits}")
        if not 1 <= self.ciphertexts_per_chunk <= MAX_CIPHERTEXTS_PER_CHUNK:
            raise CkksError(f"ciphertexts_per_chunk must be in [1, {MAX_CIPHERTEXTS_PER_CHUNK}]")

    @property
    def slots(self) -> int:
        """Values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def values_per_chunk(self) -> int:
        """Values carried by one full chunk."""
        return self.slots * self.ciphertexts_per_chunk

    def chunk_count(self, numel: int) -> int:
        """How many chunks a vector of ``numel`` values takes (padded to full slots)."""
        return max(1, math.ceil(numel / self.values_per_chunk))


DEFAULT_PARAMS = CkksParams()
PUBLIC_CONTEXT_FILE, SECRET_CONTEXT_FILE = "ckks_public.ctx", "ckks_secret.ctx"


def params_to_settings(params: CkksParams) -> dict[str, object]:
    """Parameters as kit settings (TOML), so every party reads the same ones."""
    return {"poly_modulus_degree": params.poly_modulus_degree, "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
            "scale_bits": params.scale_bits, "value_bound": params.value_bound,
            "ciphertexts_per_chunk": params.ciphertexts_per_chunk}


def params_from_settings(settings: Mapping[str, Any]) -> CkksParams:
    """Parameters from a kit's ``[settings.ckks]`` table (validated)."""
    try:
        return CkksParams(poly_modulus_degree=int(settings["poly_modulus_degree"]),
                          coeff_mod_bit_sizes=tuple(int(b) for b in settings["coeff_mod_bit_sizes"]),
                          scale_bits=int(settings["scale_bits"]), value_bound=float(settings["value_bound"]),
                          ciphertexts_per_chunk=int(settings["ciphertexts_per_chunk"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CkksError(f"malformed CKKS settings: {exc}") from exc
# NVFlare's default TenSEAL setting: the reference line of `fedsecure bench he`.
NVFLARE_DEFAULT_PARAMS = CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 40), scale_bits=40)
# Checked when a context is made: a misconfigured context decrypts garbage without raising.
CONTEXT_CHECK_TOLERANCE = 1e-5


def create_secret_context(params: CkksParams = DEFAULT_PARAMS) -> ts.Context:
    """A fresh key pair (the key holder's), checked to decrypt what it encrypts."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0 ** params.scale_bits
    # TenSEAL draws keys from SEAL's default PRNG, seeded from the OS's random device.
    probe = np.random.default_rng(secrets.randbits(64)).uniform(-params.value_bound, params.value_bound, params.slots)
    err = float(np.max(np.abs(np.asarray(ts.ckks_vector(ctx, probe).decrypt()) - probe)))
    if not err <= CONTEXT_CHECK_TOLERANCE * max(1.0, params.value_bound):
        raise CkksError(f"context decrypts with error {err:.2e}: parameters {params} are unusable")
    return ctx


def secret_context_bytes(ctx: ts.Context) -> bytes:
    """The key holder's context: secret key, no evaluation keys (nothing rotates)."""
    if not ctx.is_private():
        raise CkksError("this context holds no secret key")
    return ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)


def public_context_bytes(ctx: ts.Context) -> bytes:
    """What server and client kits carry: the encryption key only."""
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def context_fingerprint(public_bytes: bytes) -> str:
    """Short id of a public context; bound into every update's encoding string."""
    return hashlib.sha256(public_bytes).hexdigest()[:16]


def _load(data: bytes) -> ts.Context:
    try:
        return ts.context_from(data)
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError on junk
        raise CkksError(f"not a TenSEAL context: {exc}") from exc


def load_public_context(data: bytes, params: CkksParams = DEFAULT_PARAMS) -> ts.Context:
    """Load a public context; refuse one carrying a secret key (it must not be there)."""
    ctx = _load(data)
    if ctx.is_private():
        raise CkksError("a public context must not carry the secret key")
    _check_params(ctx, params)
    return ctx


def load_secret_context(data: bytes, params: CkksParams = DEFAULT_PARAMS) -> ts.Context:
    """Load the key holder's context."""
    ctx = _load(data)
    if not ctx.is_private():
        raise CkksError("this context holds no secret key")
    _check_params(ctx, params)
    return ctx


def _check_params(ctx: ts.Context, params: CkksParams) -> None:
    if not math.isclose(ctx.global_scale, 2.0 ** params.scale_bits):
        raise CkksError(f"context scale 2^{math.log2(ctx.global_scale):.1f} is not 2^{params.scale_bits}")


def check_values(values: np.ndarray, bound: float) -> None:
    """Refuse non-finite or out-of-range values before they are encrypted (client side)."""
    if values.size and not np.all(np.isfinite(values)):
        raise CkksError("values contain NaN or Inf; refusing to encrypt")
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak > bound:
        raise CkksError(f"a value of magnitude {peak:.3g} exceeds the CKKS bound {bound}")


def encrypt_ciphertexts(ctx: ts.Context, values: np.ndarray, slots: int) -> list[bytes]:
    """Encrypt a 1-D vector (a multiple of ``slots`` long) into serialised ciphertexts."""
    if values.ndim != 1 or values.size % slots:
        raise CkksError(f"expected a flat vector of whole {slots}-slot blocks")
    return [ts.ckks_vector(ctx, values[i:i + slots]).serialize() for i in range(0, values.size, slots)]


def frame(ciphertexts: Sequence[bytes]) -> bytes:
    """Join serialised ciphertexts into one chunk: (u32 length, bytes)*."""
    return b"".join(_LEN.pack(len(c)) + c for c in ciphertexts)


def unframe(data: bytes, *, expected: int | None = None) -> list[bytes]:
    """Split a chunk into ciphertext byte strings; raise :class:`CkksError` on bad framing."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(out) >= MAX_CIPHERTEXTS_PER_CHUNK or pos + _LEN.size > len(data):
            raise CkksError("malformed ciphertext chunk (framing)")
        (size,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if size == 0 or pos + size > len(data):
            raise CkksError("malformed ciphertext chunk (length field)")
        out.append(data[pos:pos + size])
        pos += size
    if not out or (expected is not None and len(out) != expected):
        raise CkksError(f"chunk holds {len(out)} ciphertexts, expected {expected}")
    return out


def load_ciphertext(ctx: ts.Context, data: bytes, params: CkksParams) -> ts.CKKSVector:
    """Deserialise one ciphertext and check it is a fresh full-slot vector of our context.

    Everything an addition depends on is checked here, before the ciphertext may touch a
    sum: SEAL only notices a scale or level mismatch inside ``add``, i.e. after an earlier
    ciphertext of the same chunk was already added (a one-client denial of the round)."""
    try:
        vec = ts.ckks_vector_from(ctx, data)
    except Exception as exc:  # SEAL validates parameters and coefficients on load
        raise CkksError(f"ciphertext does not load under this context: {exc}") from exc
    if vec.size() != params.slots:
        raise CkksError(f"ciphertext holds {vec.size()} values, expected {params.slots}")
    parts = vec.ciphertext()
    if len(parts) != 1:
        raise CkksError(f"a vector holds {len(parts)} ciphertexts, expected 1")
    ct = parts[0]
    if ct.poly_modulus_degree() != params.poly_modulus_degree or ct.size() != 2:
        raise CkksError(f"ciphertext has degree {ct.poly_modulus_degree()} and {ct.size()} polynomials, "
                        f"expected {params.poly_modulus_degree} and 2 (a fresh encryption)")
    if ct.parms_id() != ctx.data.seal_context().first_parms_id():
        raise CkksError("ciphertext is not at the first level of the federation's modulus chain")
    if ct.scale != 2.0 ** params.scale_bits:
        raise CkksError(f"ciphertext scale 2^{math.log2(ct.scale) if ct.scale > 0 else float('nan'):.2f} "
                        f"is not 2^{params.scale_bits}")
    if not ct.is_ntt_form() or ct.is_transparent():
        raise CkksError("ciphertext is not in NTT form or is transparent (encrypts nothing)")
    return vec


def ciphertexts_in_chunk(params: CkksParams, numel: int, index: int) -> int:
    """How many ciphertexts chunk ``index`` of a ``numel``-value vector holds."""
    total = max(1, math.ceil(numel / params.slots))
    start = index * params.ciphertexts_per_chunk
    if not 0 <= start < total:
        raise CkksError(f"chunk index {index} is out of range")
    return min(params.ciphertexts_per_chunk, total - start)


class ChunkSum:
    """Running homomorphic sum of one chunk position across contributions."""

    def __init__(self, ctx: ts.Context, params: CkksParams, count: int) -> None:
        self.ctx, self.params, self.count = ctx, params, count
        self._vecs: list[ts.CKKSVector] | None = None
        self.terms = 0  # contributions in the sum

    def load(self, chunk: bytes) -> list[ts.CKKSVector]:
        """Deserialise and validate a chunk (the costly part; no lock needed)."""
        return [load_ciphertext(self.ctx, c, self.params) for c in unframe(chunk, expected=self.count)]

    def add(self, chunk: bytes) -> None:
        """Add a contribution's chunk (validated before the sum is touched)."""
        self.add_loaded(self.load(chunk))

    def add_loaded(self, vecs: list[ts.CKKSVector]) -> None:
        """Add an already loaded chunk, all of it or (on any error) none of it: the sums
        are computed into fresh ciphertexts and swapped in only when every one succeeded."""
        if len(vecs) != self.count:
            raise CkksError(f"chunk holds {len(vecs)} ciphertexts, expected {self.count}")
        if self._vecs is None:
            self._vecs = list(vecs)  # freshly loaded and never changed in place: no copy needed
        else:
            self._vecs = [acc + v for acc, v in zip(self._vecs, vecs, strict=True)]
        self.terms += 1

    def subtract(self, chunk: bytes) -> None:
        """Undo :meth:`add` exactly (ciphertext arithmetic is exact modular arithmetic);
        all or nothing, like :meth:`add_loaded`."""
        if self._vecs is None:
            raise CkksError("nothing to subtract from")
        vecs = self.load(chunk)
        if self.terms == 1:
            self._vecs, self.terms = None, 0  # x - x is SEAL's "transparent" ciphertext: start empty instead
            return
        self._vecs = [acc - v for acc, v in zip(self._vecs, vecs, strict=True)]
        self.terms -= 1

    def to_bytes(self) -> bytes:
        """The summed chunk, serialised in the same framing as a contribution's."""
        if self._vecs is None:
            raise CkksError("empty sum")
        return frame([v.serialize() for v in self._vecs])


def canonical_chunk(ctx: ts.Context, params: CkksParams, chunk: bytes, count: int) -> bytes:
    """Re-serialise a chunk after loading it, so two encodings of one ciphertext compare equal."""
    return frame([load_ciphertext(ctx, c, params).serialize() for c in unframe(chunk, expected=count)])


def decrypt_chunk(secret_ctx: ts.Context, params: CkksParams, chunk: bytes, count: int) -> np.ndarray:
    """Decrypt one summed chunk into ``count * slots`` float64 values (key holder only)."""
    parts = [np.asarray(load_ciphertext(secret_ctx, c, params).decrypt(), dtype=np.float64)
             for c in unframe(chunk, expected=count)]
    return np.concatenate(parts)


def decrypt_all(secret_ctx: ts.Context, params: CkksParams, chunks: Iterable[bytes], numel: int) -> np.ndarray:
    """Decrypt a whole vector and trim the padding."""
    out = [decrypt_chunk(secret_ctx, params, c, ciphertexts_in_chunk(params, numel, i)) for i, c in enumerate(chunks)]
    return np.concatenate(out)[:numel]


class _KitLike(Protocol):
    settings: Mapping[str, Any]

    def read_file(self, name: str) -> bytes: ...


def kit_params(kit: _KitLike) -> CkksParams:
    """The federation's CKKS parameters, from a kit's CA-signed settings."""
    if "ckks" not in kit.settings:
        raise CkksError("this kit carries no CKKS settings (provisioned before secure aggregation?)")
    return params_from_settings(kit.settings["ckks"])


def kit_public_context(kit: _KitLike) -> bytes:
    """The public context bytes of a server, key holder or client kit (digest-checked)."""
    return kit.read_file(PUBLIC_CONTEXT_FILE)
