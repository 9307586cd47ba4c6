"""What a federation aligns on: the task interface.

A task gives the server its public data (the prompt pool GRPO samples, the SFT seed set,
the router's preference set, the set the reward models and the policy's promotion gate are
judged on, and the public data backbones are pretrained on), says how the policy is
evaluated (a test split and a metric), and — only if it has one — its closed answer set.
The framework (core, client SDK, server, key holder) works on :class:`Example` records and
this protocol; which task a federation runs is chosen by the application layer
(``--task``), so no framework module imports a task (issue 25; an import-linter contract
in pyproject.toml says which modules still do, and the list only shrinks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from fedsecure.data.preferences import PreferencePair
from fedsecure.errors import KitError

#: The parts of a task's public training data the server uses, disjoint by image:
#: ``pool`` (GRPO prompts), ``seed`` (SFT warm start), ``router`` (the router's
#: preference lists), ``reward_eval`` (reward models and the promotion gate are judged
#: here, never trained on), ``pretrain`` (backbone and vision-tower pretraining).
ServerPart = Literal["pool", "seed", "router", "reward_eval", "pretrain"]
SERVER_PARTS: tuple[str, ...] = ("pool", "seed", "router", "reward_eval", "pretrain")


@dataclass(frozen=True)
class Example:
    """One question about one image with its one right answer, and the question's group
    (its type: per-group metrics and balancing read it, since an overall figure hides the
    rare groups behind the common one)."""

    record_id: str
    question: str
    answer: str
    group: str
    image: str = ""  # path of a PNG file; empty for a question without an image
    # wrong answers the task knows for this question (free text: one fact changed each);
    # empty for a task with a closed answer set, where every other answer is wrong
    rejected: tuple[str, ...] = ()


@runtime_checkable
class Task(Protocol):
    """A task the federation can align a policy on (see the module's docstring)."""

    @property
    def name(self) -> str:
        """The name ``--task`` selects and a kit is sealed for."""
        ...

    @property
    def answer_set(self) -> tuple[str, ...] | None:
        """The closed set of answers, or None for free-text answers."""
        ...

    def vocabulary(self) -> Sequence[str]:
        """The words of the task's text (questions and answers), from which every party
        builds the same word tokenizer for models without a pretrained backbone."""
        ...

    def group_of(self, answer: str) -> str:
        """The group (question type) an answer belongs to: one of the closed set, or, for a
        free-text task that can tell, a sentence of its own; raises ValueError otherwise."""
        ...

    @property
    def question_groups(self) -> frozenset[str]:
        """Groups whose answer depends on the question's text, not on the image alone
        ("is there a circle?"): an image-only model, which never reads the question, is not
        asked to judge them."""
        ...

    def server_part(self, name: ServerPart, *, seed: int = 0) -> Sequence[Example]:
        """One part of the server's public data (see :data:`ServerPart`)."""
        ...

    def simulated_pairs(self, *, client: str, clients: Sequence[str], kind: str, alpha: float = 0.5,
                        seed: int = 0) -> Sequence[PreferencePair]:
        """``client``'s share of a simulated federation of ``clients`` over the task's
        training data (Dirichlet(``alpha``) non-IID; only what ``kind`` can judge), as
        preference pairs: for demos, tests and benchmarks, never a real party's data."""
        ...

    def image_labels(self, example: Example) -> Mapping[str, str]:
        """What ``example``'s image shows, by attribute (e.g. a shape's colour, or
        its kind, from a colour or shape question; {} when the example tells nothing): the
        labels image stacks are pretrained on from the server's public examples."""
        ...

    @property
    def turns_keep_labels(self) -> bool:
        """Whether flipping or turning an image leaves its labels true (a shape's colour
        does; which shape is on the left does not): pretraining augments only then."""
        ...

    def test_examples(self) -> Sequence[Example]:
        """The test split the policy is evaluated on (never trained on by anyone)."""
        ...

    def correct(self, example: Example, completion: str) -> bool:
        """The evaluation metric: whether ``completion`` answers ``example`` right."""
        ...

    def answers_in_form(self, *, question: str, group: str, completion: str) -> bool:
        """Whether ``completion`` has the form of an answer to ``question`` (of ``group``),
        judged without knowing the answer: a sentence of the question's kind about what the
        question names. The server's label-free format check (GRPO ranks a completion out of
        form below every one in form, as it does one that never ends)."""
        ...


def normalise_answer(text: str) -> str:
    """Lowercase, single spaces, no surrounding punctuation: how a completion is compared
    with a reference answer by exact match."""
    return " ".join(text.lower().split()).strip(" .,!?'\"")


def wrong_answers(task: Task, example: Example) -> tuple[str, ...]:
    """The answers ``example`` is judged against: every other answer of the task's closed
    set, or the wrong answers a free-text task gives with the example. Raises ValueError
    for a free-text example without any (nothing to rank its answer above)."""
    if task.answer_set is not None:
        return tuple(a for a in task.answer_set if a != example.answer)
    if not example.rejected:
        raise ValueError(f"example {example.record_id} of free-text task {task.name!r} carries no wrong answers")
    return tuple(r for r in example.rejected if r != example.answer)


def group_of_answer(task: Task, example: Example, answer: str) -> str:
    """The group ``answer`` belongs to when it is offered for ``example``: its own group
    when the task can tell (a colour offered for a shape question is a colour; a count
    sentence offered for a colour question is a count), else the example's."""
    if task.answer_set is not None:
        return task.group_of(answer)
    try:
        return task.group_of(answer)
    except ValueError:
        return example.group


def public_labelled(task: Task, *, seed: int = 0) -> list[Example]:
    """The task's public examples the server may train on (the backbone's stacks, the
    policy's vision tower, the text-only baseline): the ``pretrain``, ``router``, ``pool``
    and ``seed`` parts — never ``reward_eval``, the held-out part reward models and the
    ALIGN stage are judged on, and never a client's share."""
    return [e for part in ("pretrain", "router", "pool", "seed") for e in task.server_part(part, seed=seed)]  # type: ignore[arg-type]


def balanced_by_group(examples: Sequence[Example], per_group: int, *,
                      counts: Mapping[str, int] | None = None) -> list[Example]:
    """The first ``per_group`` examples of each group, in their order: a common group
    (three-quarters of the built-in task's questions are yes/no, answered without looking
    at the image) would hide the rare ones in any overall figure (issue 24). ``counts``:
    groups that take another number than ``per_group`` (0: none)."""
    counts = dict(counts or {})
    if per_group < 1 or any(n < 0 for n in counts.values()):
        raise ValueError("per_group must be >= 1 and every count >= 0")
    taken: dict[str, int] = {}
    out = []
    for e in examples:
        if taken.get(e.group, 0) < counts.get(e.group, per_group):
            taken[e.group] = taken.get(e.group, 0) + 1
            out.append(e)
    return out


def balanced_by_answer(examples: Sequence[Example], per_group: int) -> list[Example]:
    """``per_group`` examples of each group, spread evenly over the group's answers (taken
    in turn, in the examples' order, while each lasts). A policy that gives one answer to
    every question of a group scores that group's chance level here, never that answer's
    share — the promotion gate is measured on such a set, so a collapse cannot pass for a
    gain (issue 24: collapsed to one shape, the policy read 0.39 → 0.50 on shape on
    unbalanced held-out questions and 0.48 → 0.28 on the test)."""
    if per_group < 1:
        raise ValueError("per_group must be >= 1")
    by_answer: dict[tuple[str, str], list[Example]] = {}
    for e in examples:
        by_answer.setdefault((e.group, e.answer), []).append(e)
    out: list[Example] = []
    for group in sorted({g for g, _ in by_answer}):
        queues = [by_answer[k] for k in sorted(by_answer) if k[0] == group]
        taken, depth = 0, 0
        while taken < per_group and any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q) and taken < per_group:
                    out.append(q[depth])
                    taken += 1
            depth += 1
    return out


