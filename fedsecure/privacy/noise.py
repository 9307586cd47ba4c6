"""Randomness for DP-SGD from the OS CSPRNG ("secure mode").

Opacus's own ``secure_mode`` needs ``torchcsprng``, which has no build for this torch,
so the same two rules are implemented here:
1. noise and Poisson sampling come from ``os.urandom`` (an unpredictable, CSPRNG-backed
   source), never from a seedable PRNG an adversary could reconstruct;
2. each Gaussian sample is the scaled sum of four draws, as Opacus does in secure mode,
   against floating-point attacks on the Gaussian mechanism (Mironov 2012;
   arXiv 2107.10138 §5.1 with n = 2).
"""

from __future__ import annotations

import os

import numpy as np
import torch

_TWO_POW_53 = float(2**53)


def secure_uniform(n: int) -> np.ndarray:
    """``n`` floats uniform in (0, 1), 53 random bits each, from os.urandom."""
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return ((raw >> np.uint64(11)).astype(np.float64) + 0.5) / _TWO_POW_53


def secure_standard_normal(n: int) -> np.ndarray:
    """``n`` N(0, 1) samples by Box–Muller on CSPRNG uniforms."""
    m = (n + 1) // 2
    u1, u2 = secure_uniform(m), secure_uniform(m)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
    return z[:n]


def secure_gaussian_like(reference: torch.Tensor, std: float) -> torch.Tensor:
    """N(0, std²) noise shaped like ``reference``: (g1+g2+g3+g4)/2 with gi ~ N(0, std²)."""
    n = reference.numel()
    if std == 0 or n == 0:
        return torch.zeros_like(reference)
    z = secure_standard_normal(4 * n).reshape(4, n).sum(axis=0) / 2.0
    return torch.from_numpy(z * std).to(dtype=reference.dtype, device=reference.device).view_as(reference)


def poisson_batch(n: int, sample_rate: float, *, secure: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of a Poisson-subsampled batch: each of ``n`` records in independently
    with probability ``sample_rate`` (what the RDP/PRV analysis assumes)."""
    u = secure_uniform(n) if secure else (rng or np.random.default_rng()).random(n)
    return np.flatnonzero(u < sample_rate)
