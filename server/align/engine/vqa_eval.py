"""Accuracy of a policy on a task's test split (greedy decoding) by the task's own metric
(:meth:`fedsecure.task.Task.correct`: exact match for a closed answer set, facts read out of
the text for free-text tasks), per question group, and the same metric as a reward: a check the
server can compute itself on prompts whose answer it holds, used to prove the engine
(client rewards replace it in the federated round)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsecure.task import Example, Task, normalise_answer
from server.align.engine.devices import select_placement
from server.align.engine.policy import (
    Policy,
    decode_completion,
    tokenizer_decoder,
    vlm_suppressed_ids,
)
from server.align.engine.prompts import Prompt, collate_prompts, vqa_prompts
from server.align.engine.rollouts import SamplingConfig, generate



#: Whether a completion answers a prompt right (the prompt holds its reference answer).
Judge = Callable[[Prompt, str], bool]


def _reference(p: Prompt) -> str:
    if p.answer is None:
        raise ValueError(f"prompt {p.prompt_id} has no reference answer to match")
    return p.answer


def exact_match(prompt: Prompt, completion: str) -> bool:
    """The completion is the prompt's reference answer (normalised)."""
    return normalise_answer(completion) == normalise_answer(_reference(prompt))


def task_judge(task: Task) -> Judge:
    """``task``'s metric on a prompt (the prompt's id, question, answer and group stand for
    the example)."""
    def judge(p: Prompt, completion: str) -> bool:
        return task.correct(Example(record_id=p.prompt_id, question=p.question, answer=_reference(p),
                                    group=p.group or ""), completion)
    return judge


def task_answer_form(task: Task) -> Callable[[Prompt, str], bool]:
    """``task``'s label-free format check on a prompt (:meth:`Task.answers_in_form`); a
    prompt of no known group (a question the server holds no type for) is not checked."""
    def in_form(p: Prompt, completion: str) -> bool:
        return p.group is None or task.answers_in_form(question=p.question, group=p.group, completion=completion)
    return in_form


def judge_reward(judge: Judge) -> Callable[[Sequence[Prompt], Sequence[str]], list[float]]:
    """A reward of 1.0 where ``judge`` calls the completion right, else 0.0."""
    def reward(prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        return [float(judge(p, c)) for p, c in zip(prompts, completions, strict=True)]
    return reward


exact_match_reward = judge_reward(exact_match)
"""1.0 where the completion is the prompt's reference answer, else 0.0."""


def answer_budget(processor: Any, task: Task, *, slack: int = 2) -> int:
    """New tokens a completion may take: the longest answer of the task's public prompt
    pool (with its end token) plus ``slack`` — 4 for one-word answers, more
    for sentences. The same for training, the monitor and every evaluation of a task."""
    from fedsecure.models.policy_vlm import encode_answer

    lengths = [len(encode_answer(processor, e.answer)) for e in task.server_part("pool")]
    if not lengths:
        raise ValueError(f"task {task.name!r} has an empty prompt pool")
    return max(lengths) + slack


@dataclass(frozen=True)
class EvalResult:
    """Accuracy overall and per question group (type; "other" for a prompt without one), and how many prompts."""

    accuracy: float
    count: int
    by_type: dict[str, float]
    # how many prompts of each group: a per-type figure is read with its noise (a result
    # saved before this field existed reads back with none)
    by_type_count: dict[str, int] = field(default_factory=dict)


def eval_prompts(processor: Any, *, task: Task, limit: int | None = None, seed: int = 0) -> list[Prompt]:
    """The task's test split (or a seeded subset of ``limit`` questions), encoded."""
    records = list(task.test_examples())
    if limit is not None and limit < len(records):
        rng = np.random.default_rng(seed)
        records = [records[i] for i in sorted(rng.choice(len(records), size=limit, replace=False))]
    return vqa_prompts(records, processor=processor)


def text_only_answers(records: Sequence[Any]) -> dict[str, str]:
    """The most common answer for each question text in ``records`` (ties: the
    alphabetically first): what a model that never looks at the image can reach. Three
    quarters of the built-in task's test questions are yes/no and this alone answers most of them
    (issue 24), so every table of policy accuracy shows it next to the methods."""
    counts: dict[str, Counter[str]] = {}
    for r in records:
        counts.setdefault(normalise_answer(r.question), Counter())[normalise_answer(r.answer)] += 1
    return {q: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for q, c in counts.items()}


def evaluate_text_only(prompts: Sequence[Prompt], answers_by_question: dict[str, str], *,
                       judge: Judge = exact_match) -> EvalResult:
    """:func:`text_only_answers` on ``prompts`` judged by ``judge`` (an unseen question
    text counts as a miss), per answer type like :func:`evaluate`."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for p in prompts:
        if p.answer is None:
            raise ValueError(f"prompt {p.prompt_id} has no reference answer to match")
        kind = p.group or "other"
        totals[kind] += 1
        answer = answers_by_question.get(normalise_answer(p.question))
        hits[kind] += int(answer is not None and judge(p, answer))
    return _result(hits, totals)


def _result(hits: Counter[str], totals: Counter[str]) -> EvalResult:
    count = sum(totals.values())
    return EvalResult(accuracy=sum(hits.values()) / max(count, 1), count=count,
                      by_type={k: hits[k] / totals[k] for k in sorted(totals)},
                      by_type_count={k: totals[k] for k in sorted(totals)})


def evaluate_policy(policy: Policy, prompts: Sequence[Prompt], **kwargs: Any) -> EvalResult:
    """:func:`evaluate` with the policy's own decoder and token ids."""
    return evaluate(policy.model, prompts=prompts, decode=policy.decode, eos_id=policy.eos_id, pad_id=policy.pad_id,
                    autocast=policy.placement.autocast, suppressed=policy.suppressed, **kwargs)


def evaluate(model: torch.nn.Module, *, prompts: Sequence[Prompt], decode: Any, eos_id: int, pad_id: int,
             batch_size: int = 128, max_new_tokens: int = 4, autocast: torch.dtype | None = None,
             suppressed: torch.Tensor | None = None, judge: Judge = exact_match) -> EvalResult:
    """Greedy-decode an answer for every prompt and score it by ``judge`` (the task's metric)."""
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        out = generate(model, collate_prompts(chunk, pad_id=pad_id), group_size=1, config=greedy,
                       eos_id=eos_id, pad_id=pad_id, autocast=autocast, suppressed=suppressed)
        texts = [decode(row) for row in out.completion_ids.tolist()]
        for p, text in zip(chunk, texts, strict=True):
            kind = p.group or "other"
            totals[kind] += 1
            hits[kind] += int(judge(p, text))
    return _result(hits, totals)


def evaluate_checkpoint(path: Path, *, task: Task, limit: int | None = None, seed: int = 0,
                        device: str = "auto") -> EvalResult:
    """Load any local vision-language checkpoint and measure its accuracy by ``task``'s metric."""
    from fedsecure.models.policy_vlm import load_policy

    model, processor = load_policy(path)
    placement = select_placement(device)
    model = model.to(placement.device)
    tok = processor.tokenizer
    suppressed = torch.tensor(vlm_suppressed_ids(processor), dtype=torch.long, device=placement.device)

    def decode(row: Sequence[int]) -> str:
        return decode_completion(row, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                                 decode_ids=tokenizer_decoder(tok))
    prompts = eval_prompts(processor, task=task, limit=limit, seed=seed)
    return evaluate(model, prompts=prompts, decode=decode, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                    autocast=placement.autocast, suppressed=suppressed, judge=task_judge(task),
                    max_new_tokens=answer_budget(processor, task))
