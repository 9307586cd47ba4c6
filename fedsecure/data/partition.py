"""Federated splits of easy-VQA: a server share held out by image, and Dirichlet(alpha)
non-IID client shares by question type and answer. Deterministic for a seed, so each
participant can compute its own share without seeing anyone else's."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsecure.data.easyvqa import VQARecord, answer_type, load_records


@dataclass(frozen=True)
class FederatedSplit:
    """Record ids per client, plus the server's public prompt pool and seed set.

    Server records come from images no client sees, so the pool is disjoint from
    every client's share by construction (not just by record)."""

    clients: dict[str, tuple[str, ...]]
    public_pool: tuple[str, ...]
    seed_set: tuple[str, ...]


def category(record: VQARecord) -> tuple[str, str]:
    """The non-IID key: (question type, answer)."""
    return answer_type(record.answer), record.answer


def split_federation(
    *,
    clients: Sequence[str],
    alpha: float = 0.5,
    seed: int = 0,
    server_image_fraction: float = 0.1,
    seed_set_size: int = 200,
    records: Sequence[VQARecord] | None = None,
) -> FederatedSplit:
    """Partition the train split; ``alpha`` small = very non-IID, large = near IID."""
    if not clients:
        raise ValueError("need at least one client")
    if len(set(clients)) != len(clients):
        raise ValueError("client names must be unique")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if not 0 < server_image_fraction < 1:
        raise ValueError("server_image_fraction must be in (0, 1)")
    recs = list(load_records("train") if records is None else records)
    rng = np.random.default_rng(seed)
    images = sorted({r.image_id for r in recs})
    server_images = set(rng.permutation(images)[: max(1, int(len(images) * server_image_fraction))].tolist())
    server = [r.record_id for r in recs if r.image_id in server_images]
    rng.shuffle(server)
    n_seed = min(seed_set_size, len(server) // 2)
    by_cat: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in recs:
        if r.image_id not in server_images:
            by_cat[category(r)].append(r.record_id)
    shares: dict[str, list[str]] = {c: [] for c in clients}
    for cat in sorted(by_cat):
        ids = by_cat[cat]
        rng.shuffle(ids)
        proportions = rng.dirichlet([alpha] * len(clients))
        cuts = (np.cumsum(proportions)[:-1] * len(ids)).astype(int)
        for client, part in zip(clients, np.split(np.array(ids, dtype=object), cuts), strict=True):
            shares[client].extend(part.tolist())
    return FederatedSplit(
        clients={c: tuple(sorted(v)) for c, v in shares.items()},
        public_pool=tuple(server[n_seed:]),
        seed_set=tuple(server[:n_seed]),
    )
