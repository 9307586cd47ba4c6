"""The TRAIN phase planner: every participant trains DP steps on its own pairs and
uploads its adapters under CKKS; FedCola's compensation coefficients say how each applies
the aggregates (:mod:`server.planners.compensation`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedsecure import serde
from fedsecure.models.groups import (
    ATTENTION_FAMILY,
    GroupKey,
    head_family,
    kind_of,
    mlp_family,
    same_kind_family_kind,
)
from fedsecure.types import (
    PayloadKind,
    TaskReport,
    TaskSpec,
    TrainSpec,
)
from server.planners.compensation import (
    STACKS_OF,
    Member,
    same_kind_group_coefficient,
)
from server.planners.metrics import MetricsLog, client_metrics
from server.rounds.phases import PhaseContext, published_groups
from server.rounds.store import SubmissionRow
from server.secagg.aggregator import SecureAggregator

MLP_REQUEST = "mlp"      # upload_group "attn+mlp": also the client's own kind's MLP adapters
HEAD_REQUEST = "head"    # upload_group "attn+mlp+head": also its kind's head and fusion layer
OTHER_STACK = {"image": "text", "text": "image"}


@dataclass(frozen=True)
class _Declared:
    kind: str
    pairs: int
    backbone_sha256: str
    shape: str


class TrainPlanner:
    """Every participant trains ``local_steps`` DP steps on its own pairs, then uploads its
    encrypted adapters; at close the server gets their means from the key holder.

    FedCola (docs/design.md §1, §5): attention means are downloaded by every client of the
    stack; a uni-modal client also gets the other stack's attention mean as aux adapters
    for its gate (``gates``); MLP adapters are uploaded only where a kind has a peer of the
    same architecture in the round, and come back with FedCola's compensation coefficient
    (``mlp_sharing``); with ``head_sharing`` the heads and fusion layers go the same way."""

    def __init__(self, *, metrics: MetricsLog, aggregator: SecureAggregator | None = None, local_steps: int = 100,
                 learning_rate: float = 0.01, batch_size: int = 128, gates: bool = True,
                 mlp_sharing: bool = True, head_sharing: bool = False,
                 stacks_of: Mapping[str, frozenset[str]] = STACKS_OF) -> None:
        if local_steps < 1 or learning_rate <= 0 or batch_size < 1:
            raise ValueError("local_steps, learning_rate and batch_size must be positive")
        if head_sharing and not mlp_sharing:
            raise ValueError("head_sharing rides on mlp_sharing (the same peers, the same coefficient)")
        self.metrics, self.local_steps, self.learning_rate, self.batch_size = metrics, local_steps, learning_rate, batch_size
        self.aggregator = aggregator  # None: no key holder, clients upload nothing
        self.gates, self.mlp_sharing, self.head_sharing = gates, mlp_sharing, head_sharing
        self.stacks_of = stacks_of  # the stacks each kind's model holds on this task (compensation.stacks_of_kinds)

    @staticmethod
    def _declared(ctx: PhaseContext) -> dict[str, _Declared]:
        out = {}
        for c in ctx.store.client_infos():
            kind = kind_of(c.capabilities.modalities)
            if kind is not None:
                out[c.name] = _Declared(kind, max(1, dict(c.capabilities.sample_counts).get("pairs", 0)),
                                        c.capabilities.backbone_sha256, c.capabilities.block_shape)
        return out

    def _compensation(self, ctx: PhaseContext, declared: Mapping[str, _Declared],
                      groups: Sequence[str]) -> dict[str, float]:
        """FedCola's coefficient for each MLP or head group published last round: the
        summed c_i of its members over the clients that uploaded then (same backbone and shape)."""
        uploaders = ctx.store.submissions.uploaders(ctx.run_id, ctx.round - 1, int(PayloadKind.UPDATE))
        out = {}
        for group in groups:
            key = GroupKey.parse(group)
            if same_kind_family_kind(key.family) is None:
                continue
            members = [Member(n, declared[n].kind, declared[n].pairs) for n in uploaders
                       if n in declared and key.declared_by(declared[n].backbone_sha256, declared[n].shape)]
            out[group] = same_kind_group_coefficient(group=key, members=members, stacks_of=self.stacks_of)
        return out

    def plan(self, ctx: PhaseContext, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        """The same training parameters for everyone; per client the groups it takes.

        Clients pre-weight their upload by (their pairs / ``weight_total``), the total of
        the participants' declared pairs, so the weights of any subset sum to at most 1."""
        declared = self._declared(ctx)
        total = float(sum(declared[p].pairs if p in declared else 1 for p in participants))
        previous = published_groups(ctx, ctx.round - 1)
        compensation = self._compensation(ctx, declared, previous) if self.mlp_sharing else {}
        peers: dict[tuple[str, str, str], int] = {}
        for p in participants:
            if p in declared:
                d = declared[p]
                peers[d.kind, d.backbone_sha256, d.shape] = peers.get((d.kind, d.backbone_sha256, d.shape), 0) + 1
        specs: dict[str, TaskSpec] = {}
        for p in participants:
            d = declared.get(p)
            upload = ""
            if self.aggregator is not None:
                upload = ATTENTION_FAMILY
                if self.mlp_sharing and d is not None and peers[d.kind, d.backbone_sha256, d.shape] >= 2:
                    upload += f"+{MLP_REQUEST}" + (f"+{HEAD_REQUEST}" if self.head_sharing else "")
            downloads = previous if self.mlp_sharing else tuple(g for g in previous
                                                                if GroupKey.parse(g).family == ATTENTION_FAMILY)
            own = (mlp_family(d.kind), head_family(d.kind)) if d is not None else ()
            mine = {g: c for g, c in compensation.items()
                    if GroupKey.parse(g).family in own and GroupKey.parse(g).declared_by(d.backbone_sha256, d.shape)}
            downloads = tuple(g for g in downloads
                              if same_kind_family_kind(GroupKey.parse(g).family) is None or g in mine)
            aux: tuple[str, ...] = ()
            if self.gates and d is not None and d.kind in OTHER_STACK and len(self.stacks_of[d.kind]) == 1:
                aux = tuple(g for g in previous if GroupKey.parse(g).family == ATTENTION_FAMILY
                            and GroupKey.parse(g).stack == OTHER_STACK[d.kind]
                            and GroupKey.parse(g).declared_by(d.backbone_sha256, d.shape))
            specs[p] = TrainSpec(local_steps=self.local_steps, learning_rate=self.learning_rate,
                                 batch_size=self.batch_size, planned_rounds=ctx.config.rounds,
                                 download_groups=downloads, aux_groups=aux, compensation=tuple(sorted(mine.items())),
                                 upload_group=upload, weight_total=total)
        self.metrics.write({"run_id": ctx.run_id, "round": ctx.round, "phase": "train_plan",
                            **{f"compensation.{g}": c for g, c in compensation.items()},
                            **{f"aux.{p}": list(s.aux_groups) for p, s in specs.items() if s.aux_groups},
                            **{f"upload.{p}": s.upload_group for p, s in specs.items()}})
        return specs

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        """Aggregate the encrypted updates (key holder), then record what happened."""
        published = await self.aggregator.aggregate(ctx, accepted) if self.aggregator is not None else {}
        for sub in accepted:
            if sub.payload_kind == int(PayloadKind.UPDATE):
                weight = serde.stored_update(sub.payload).manifest.weight
                self.metrics.write({"run_id": ctx.run_id, "round": ctx.round, "phase": "train", "client": sub.client,
                                    "uploaded": 1.0, "weight": weight})
                continue
            outcome = serde.stored_outcome(sub.payload)
            if isinstance(outcome, TaskReport):
                self.metrics.write({"run_id": ctx.run_id, "round": ctx.round, "phase": "train", "client": sub.client,
                                    **client_metrics(outcome.metrics)})
        if published:
            self.metrics.write({"run_id": ctx.run_id, "round": ctx.round, "phase": "aggregate",
                                **{f"contributors.{g}": float(n) for g, n in published.items()}})
