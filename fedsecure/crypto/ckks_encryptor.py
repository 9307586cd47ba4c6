"""Client-side encryption of a weighted vector into ciphertext chunks, split across
worker processes (encryption is CPU-bound and TenSEAL holds the GIL per call)."""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import tenseal as ts

from fedsecure.crypto import ckks
from fedsecure.crypto.ckks import CkksParams
from fedsecure.errors import CkksError

# Below this many ciphertexts a process pool costs more than it saves.
POOL_MIN_CIPHERTEXTS = 64
_worker_ctx: ts.Context | None = None


def _init_worker(public_bytes: bytes, params: CkksParams) -> None:
    global _worker_ctx
    _worker_ctx = ckks.load_public_context(public_bytes, params)


def _encrypt_block(values: bytes, slots: int) -> list[bytes]:
    assert _worker_ctx is not None, "worker not initialised"
    return ckks.encrypt_ciphertexts(_worker_ctx, np.frombuffer(values, dtype=np.float64), slots)


class Encryptor:
    """Encrypts pre-weighted vectors under the federation's public context."""

    def __init__(self, *, public_context: bytes, params: CkksParams = ckks.DEFAULT_PARAMS,
                 workers: int | None = None) -> None:
        self.params = params
        self.ctx = ckks.load_public_context(public_context, params)
        self.context_id = ckks.context_fingerprint(public_context)  # bound into update encodings
        self._public = public_context
        self.workers = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the parent may hold gRPC and torch threads, which fork would copy mid-lock.
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self._public, self.params))
        return self._pool

    def encrypt(self, values: np.ndarray, *, weight: float) -> list[bytes]:
        """Weight, check, pad to full slot vectors, encrypt; return the framed chunks."""
        if not (math.isfinite(weight) and 0.0 < weight <= 1.0):
            raise CkksError(f"weight must be in (0, 1], got {weight}")
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if flat.size == 0:
            raise CkksError("nothing to encrypt")
        ckks.check_values(flat, self.params.value_bound)  # NaN/Inf or out of range: refused here
        slots = self.params.slots
        padded = np.zeros(math.ceil(flat.size / slots) * slots, dtype=np.float64)
        padded[:flat.size] = flat * weight
        n_ct = padded.size // slots
        if self.workers == 1 or n_ct < POOL_MIN_CIPHERTEXTS:
            cts = ckks.encrypt_ciphertexts(self.ctx, padded, slots)
        else:
            bounds = np.linspace(0, n_ct, self.workers + 1).astype(int) * slots
            futures = [self._executor().submit(_encrypt_block, padded[a:b].tobytes(), slots)
                       for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            cts = [c for f in futures for c in f.result()]
        per = self.params.ciphertexts_per_chunk
        return [ckks.frame(cts[i:i + per]) for i in range(0, len(cts), per)]

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Encryptor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
