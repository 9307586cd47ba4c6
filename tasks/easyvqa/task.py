"""easy-VQA behind the task interface (:class:`fedsecure.task.Task`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedsecure.task import SERVER_PARTS, Example, ServerPart, normalise_answer
from tasks.easyvqa.data import answer_type, answers, load_records, vocabulary
from fedsecure.data.preferences import PreferencePair
from tasks.easyvqa.shares import client_pairs, server_part, server_records


@dataclass(frozen=True)
class EasyVQA:
    """easy-VQA: a closed set of 13 answers, grouped by type (colour, shape, yes/no);
    the policy is judged by exact match of its normalised answer on the test split."""

    name: str = "easyvqa"

    @property
    def answer_set(self) -> tuple[str, ...]:
        """The 13 answers, in the package's order."""
        return answers()

    def vocabulary(self) -> tuple[str, ...]:
        """Every word of easy-VQA's questions and answers."""
        return vocabulary()

    def group_of(self, answer: str) -> str:
        """'color', 'shape' or 'yesno'; ValueError for an answer outside the set."""
        return answer_type(answer)

    @property
    def question_groups(self) -> frozenset[str]:
        """Yes/no: "is there a circle?" has no answer without the question."""
        return frozenset({"yesno"})

    def server_part(self, name: ServerPart, *, seed: int = 0) -> Sequence[Example]:
        """One of the server's public parts, disjoint by image from every client's share."""
        if name not in SERVER_PARTS:
            raise ValueError(f"no server part {name!r}; choose one of {SERVER_PARTS}")
        if name in ("pool", "seed"):
            pool, seed_set = server_records(seed=seed)
            return pool if name == "pool" else seed_set
        return server_part(name, seed=seed)

    def simulated_pairs(self, *, client: str, clients: Sequence[str], kind: str, alpha: float = 0.5,
                        seed: int = 0) -> Sequence[PreferencePair]:
        """``client``'s Dirichlet share of easy-VQA's training questions."""
        return client_pairs(name=client, clients=clients, kind=kind, alpha=alpha, seed=seed)

    def image_labels(self, example: Example) -> Mapping[str, str]:
        """The colour or the kind of the image's one shape, from a colour or shape question."""
        return {example.group: example.answer} if example.group in ("color", "shape") else {}

    @property
    def turns_keep_labels(self) -> bool:
        """True: a flipped or turned shape keeps its colour and kind."""
        return True

    def test_examples(self) -> Sequence[Example]:
        """The easy-VQA test split."""
        return load_records("test")

    def correct(self, example: Example, completion: str) -> bool:
        """Exact match after lowercasing, collapsing spaces and stripping punctuation."""
        return normalise_answer(completion) == normalise_answer(example.answer)

    def answers_in_form(self, *, question: str, group: str, completion: str) -> bool:
        """One of easy-VQA's answers of the question's type (a colour to "what color …")."""
        try:
            return answer_type(normalise_answer(completion)) == group
        except ValueError:
            return False


TASK = EasyVQA()
