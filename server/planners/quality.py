"""How well a reward model judges the server's own public questions (docs/design.md §5):
every candidate answer of the vocabulary is scored for each question, and per question
type (colour, shape, yes/no) we report

- ``top1_all``: the correct answer scores strictly above every other answer;
- ``top1_type``: the correct answer scores strictly above every other answer of its type;
- ``pairwise``: the share of same-type wrong answers scored below the correct one (a tie
  counts one half, so a constant model scores 0.5);
- ``typed_first``: the top-scored answer has the question's type (what a text-only model,
  which cannot see the image, can at best get right).

Ties at the top count as wrong: a model that cannot tell answers apart must not look
right by accident. These are measured on public questions, never on a client's own
(label-skewed) share, where a prior-only model can look accurate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

METRICS = ("top1_all", "top1_type", "pairwise", "typed_first")


@dataclass(frozen=True)
class JudgedQuestion:
    """One public question: its correct answer and the score of every answer judged;
    for a free-text task, also the question's group and each answer's (a closed answer
    set names an answer's group by itself: see :func:`reward_quality`'s ``group_of``)."""

    truth: str
    scores: Mapping[str, float]
    group: str | None = None
    groups: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.truth not in self.scores:
            raise ValueError(f"the correct answer {self.truth!r} was not scored")
        if (self.group is None) != (self.groups is None):
            raise ValueError("give both the question's group and its answers' groups, or neither")


def _strictly_first(scores: Mapping[str, float], truth: str, among: Sequence[str]) -> float:
    top = scores[truth]
    return float(all(scores[a] < top for a in among if a != truth))


def reward_quality(questions: Sequence[JudgedQuestion], *,
                   group_of: Callable[[str], str] | None = None) -> dict[str, float]:
    """``{metric}.{type}`` for each metric and question type present, plus ``count.{type}``;
    ``group_of`` names the type of each answer of the task's closed answer set (a question
    that names its own groups is read by those instead)."""
    sums: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for q in questions:
        if q.groups is not None and q.group is not None:
            named = q.groups
            kind = q.group
            def group(a: str) -> str:
                return named[a]
        elif group_of is not None:
            group = group_of
            kind = group_of(q.truth)
        else:
            raise ValueError("a question without groups needs the task's group_of")
        same_type = [a for a in q.scores if group(a) == kind]
        wrong = [a for a in same_type if a != q.truth]
        best = max(q.scores.values())
        leaders = [a for a, s in q.scores.items() if s == best]
        counts[kind] += 1
        sums["top1_all", kind] += _strictly_first(q.scores, q.truth, list(q.scores))
        sums["top1_type", kind] += _strictly_first(q.scores, q.truth, same_type)
        if wrong:
            t = q.scores[q.truth]
            sums["pairwise", kind] += sum(1.0 if q.scores[w] < t else 0.5 if q.scores[w] == t else 0.0
                                          for w in wrong) / len(wrong)
        sums["typed_first", kind] += float(len(leaders) == 1 and group(leaders[0]) == kind)
    out = {f"{metric}.{kind}": sums[metric, kind] / n for kind, n in counts.items() for metric in METRICS}
    out.update({f"count.{kind}": float(n) for kind, n in counts.items()})
    return out
