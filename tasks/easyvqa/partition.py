"""Federated splits of easy-VQA: a server share held out by image, and Dirichlet(alpha)
non-IID client shares by question type and answer. Deterministic for a seed, so each
participant can compute its own share without seeing anyone else's."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsecure.task import Example
from tasks.easyvqa.data import image_id, load_records


@dataclass(frozen=True)
class FederatedSplit:
    """Record ids per client, plus the server's public parts, each from images no client
    sees and no other part shares (disjoint by image, not just by record):

    - ``public_pool``: prompts the policy is aligned on; ``seed_set``: its SFT warm start;
    - ``pretrain``: public data for pretraining the federation's backbones;
    - ``router``: the server's preference set for training its router;
    - ``reward_eval``: public questions the clients' reward models are measured on.
    No evaluation part ever feeds pretraining or training."""

    clients: dict[str, tuple[str, ...]]
    public_pool: tuple[str, ...]
    seed_set: tuple[str, ...]
    pretrain: tuple[str, ...] = ()
    router: tuple[str, ...] = ()
    reward_eval: tuple[str, ...] = ()


def category(record: Example) -> tuple[str, str]:
    """The non-IID key: (question type, answer)."""
    return record.group, record.answer


def split_federation(
    *,
    clients: Sequence[str],
    alpha: float = 0.5,
    seed: int = 0,
    server_image_fraction: float = 0.1,
    seed_set_size: int = 200,
    extra_parts: tuple[tuple[str, float], ...] = (("pretrain", 0.125), ("router", 0.025), ("reward_eval", 0.07)),
    records: Sequence[Example] | None = None,
) -> FederatedSplit:
    """Partition the train split; ``alpha`` small = very non-IID, large = near IID.

    ``server_image_fraction`` of the images make the prompt pool and seed set;
    ``extra_parts`` (name, fraction of all images) the server's other public parts."""
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
    number = [image_id(r) for r in recs]  # each record's image, once
    images = sorted(set(number))
    order = rng.permutation(images).tolist()
    n_server = max(1, int(len(images) * server_image_fraction))
    server_images = set(order[:n_server])
    part_of: dict[int, str] = {}
    start = n_server
    for name, fraction in extra_parts:
        if name not in ("pretrain", "router", "reward_eval") or not 0 <= fraction < 1:
            raise ValueError(f"unknown server part {name!r} or fraction {fraction} outside [0, 1)")
        n = int(len(images) * fraction)
        part_of.update((image, name) for image in order[start:start + n])
        start += n
    if start >= len(images):
        raise ValueError("the server's parts leave no images for the clients")
    server = [r.record_id for r, img in zip(recs, number, strict=True) if img in server_images]
    rng.shuffle(server)
    n_seed = min(seed_set_size, len(server) // 2)
    by_cat: dict[tuple[str, str], list[str]] = defaultdict(list)
    parts: dict[str, list[str]] = defaultdict(list)
    for r, img in zip(recs, number, strict=True):
        if img in part_of:
            parts[part_of[img]].append(r.record_id)
        elif img not in server_images:
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
        pretrain=tuple(sorted(parts["pretrain"])),
        router=tuple(sorted(parts["router"])),
        reward_eval=tuple(sorted(parts["reward_eval"])),
    )