@dataclass(frozen=True)
class SealedTask:
    """What a kit tells its party about the federation's task: its name, its closed answer
    set (empty: free text) and its words (for models without a pretrained backbone).
    Sealed by the CA with the rest of the kit, so a client cannot be pointed at another
    task's answers, and a server started on another task refuses the kit."""

    name: str
    answers: tuple[str, ...]
    vocabulary: tuple[str, ...]

    @classmethod
    def of(cls, task: Task) -> SealedTask:
        """The sealed form of ``task``."""
        return cls(name=task.name, answers=tuple(task.answer_set or ()), vocabulary=tuple(task.vocabulary()))

    def to_settings(self) -> dict[str, object]:
        """JSON-ready, for a kit's settings."""
        return {"name": self.name, "answers": list(self.answers), "vocabulary": list(self.vocabulary)}

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> SealedTask:
        """The task a kit's settings seal; raises KitError for a kit sealed before kits
        named their task, or with a malformed entry (fail closed: never guess a task)."""
        doc = settings.get("task")
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise KitError("the kit names no task (provisioned before tasks existed): provision the federation again")
        answers, vocabulary = doc.get("answers", []), doc.get("vocabulary", [])
        if not (isinstance(answers, list) and isinstance(vocabulary, list)
                and all(isinstance(x, str) for x in [*answers, *vocabulary])):
            raise KitError("the kit's task entry is malformed")
        return cls(name=doc["name"], answers=tuple(answers), vocabulary=tuple(vocabulary))

    def require(self, task: Task) -> None:
        """Raise KitError unless this kit was sealed for ``task``."""
        if self.name != task.name:
            raise KitError(f"the kit is sealed for task {self.name!r}, not {task.name!r}")
