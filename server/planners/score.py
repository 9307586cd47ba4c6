"""The SCORE phase planner: public questions from the server's reward-evaluation part
with every candidate answer; since the server knows the right ones, it measures how well
each client's scores judge them (:mod:`server.planners.quality`)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from fedsecure import serde
from fedsecure.data.images import image_png
from fedsecure.task import Example, Task, group_of_answer, wrong_answers
from fedsecure.types import (
    Modality,
    ScoreItem,
    ScoreSpec,
    TaskSpec,
)
from server.planners.metrics import MetricsLog
from server.planners.quality import JudgedQuestion, reward_quality
from server.rounds.phases import PhaseContext, published_groups
from server.rounds.store import SubmissionRow


class ScorePlanner:
    """Public questions from the server's reward-evaluation part, each with its right
    answer and every wrong answer the task gives it (a closed answer set: every other
    answer; free text: the example's wrong answers) as candidates, so the clients' scores
    can be measured where the alignment will use them (:mod:`server.planners.quality`),
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
