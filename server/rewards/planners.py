"""Server planners for reward-model rounds: TRAIN hands out DP training parameters;
SCORE sends public questions (the server's reward-evaluation part) with every candidate
answer and — since the server knows their answers — measures how well each client's
scores judge them (:mod:`server.rewards.quality`). Results go to ``metrics.jsonl`` in the
server's state folder."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsecure import serde
from fedsecure.data.images import image_png
from fedsecure.models.groups import (
    ATTENTION_FAMILY,
    GroupKey,
    kind_of,
    mlp_family,
    mlp_kind,
)
from fedsecure.task import Example, Task, group_of_answer, wrong_answers
from fedsecure.types import (
    Modality,
    PayloadKind,
    ScoreItem,
    ScoreSpec,
    TaskReport,
    TaskSpec,
    TrainSpec,
)
from server.rewards.compensation import STACKS_OF, Member, check_coefficients, coefficients
from server.rewards.quality import JudgedQuestion, reward_quality
from server.rounds.phases import PhaseContext, ReportLedgerPlanner
from server.rounds.store import SubmissionRow
from server.secagg.aggregator import SecureAggregator


class MetricsLog:
    """Append-only JSONL of per-phase results (what the demo and operators read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, object]) -> None:
        """Append one record."""
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.time(), **record}, sort_keys=True) + "\n")


# What a client may report about a task, by name (issue 23 item 9: a client once sent
# `phase`, `round` and `run_id`, overwrote the server's own fields and vanished from the run
# report). Anything else is dropped and counted; values must be finite numbers.
CLIENT_METRICS = frozenset({
    # TRAIN
    "heldout_accuracy", "epsilon", "epsilon_budget", "noise_multiplier", "sample_rate", "steps", "loss_first",
    "loss_last", "parameters_changed", "ledger_seq", "gate_mean", "gate_max_abs",
    # PERSONALISE
    "heldout_accuracy_personal", "heldout_accuracy_global", "heldout_accuracy_replaced",
    "heldout_accuracy_personalised", "heldout_accuracy_distilled", "components", "replaced", "distill_steps",
    "distillation_kept", "distill_noise_multiplier", "distill_loss_first", "distill_loss_last",
    "distill_parameters_changed",
    # ALIGN
    "sessions_opened", "steps_answered",
})


def client_metrics(reported: Iterable[tuple[str, float]]) -> dict[str, object]:
    """What the server records of a client's report: ``{"metrics": {known name: finite
    number}}``, under its own key so it can never overwrite the server's fields, plus how
    many entries were dropped (unknown names, other types, non-finite values)."""
    kept: dict[str, float] = {}
    dropped = 0
    for name, value in reported:
        if name in CLIENT_METRICS and isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(value):
            kept[name] = float(value)
        else:
            dropped += 1
    return {"metrics": kept, **({"metrics_dropped": dropped} if dropped else {})}


MLP_REQUEST = "mlp"      # upload_group "attn+mlp": also the client's own kind's MLP adapters
OTHER_STACK = {"image": "text", "text": "image"}


