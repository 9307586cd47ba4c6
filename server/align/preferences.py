"""The router's preference lists: the server's public lists (a question's right answer
above the wrong ones its task gives it), lists from the policy's own samples judged by
the task's metric (:func:`policy_lists`), and their layout as score items that look like
a GRPO step's groups (:class:`PreferenceItems`)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedsecure.task import Example, Task, group_of_answer, wrong_answers
from server.align.engine.prompts import Prompt, vqa_prompts
from server.align.engine.vqa_eval import Judge
from server.align.reward import MixtureReward
from server.align.router import PreferenceScores


@dataclass(frozen=True)
class PreferenceSet:
    """The server's public preference lists for the router: a prompt, its preferred (true)
    answer, the rejected (wrong) answers it must beat, and the type (for logs only)."""

    prompts: tuple[Prompt, ...]
    chosen: tuple[str, ...]
    rejected: tuple[tuple[str, ...], ...]
    groups: tuple[str, ...]
    # the group of each rejected answer (None: every rejected answer is of its list's group)
    rejected_groups: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self) -> None:
        if not len(self.prompts) == len(self.chosen) == len(self.rejected) == len(self.groups):
            raise ValueError("prompts, chosen, rejected and groups must have one entry per list")
        if self.rejected_groups is not None and [len(g) for g in self.rejected_groups] != [len(r) for r in self.rejected]:
            raise ValueError("rejected_groups must name the group of every rejected answer")
        for c, r in zip(self.chosen, self.rejected, strict=True):
            if not r or c in r or len(set(r)) != len(r):
                raise ValueError(f"the rejected answers of {c!r} must be distinct, non-empty and exclude it")

    @classmethod
    def from_records(cls, records: Sequence[Example], *, processor: object, task: Task) -> PreferenceSet:
        """One list per record: the true answer against every wrong answer the task gives
        it (:func:`fedsecure.task.wrong_answers`) — with a closed answer set, every other
        answer, of its own type and of the others. GRPO's completions can be any answer,
        so the router must learn whom to trust on both kinds of mistake (measured: fit on
        same-type pairs only, it trusted clients that prefer a wrong *type*, and GRPO on
        its fusion lost every colour question). A free-text task's wrong answers are of
        the question's own group (one fact changed)."""
        prompts = vqa_prompts(records, processor=processor)
        rejected = tuple(wrong_answers(task, r) for r in records)
        return cls(prompts=tuple(prompts), chosen=tuple(r.answer for r in records), rejected=rejected,
                   groups=tuple(r.group for r in records),
                   rejected_groups=tuple(tuple(group_of_answer(task, r, a) for a in wrong)
                                         for r, wrong in zip(records, rejected, strict=True)))


def policy_lists(prompts: Sequence[Prompt], completions: Sequence[str], *, group_size: int,
                 judge: Judge) -> tuple[PreferenceSet | None, tuple[bool, ...], dict[str, float]]:
    """Preference lists from the policy's own samples (``group_size`` per prompt, in order)
    on public prompts with a reference: a right sample (the most frequent; the reference
    when none is right) above the distinct wrong ones, judged by ``judge`` (the task's
    metric). A prompt whose samples are all right gives no list. Also, per list, whether
    its preferred answer is one of the policy's samples (only those lists show whether
    the reward can rank what GRPO compares: the reference above wrong samples is easy,
    and measured on scenes it passed a type whose samples were all wrong, which GRPO then
    lost), and the share of right samples per group (the policy's accuracy, as sampled)."""
    if len(completions) != len(prompts) * group_size:
        raise ValueError("group_size completions per prompt are needed")
    keep: list[tuple[Prompt, str, tuple[str, ...]]] = []
    sampled: list[bool] = []
    right: dict[str, list[float]] = {}
    for i, p in enumerate(prompts):
        texts = [c.strip() for c in completions[i * group_size:(i + 1) * group_size]]
        verdicts = [judge(p, t) for t in texts]
        right.setdefault(p.group or "", []).extend(float(v) for v in verdicts)
        wrong = tuple(dict.fromkeys(t for t, v in zip(texts, verdicts, strict=True) if not v and t))
        good = [t for t, v in zip(texts, verdicts, strict=True) if v and t]
        chosen = max(dict.fromkeys(good), key=good.count) if good else (p.answer or "")
        wrong = tuple(t for t in wrong if t != chosen)
        if wrong and chosen:
            keep.append((p, chosen, wrong))
            sampled.append(bool(good))
    share = {g: round(sum(v) / len(v), 4) for g, v in right.items()}
    if not keep:
        return None, (), share
    return (PreferenceSet(prompts=tuple(p for p, _, _ in keep), chosen=tuple(c for _, c, _ in keep),
                          rejected=tuple(r for _, _, r in keep), groups=tuple(p.group or "" for p, _, _ in keep)),
            tuple(sampled), share)


