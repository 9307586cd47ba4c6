"""The scenes task: free-text answers judged by the facts they state, wrong answers with
one fact changed, server parts disjoint by image from each other and from the clients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsecure.task import SERVER_PARTS, Example, Task, wrong_answers
from tasks import get_task
from tasks.scenes.scene import COLOURS, SHAPES, Scene, Thing, random_scene, render
from tasks.scenes.text import facts, group_of_sentence, questions, states_the_facts
from tasks.scenes.text import wrong_answers as scene_wrong_answers

SCENE = Scene((Thing("red", "circle", "left"), Thing("blue", "square", "right")))


def test_the_task_is_known_and_has_no_closed_answer_set() -> None:
    task = get_task("scenes")
    assert isinstance(task, Task) and task.answer_set is None
    assert {"circle", "red", "left", "describe"} <= set(task.vocabulary())
    assert [task.group_of(a) for a in ("there is one shape.", "the circle is red.", "the red circle is in the middle.",
                                       "an orange square and a red circle.")] == ["count", "color", "position", "describe"]
    with pytest.raises(ValueError, match="not a sentence"):
        task.group_of("the sky is blue today")


@pytest.mark.parametrize("group, reference, completion, right", [
    ("count", "there are two shapes.", "there are two shapes.", True),
    ("count", "there are two shapes.", "2 shapes", True),
    ("count", "there are two shapes.", "there are three shapes.", False),
    ("count", "there are two shapes.", "two or three", False),
    ("color", "the circle is red.", "it is red", True),
    ("color", "the circle is red.", "the circle is red and blue", False),
    ("color", "the circle is red.", "the triangle is red", False),  # a shape the question did not name
    ("position", "the red circle is on the left.", "left", True),
    ("position", "the red circle is on the left.", "the red circle is in the middle.", False),
    ("describe", "a red circle and a blue square.", "a blue square and a red circle", True),
    ("describe", "a red circle and a blue square.", "a red circle.", False),  # one left out
    ("describe", "a red circle and a blue square.", "a red circle, a blue square and a red circle.", False),
    ("describe", "a red circle and a blue square.", "a red circle and a green square.", False),
])
def test_a_completion_is_right_when_it_states_the_facts_and_invents_none(group: str, reference: str,
                                                                        completion: str, right: bool) -> None:
    assert states_the_facts(group, reference, completion) is right


def test_facts_are_read_out_of_text() -> None:
    got = facts("A Red circle, and 2 BLUE squares on the left.")
    assert got == {"numbers": [2], "colours": ["red", "blue"], "shapes": ["circle", "square"],
                   "positions": ["left"], "things": [("red", "circle"), ("blue", "square")]}


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_question_of_any_scene_is_answered_right_and_every_wrong_answer_is_wrong(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    for group, question, answer in questions(scene):
        assert states_the_facts(group, answer, answer), (question, answer)
        assert group_of_sentence(answer) == group
        wrong = scene_wrong_answers(scene, group, question, rng)
        assert wrong and answer not in wrong and len(set(wrong)) == len(wrong)
        for w in wrong:
            assert not states_the_facts(group, answer, w), (question, answer, w)
        # one fact changed (same form), then at most one that answers another question
        same = [group_of_sentence(w) == group for w in wrong]
        assert same[0] and same in ([True] * len(wrong), [True] * (len(wrong) - 1) + [False])
    image = render(scene, rng)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_questions_name_a_shape_only_when_it_is_unambiguous() -> None:
    twins = Scene((Thing("red", "circle", "left"), Thing("red", "circle", "right")))
    asked = {q for _, q, _ in questions(twins)}
    assert asked == {"how many shapes are there?", "describe the image."}
    asked = dict((q, a) for _, q, a in questions(SCENE))
    assert asked["what color is the square?"] == "the square is blue."
    assert asked["where is the red circle?"] == "the red circle is on the left."
    assert asked["describe the image."] == "a red circle and a blue square."
    assert set(COLOURS) >= {"red", "blue"} and "circle" in SHAPES


def test_server_parts_and_client_shares_are_disjoint_by_image() -> None:
    task = get_task("scenes")
    images: dict[str, set[str]] = {p: {e.image for e in task.server_part(p)} for p in SERVER_PARTS}  # type: ignore[arg-type]
    clients = ["a", "b", "c"]
    for c in clients:
        images[c] = {p.image for p in task.simulated_pairs(client=c, clients=clients, kind="image_text")}
    names = list(images)
    for i, a in enumerate(names):
        assert images[a], a
        for b in names[i + 1:]:
            assert not images[a] & images[b], (a, b)
    test_images = {e.image for e in task.test_examples()}
    assert not test_images & set().union(*images.values())


def test_simulated_pairs_carry_every_wrong_answer_and_image_clients_get_no_named_shape() -> None:
    task = get_task("scenes")
    pairs = task.simulated_pairs(client="a", clients=["a", "b"], kind="image_text")
    by_record: dict[str, set[str]] = {}
    for p in pairs:
        by_record.setdefault(p.record_id, set()).add(p.rejected)
    examples = {e.record_id: e for e in task.server_part("pool")}  # any example shows its wrong answers
    assert max(len(v) for v in by_record.values()) == 4
    image_only = task.simulated_pairs(client="a", clients=["a", "b"], kind="image")
    assert image_only and {p.question for p in image_only} == {"how many shapes are there?", "describe the image."}
    example = next(iter(examples.values()))
    assert wrong_answers(task, example) == example.rejected


def test_a_free_text_example_without_wrong_answers_cannot_be_judged() -> None:
    task = get_task("scenes")
    with pytest.raises(ValueError, match="carries no wrong answers"):
        wrong_answers(task, Example(record_id="x", question="q", answer="a", group="count"))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_right_answer_is_in_form_and_so_is_every_same_kind_wrong_one(seed: int) -> None:
    """The format check needs no answer: every right answer and every wrong one of the
    question's kind passes it (it cannot tell right from wrong), the off-topic one does not."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    task = get_task("scenes")
    for group, question, answer in questions(scene):
        assert task.answers_in_form(question=question, group=group, completion=answer), (question, answer)
        for w in scene_wrong_answers(scene, group, question, rng):
            same_kind = group_of_sentence(w) == group
            assert task.answers_in_form(question=question, group=group, completion=w) == same_kind, (question, w)


@pytest.mark.parametrize(("group", "question", "completion"), [
    ("color", "what color is the circle?", "the square is yellow ."),  # about another shape
    ("count", "how many shapes are there?", "there are two ."),  # broken off
    ("position", "where is the green circle?", "the blue square is on the right ."),  # another thing
    ("position", "where is the green circle?", "the green circle is on the ."),  # no place
    ("describe", "describe the image.", "a red circle and ."),  # broken off
    ("color", "what color is the circle?", "the circle is yellow"),  # no full stop
    ("color", "what color is the circle?", "there is one shape."),  # another kind
    ("count", "how many shapes are there?", "lorem ipsum"),  # not a sentence of the task
])
def test_answers_out_of_form_are_recognised_without_the_answer(group: str, question: str, completion: str) -> None:
    assert not get_task("scenes").answers_in_form(question=question, group=group, completion=completion)


def test_easyvqa_answers_in_form_are_its_answers_of_the_questions_type() -> None:
    task = get_task("easyvqa")
    assert task.answers_in_form(question="what color is the shape?", group="color", completion="Red.")
    assert not task.answers_in_form(question="what color is the shape?", group="color", completion="circle")
    assert not task.answers_in_form(question="is there a circle?", group="yesno", completion="maybe")