def published_groups(ctx: PhaseContext, round_: int) -> tuple[str, ...]:
    """Groups with a published aggregate in ``round_`` of this run."""
    return tuple(ctx.store.submissions.aggregate_groups(ctx.run_id, round_))


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
    (``mlp_sharing``)."""

    def __init__(self, *, metrics: MetricsLog, aggregator: SecureAggregator | None = None, local_steps: int = 100,
                 learning_rate: float = 0.01, batch_size: int = 128, gates: bool = True,
                 mlp_sharing: bool = True, stacks_of: Mapping[str, frozenset[str]] = STACKS_OF) -> None:
        if local_steps < 1 or learning_rate <= 0 or batch_size < 1:
            raise ValueError("local_steps, learning_rate and batch_size must be positive")
        self.metrics, self.local_steps, self.learning_rate, self.batch_size = metrics, local_steps, learning_rate, batch_size
        self.aggregator = aggregator  # None: no key holder, clients upload nothing
        self.gates, self.mlp_sharing = gates, mlp_sharing
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
        """FedCola's coefficient for each MLP group published last round: the summed c_i
        of its members over the clients that uploaded then (same backbone and shape)."""
        uploaders = ctx.store.submissions.uploaders(ctx.run_id, ctx.round - 1, int(PayloadKind.UPDATE))
        out = {}
        for group in groups:
            key = GroupKey.parse(group)
            kind = mlp_kind(key.family)
            if kind is None:
                continue
            members = [Member(n, declared[n].kind, declared[n].pairs) for n in uploaders
                       if n in declared and key.declared_by(declared[n].backbone_sha256, declared[n].shape)]
            out[group] = math.fsum(coefficients(target_kind=kind, members=members, role="mlp",
                                                stack=key.stack, stacks_of=self.stacks_of).values())
            check_coefficients({group: out[group]})  # fail closed: never send one outside [0, 1]
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
                    upload += f"+{MLP_REQUEST}"
            downloads = previous if self.mlp_sharing else tuple(g for g in previous
                                                                if GroupKey.parse(g).family == ATTENTION_FAMILY)
            mine = {g: c for g, c in compensation.items()
                    if d is not None and GroupKey.parse(g).family == mlp_family(d.kind)
                    and GroupKey.parse(g).declared_by(d.backbone_sha256, d.shape)}
            downloads = tuple(g for g in downloads if mlp_kind(GroupKey.parse(g).family) is None or g in mine)
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


class ScorePlanner:
    """Public questions from the server's reward-evaluation part, each with its right
    answer and every wrong answer the task gives it (a closed answer set: every other
    answer; free text: the example's wrong answers) as candidates, so the clients' scores
    can be measured where the alignment will use them (:mod:`server.rewards.quality`),
    never on a client's share."""

    def __init__(self, *, task: Task, questions: Sequence[Example], metrics: MetricsLog, prompts_per_round: int = 32,
                 seed: int = 0) -> None:
        if not questions:
            raise ValueError("the public evaluation questions are empty")
        for q in questions:
            wrong_answers(task, q)  # raises for a free-text question without wrong answers
        self.task, self.questions, self.metrics, self.k, self.seed = task, list(questions), metrics, prompts_per_round, seed

    def _sample(self, ctx: PhaseContext) -> list[Example]:
        rng = random.Random(f"{self.seed}:{ctx.run_id}:{ctx.round}:{ctx.attempt}")
        return rng.sample(self.questions, min(self.k, len(self.questions)))

    def _candidates(self, q: Example) -> tuple[str, ...]:
        """The right answer first, then the wrong ones; item ``{id}:{k}`` is candidate k
        (an index, so that free text may hold any character)."""
        return (q.answer, *wrong_answers(self.task, q))

    def plan(self, ctx: PhaseContext, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        """Each client gets the questions it can judge (image-only clients: none of the
        task's question-dependent groups), every candidate answer of each."""
        items = []
        for q in self._sample(ctx):
            png = image_png(q.image)
            items += [(ScoreItem(item_id=f"{q.record_id}:{k}", prompt_id=q.record_id, image_png=png,
                                 question=q.question, completion=a), q.group)
                      for k, a in enumerate(self._candidates(q))]
        caps = {c.name: c.capabilities.modalities for c in ctx.store.client_infos()}
        specs: dict[str, TaskSpec] = {}
        for p in participants:
            image_only = caps.get(p) == (Modality.IMAGE,)
            mine = tuple(i for i, group in items if not (image_only and group in self.task.question_groups))
            specs[p] = ScoreSpec(items=mine, download_groups=published_groups(ctx, ctx.round))
        return specs

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        """Per client: the public-question metrics of :func:`reward_quality` (the same
        questions are drawn again from the round's seed, so a restart changes nothing)."""
        asked = {q.record_id: q for q in self._sample(ctx)}
        for sub in accepted:
            scores: dict[str, dict[int, float]] = {}
            for s in serde.stored_scores(sub.payload):
                prompt, _, k = s.item_id.rpartition(":")
                if prompt in asked and k.isdigit():
                    scores.setdefault(prompt, {})[int(k)] = s.value
            judged = []
            for p, by_index in scores.items():
                q = asked[p]
                candidates = self._candidates(q)
                if 0 not in by_index:
                    continue
                judged.append(JudgedQuestion(q.answer, {candidates[k]: v for k, v in by_index.items()
                                                        if k < len(candidates)},
                                             group=q.group, groups={a: group_of_answer(self.task, q, a)
                                                                    for a in candidates}))
            quality = reward_quality(judged)
            counts = {k: v for k, v in quality.items() if k.startswith("count.")}
            pairwise = sum(quality[f"pairwise.{k[6:]}"] * n for k, n in counts.items()) / max(1.0, sum(counts.values()))
            values = [v for by_index in scores.values() for v in by_index.values()]
            self.metrics.write({"run_id": ctx.run_id, "round": ctx.round, "phase": "score", "client": sub.client,
                                "prompts": len(judged), "ranking_accuracy": pairwise, **quality,
                                "mean_score": sum(values) / max(1, len(values)),
                                "finite": all(math.isfinite(v) for v in values)})


class LedgerReportPlanner(ReportLedgerPlanner):
    """REPORT_LEDGER, also writing each reported head to the metrics log, so the run
    report can show every client's ε over the rounds (what the server was told; the
    auditor checks the ledgers themselves)."""

    def __init__(self, *, metrics: MetricsLog) -> None:
        self.metrics = metrics

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        """Record the heads accepted in this phase."""
        for sub in accepted:
            if sub.payload_kind == int(PayloadKind.LEDGER_HEAD):
                head = serde.stored_ledger_head(sub.payload)
                self.metrics.write({"run_id": ctx.run_id, "round": ctx.round, "phase": "ledger", "client": sub.client,
                                    "seq": head.seq, "epsilon": head.epsilon, "epsilon_budget": head.epsilon_budget})