def joined(first: PreferenceSet, second: PreferenceSet) -> PreferenceSet:
    """Both sets' lists, ``first``'s then ``second``'s (the groups of rejected answers kept:
    a list without them has every rejected answer of its own group)."""
    def rejected_groups(s: PreferenceSet) -> tuple[tuple[str, ...], ...]:
        return s.rejected_groups or tuple((g,) * len(r) for g, r in zip(s.groups, s.rejected, strict=True))

    return PreferenceSet(prompts=first.prompts + second.prompts, chosen=first.chosen + second.chosen,
                         rejected=first.rejected + second.rejected, groups=first.groups + second.groups,
                         rejected_groups=rejected_groups(first) + rejected_groups(second))


@dataclass(frozen=True)
class PreferenceItems:
    """The preference set laid out as score items. With a ``group_size`` they look like a
    GRPO group: each prompt carries ``group_size`` completions — its preferred answer and
    a random number (1 … group_size − 1) of its rejected ones drawn at random, repeated at
    random to fill the group, as a policy's samples repeat — under an internal prompt id
    that never collides with the pool's. Without one, every candidate once (the
    experiments' harness). ``lists[m]`` = items of list m's candidates, preferred first."""

    prompts: tuple[Prompt, ...]
    completions: tuple[str, ...]
    lists: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, prefs: PreferenceSet, *, group_size: int | None) -> PreferenceItems:
        """Lay ``prefs`` out. Every choice is drawn from the system's CSPRNG: a client must
        not predict which answers are candidates, how many, or which repeat (issue 23
        item 1: router items must not be told apart from the policy's)."""
        if group_size is not None and group_size < 2:
            raise ValueError("a group holds at least the preferred answer and one rejected answer")
        rng = random.SystemRandom()
        prompts: list[Prompt] = []
        completions: list[str] = []
        lists: list[tuple[int, ...]] = []
        for m, (p, chosen, rejected) in enumerate(zip(prefs.prompts, prefs.chosen, prefs.rejected, strict=True)):
            if group_size is None:
                slots = [chosen, *rejected]
            else:
                distinct = [chosen, *rng.sample(rejected, rng.randint(1, min(group_size - 1, len(rejected))))]
                slots = distinct + [rng.choice(distinct) for _ in range(group_size - len(distinct))]
                rng.shuffle(slots)
            base = len(completions)
            prompts += [dataclasses.replace(p, prompt_id=f"preference:{m}:{p.prompt_id}")] * len(slots)
            completions += slots
            candidates = list(dict.fromkeys(slots))
            candidates.remove(chosen)
            lists.append(tuple(base + slots.index(a) for a in (chosen, *candidates)))
        return cls(prompts=tuple(prompts), completions=tuple(completions), lists=tuple(lists))

    def same_group(self, prefs: PreferenceSet) -> torch.Tensor:
        """(M, K) which candidates of each list (padded like :meth:`scores`) are of the
        list's own group: the preferred answer, and the rejected answers whose group
        (``prefs.rejected_groups``; all, without it) is the list's."""
        width = max(len(x) for x in self.lists)
        out = torch.zeros(len(self.lists), width, dtype=torch.bool)
        for m, items in enumerate(self.lists):
            same = {prefs.chosen[m]} | {a for k, a in enumerate(prefs.rejected[m])
                                        if prefs.rejected_groups is None or prefs.rejected_groups[m][k] == prefs.groups[m]}
            for k, item in enumerate(items):
                out[m, k] = self.completions[item] in same
        return out

    def scores(self, raw: torch.Tensor, answered: torch.Tensor, features: torch.Tensor) -> PreferenceScores:
        """The clients' scores of the lists, from their scores of these items ((C, N) each)."""
        width = max(len(x) for x in self.lists)
        index = torch.tensor([list(x) + [x[0]] * (width - len(x)) for x in self.lists])  # (M, K), padded
        present = torch.tensor([[k < len(x) for k in range(width)] for x in self.lists])
        ans = answered.bool()[:, index] & present
        complete = (ans | ~present).all(-1)  # (C, M)
        return PreferenceScores(features=features, scores=raw[:, index], answered=ans, present=present,
                                capable=complete.T.clone())


def score_preferences(reward: MixtureReward, prefs: PreferenceSet) -> PreferenceScores:
    """Every client scores every candidate of every list it can judge, in one exchange of
    its own (the experiments' harness; the stage mixes its items into a GRPO step)."""
    layout = PreferenceItems.of(prefs, group_size=None)
    _, _, raw, answered, _ = reward.collect(layout.prompts, layout.completions, grace=False)
    return layout.scores(raw, answered, reward.prompt_features(prefs.prompts))
