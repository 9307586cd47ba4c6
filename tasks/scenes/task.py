"""Scenes behind the task interface (:class:`fedsecure.task.Task`): free-text answers,
judged by the facts they state."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedsecure.data.preferences import PreferencePair
from fedsecure.task import SERVER_PARTS, Example, ServerPart
from tasks.scenes.data import SIZES, image_labels, load_examples
from tasks.scenes.text import (
    QUESTION_GROUPS,
    answers_in_form,
    facts,
    group_of_sentence,
    states_the_facts,
    vocabulary,
)

# Shares of the train split's images for the server's public parts (the rest: clients)
PART_FRACTIONS: dict[str, float] = {"pretrain": 0.125, "router": 0.025, "reward_eval": 0.07, "pool": 0.10,
                                    "seed": 0.03}


@functools.cache
def _parts(seed: int) -> dict[str, frozenset[int]]:
    """Scene numbers of each server part and of the clients ("clients"), disjoint."""
    order = np.random.default_rng([seed, 7]).permutation(SIZES["train"]).tolist()
    out, at = {}, 0
    for name, fraction in PART_FRACTIONS.items():
        n = int(round(fraction * SIZES["train"]))
        out[name] = frozenset(order[at:at + n])
        at += n
    out["clients"] = frozenset(order[at:])
    return out


def _scene_of(example: Example) -> int:
    return int(example.record_id.split("-")[2])


@dataclass(frozen=True)
class Scenes:
    """Synthetic scenes of one to three coloured shapes with questions about counts,
    colours and places and a description; answers are sentences, and a completion is
    right when it states the reference answer's facts and invents none
    (:func:`tasks.scenes.text.states_the_facts`)."""

    name: str = "scenes"

    @property
    def answer_set(self) -> None:
        """None: answers are free text."""
        return None

    def vocabulary(self) -> tuple[str, ...]:
        """Every word of the task's questions and answers."""
        return vocabulary()

    def group_of(self, answer: str) -> str:
        """The kind of question a sentence of this task answers (its form tells); ValueError
        for any other text."""
        return group_of_sentence(answer)

    @property
    def question_groups(self) -> frozenset[str]:
        """Colour and place questions name the shape they ask about."""
        return QUESTION_GROUPS

    def server_part(self, name: ServerPart, *, seed: int = 0) -> Sequence[Example]:
        """One of the server's public parts, disjoint by image from every other part and
        from every client's share."""
        if name not in SERVER_PARTS:
            raise ValueError(f"no server part {name!r}; choose one of {SERVER_PARTS}")
        scenes = _parts(seed)[name]
        return [e for e in load_examples("train") if _scene_of(e) in scenes]

    def simulated_pairs(self, *, client: str, clients: Sequence[str], kind: str, alpha: float = 0.5,
                        seed: int = 0) -> Sequence[PreferencePair]:
        """``client``'s share: the clients' scenes, each whole to one client, split with
        Dirichlet(``alpha``) proportions per kind of scene (its number of shapes and its
        first shape's colour: non-IID by content), one pair per wrong answer (a record
        carries all of them); image-only clients get no question that names a shape."""
        if client not in clients:
            raise ValueError(f"{client} is not one of the federation's clients {list(clients)}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        names = sorted(clients)
        rng = np.random.default_rng([seed, 11])
        by_scene: dict[int, list[Example]] = {}
        scenes = _parts(seed)["clients"]
        for e in load_examples("train"):
            if _scene_of(e) in scenes:
                by_scene.setdefault(_scene_of(e), []).append(e)
        kinds: dict[tuple[int, str], list[int]] = {}
        for number, examples in sorted(by_scene.items()):
            things = facts(next(e for e in examples if e.group == "describe").answer)["things"]
            kinds.setdefault((len(things), things[0][0]), []).append(number)  # type: ignore[arg-type, index]
        owned: set[int] = set()
        for key in sorted(kinds):
            members = kinds[key]
            order = rng.permutation(len(members))
            cuts = (np.cumsum(rng.dirichlet([alpha] * len(names)))[:-1] * len(members)).astype(int)
            owned.update(members[i] for i in np.split(order, cuts)[names.index(client)].tolist())
        mine = [e for number in sorted(owned) for e in by_scene[number]]
        if kind == "image":
            mine = [e for e in mine if e.group not in QUESTION_GROUPS]
        return [PreferencePair(record_id=e.record_id, question=e.question, chosen=e.answer, rejected=r,
                               image=e.image, hard=True) for e in mine for r in e.rejected]

    def image_labels(self, example: Example) -> Mapping[str, str]:
        """The image's number of shapes and what sits in each third ("red circle" or
        "nothing"), whatever the question."""
        return image_labels(example.image)

    @property
    def turns_keep_labels(self) -> bool:
        """False: a flip moves the left shape to the right."""
        return False

    def test_examples(self) -> Sequence[Example]:
        """The test split (its own scenes)."""
        return load_examples("test")

    def correct(self, example: Example, completion: str) -> bool:
        """Whether ``completion`` states the facts of ``example``'s answer and invents none."""
        return states_the_facts(example.group, example.answer, completion)

    def answers_in_form(self, *, question: str, group: str, completion: str) -> bool:
        """A sentence of the question's kind about the shape the question names (one count,
        one colour, one place; a description names each thing by colour and shape)."""
        return answers_in_form(group, question, completion)


TASK = Scenes()
