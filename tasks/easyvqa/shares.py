"""Each participant's easy-VQA share, computed locally from the federation's public
split parameters (no participant ever sees another's records)."""

from __future__ import annotations

from collections.abc import Sequence

from fedsecure.data.preferences import PreferencePair
from fedsecure.task import Example
from tasks.easyvqa.data import load_records
from tasks.easyvqa.pairs import build_pairs
from tasks.easyvqa.partition import split_federation


def judgeable(kind: str, record: Example) -> bool:
    """Whether a client kind can judge a question: image-only clients see no question,
    so yes/no questions (whose answer depends on it) are outside their capability."""
    return not (kind == "image" and record.group == "yesno")


def client_pairs(*, name: str, clients: Sequence[str], kind: str, alpha: float = 0.5, seed: int = 0,
                 limit: int | None = None) -> list[PreferencePair]:
    """Preference pairs from this client's Dirichlet share, restricted to what its kind can judge."""
    if name not in clients:
        raise ValueError(f"{name} is not one of the federation's clients {list(clients)}")
    split = split_federation(clients=list(clients), alpha=alpha, seed=seed)
    by_id = {r.record_id: r for r in load_records("train")}
    records = [by_id[i] for i in split.clients[name] if judgeable(kind, by_id[i])]
    pairs = build_pairs(records, seed=seed + 1 + sorted(clients).index(name))
    return pairs[:limit] if limit else pairs


def server_records(*, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(public prompt pool, seed set): the server's share, disjoint from every client's."""
    split = split_federation(clients=["_"], seed=seed)
    by_id = {r.record_id: r for r in load_records("train")}
    return [by_id[i] for i in split.public_pool], [by_id[i] for i in split.seed_set]


def server_part(name: str, *, seed: int = 0) -> list[Example]:
    """One of the server's other public parts ("pretrain", "router", "reward_eval"),
    disjoint by image from every client's share and from each other."""
    split = split_federation(clients=["_"], seed=seed)
    ids = {"pretrain": split.pretrain, "router": split.router, "reward_eval": split.reward_eval}.get(name)
    if ids is None:
        raise ValueError(f"no server part {name!r}; choose pretrain, router or reward_eval")
    by_id = {r.record_id: r for r in load_records("train")}
    return [by_id[i] for i in ids]

