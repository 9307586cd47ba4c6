"""The federation's adapter exchange for benchmarks, through the code that ships, with
plaintext standing in for CKKS and the key holder (issue 25 item 4: benchmarks call the
real aggregation, not a copy of it).

One exchange is what a TRAIN round does to the clients' adapters:

- each client uploads the families its TRAIN task asks for — attention always, its own
  kind's MLP adapters when another client of its kind, backbone and block shape takes part
  (:meth:`server.planners.train.TrainPlanner.plan`'s rule) — read from its model by
  :func:`client_sdk.adapter_exchange.adapter_groups`, weighted by its share of the round's
  pairs (what ``weight_total`` makes of it);
- each group with at least ``quorum`` contributors is published as the key holder's
  decrypted sum divided by the contributors' total weight
  (:class:`server.secagg.aggregator.SecureAggregator` does that division; CKKS adds an
  error of ~1e-6, measured by ``fedsecure bench he``), packed as float32 like a download;
- each client applies what it downloads with its own code
  (:func:`client_sdk.adapter_exchange.apply_aggregate`): attention means replace its
  own; its kind's MLP mean moves it by FedCola's coefficient, computed by the server's rule
  (:func:`server.planners.compensation.same_kind_group_coefficient`); a uni-modal client's gate reads the
  other stack's attention mean through :func:`client_sdk.adapter_exchange.aux_adapters`.

With ``heads`` (the server's ``share_heads``), each kind's heads and fusion layers go with
its MLP adapters and come back with the same coefficient. Gates never leave a client, as in
the federation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from client_sdk.adapter_exchange import adapter_groups, apply_aggregate, aux_adapters
from client_sdk.outcomes import Aggregate
from fedsecure.crypto.packing import TensorLayout, plain_encoding
from fedsecure.models.groups import ATTENTION_FAMILY, GroupKey, head_family, mlp_family, same_kind_family_kind
from server.planners.compensation import Member, same_kind_group_coefficient

QUORUM = 2  # the key holder's default: one client's update is never an aggregate


@dataclass(frozen=True)
class Participant:
    """A client's reward model (:class:`fedsecure.models.reward.RewardModel`) and the pairs
    it declared (its weight)."""

    name: str
    kind: str
    model: torch.nn.Module
    pairs: int


def _families(p: Participant, participants: Sequence[Participant], *, mlp: bool, heads: bool) -> list[str]:
    peers = sum(1 for o in participants if o.kind == p.kind)
    same_kind = [mlp_family(p.kind), *([head_family(p.kind)] if heads else [])] if mlp and peers >= 2 else []
    return [ATTENTION_FAMILY, *same_kind]


def publish(participants: Sequence[Participant], *, mlp: bool, heads: bool = False, round_: int = 0,
            quorum: int = QUORUM) -> dict[str, Aggregate]:
    """The groups the key holder would decrypt this round, as clients download them
    (``heads``: the server's ``share_heads``, which rides on MLP sharing)."""
    if heads and not mlp:
        raise ValueError("heads are shared only with MLP adapters (the TRAIN planner's rule)")
    total = float(sum(p.pairs for p in participants))
    uploads: dict[str, list[tuple[float, dict[str, np.ndarray]]]] = {}
    for p in participants:
        weight = p.pairs / total
        for family in _families(p, participants, mlp=mlp, heads=heads):
            for group, tensors in adapter_groups(p.model, family).items():  # type: ignore[arg-type]
                uploads.setdefault(group, []).append((weight, tensors))
    published: dict[str, Aggregate] = {}
    for group, held in uploads.items():
        if len(held) < quorum:
            continue
        layout = TensorLayout.of(held[0][1])
        summed = sum(w * layout.pack(t) for w, t in held)  # what the key holder decrypts
        mean = np.asarray(summed) / math.fsum(w for w, _ in held)  # what the aggregator publishes
        published[group] = Aggregate(group=group, round=round_, encoding=plain_encoding(layout.digest, layout.numel),
                                     contributors=len(held), data=mean.astype("<f4").tobytes())
    return published


def compensation(published: Mapping[str, Aggregate], participants: Sequence[Participant], *,
                 stacks_of: Mapping[str, frozenset[str]]) -> dict[str, float]:
    """FedCola's coefficient of each published MLP or head group (every participant uploaded)."""
    members = [Member(p.name, p.kind, p.pairs) for p in participants]
    out = {}
    for group in published:
        key = GroupKey.parse(group)
        if same_kind_family_kind(key.family) is not None:
            out[group] = same_kind_group_coefficient(group=key, members=members, stacks_of=stacks_of)  # the TRAIN planner's
    return out


def apply(published: Mapping[str, Aggregate], participants: Sequence[Participant], *,
          stacks_of: Mapping[str, frozenset[str]]) -> int:
    """Every participant applies the groups it would download; values changed, in all."""
    coefficient = compensation(published, participants, stacks_of=stacks_of)
    changed = 0
    for p in participants:
        for group, aggregate in published.items():
            family = GroupKey.parse(group).family
            if family == ATTENTION_FAMILY:
                changed += apply_aggregate(p.model, aggregate, family=family)  # type: ignore[arg-type]
            elif family in (mlp_family(p.kind), head_family(p.kind)):
                changed += apply_aggregate(p.model, aggregate, family=family,  # type: ignore[arg-type]
                                           coefficient=coefficient[group])
    return changed


def aux_for(p: Participant, published: Mapping[str, Aggregate], *, other_stack: str) -> dict[str, torch.Tensor] | None:
    """The other stack's attention mean as ``p``'s gate's aux adapters (None: not published)."""
    for group, aggregate in published.items():
        key = GroupKey.parse(group)
        if key.family == ATTENTION_FAMILY and key.stack == other_stack:
            return aux_adapters(p.model, aggregate)  # type: ignore[arg-type]
    return None
