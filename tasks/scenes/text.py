"""Questions about a scene, answers as sentences, wrong answers with one fact changed,
and the metric: facts read back out of any text (never string equality).

Groups: ``count`` ("how many shapes are there?"), ``color`` ("what color is the
circle?"), ``position`` ("where is the red circle?") and ``describe`` ("describe the
image."). ``color`` and ``position`` name a shape in the question, so only a model that
reads the question can judge them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from tasks.scenes.scene import COLOURS, MAX_OBJECTS, POSITIONS, SHAPES, Scene, Thing

GROUPS = ("count", "color", "position", "describe")
QUESTION_GROUPS = frozenset({"color", "position"})
NUMBERS = ("one", "two", "three")
_NUMBER_VALUES = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "zero": 0, "no": 0,
                  **{str(i): i for i in range(10)}}
_PLURAL = {f"{s}s": s for s in SHAPES}
_WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
_WORD = re.compile(r"[a-z]+|\d+")
FRAME_WORDS = ("how", "many", "shapes", "shape", "are", "there", "is", "what", "color", "the", "where", "on", "in",
               "describe", "image", "a", "an", "and")


def vocabulary() -> tuple[str, ...]:
    """Every word of the task's questions and answers, sorted."""
    words = {*FRAME_WORDS, *COLOURS, *SHAPES, *_PLURAL, *POSITIONS, *NUMBERS}
    return tuple(sorted(words))


def _count_sentence(n: int) -> str:
    return "there is one shape." if n == 1 else f"there are {NUMBERS[n - 1]} shapes."


def _describe(things: Sequence[Thing]) -> str:
    names = [f"{'an' if t.colour[0] in 'aeiou' else 'a'} {t.colour} {t.shape}" for t in things]
    body = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{body}."


def questions(scene: Scene) -> list[tuple[str, str, str]]:
    """(group, question, answer) for every question the scene answers unambiguously:
    its count, a description, the colour of each shape kind that occurs once, and the
    place of each (colour, shape) that occurs once."""
    out = [("count", "how many shapes are there?", _count_sentence(len(scene.things))),
           ("describe", "describe the image.", _describe(scene.things))]
    kinds = Counter(t.shape for t in scene.things)
    pairs = Counter((t.colour, t.shape) for t in scene.things)
    for t in scene.things:
        if kinds[t.shape] == 1:
            out.append(("color", f"what color is the {t.shape}?", f"the {t.shape} is {t.colour}."))
        if pairs[(t.colour, t.shape)] == 1:
            out.append(("position", f"where is the {t.colour} {t.shape}?",
                        f"the {t.colour} {t.shape} is {_WHERE[t.position]}."))
    return out


def wrong_answers(scene: Scene, group: str, question: str, rng: np.random.Generator, *, k: int = 3) -> tuple[str, ...]:
    """Up to ``k`` distinct wrong answers to a question, each with one fact changed (a
    count off, another colour, another place, a described shape recoloured, reshaped,
    left out or hallucinated), in a random order, then one true sentence about the image
    that answers another kind of question (off the question's topic: measured, without
    it the clients' reward models preferred "there are two shapes." to the right colour,
    and GRPO taught the policy to say it to every question)."""
    asked = questions(scene)
    right = dict((q, a) for _, q, a in asked)[question]
    off_topic = [a for g, _, a in asked if g != group and not states_the_facts(group, right, a)]
    n = len(scene.things)
    options: list[str] = []
    if group == "count":
        options = [_count_sentence(m) for m in range(1, MAX_OBJECTS + 1) if m != n]
    elif group == "color":
        shape = question.removeprefix("what color is the ").rstrip("?")
        options = [f"the {shape} is {c}." for c in COLOURS if right != f"the {shape} is {c}."]
    elif group == "position":
        colour, shape = question.removeprefix("where is the ").rstrip("?").split()
        options = [f"the {colour} {shape} is {_WHERE[p]}." for p in POSITIONS if not right.endswith(f"{_WHERE[p]}.")]
    elif group == "describe":
        things = list(scene.things)
        for i, t in enumerate(things):
            for c in COLOURS:
                if c != t.colour:
                    options.append(_describe([*things[:i], Thing(c, t.shape, t.position), *things[i + 1:]]))
            for s in SHAPES:
                if s != t.shape:
                    options.append(_describe([*things[:i], Thing(t.colour, s, t.position), *things[i + 1:]]))
            if n > 1:
                options.append(_describe([*things[:i], *things[i + 1:]]))
        if n < MAX_OBJECTS:
            options += [_describe([*things, Thing(c, s, "right")]) for c in COLOURS for s in SHAPES]
    else:
        raise ValueError(f"unknown group {group!r}")
    options = sorted({o for o in options if o != right})
    picked = rng.permutation(len(options))[:k]
    chosen = tuple(options[i] for i in picked)
    return (*chosen, off_topic[int(rng.integers(len(off_topic)))]) if off_topic else chosen


def group_of_sentence(text: str) -> str:
    """Which kind of question a sentence of this task answers, by its form ("there are
    two shapes." → count, "the circle is red." → color, "the red circle is on the left."
    → position, "a red circle." → describe); ValueError for any other text."""
    words = words_of(text)
    if words[:2] in (["there", "is"], ["there", "are"]):
        return "count"
    if words[:1] in (["a"], ["an"]):
        return "describe"
    head = [*words, "", "", "", ""][:5]
    if head[0] == "the" and head[1] in SHAPES and head[2] == "is" and head[3] in COLOURS:
        return "color"
    if head[0] == "the" and head[1] in COLOURS and head[2] in SHAPES and head[3] == "is" and head[4] in ("on", "in"):
        return "position"
    raise ValueError(f"not a sentence of the scenes task: {text[:60]!r}")


def answers_in_form(group: str, question: str, completion: str) -> bool:
    """Whether ``completion`` has the form of an answer to ``question`` of ``group``,
    without knowing the answer: a sentence of that kind (:func:`group_of_sentence`), ended
    by a full stop, stating
    one count; one colour of the shape asked about; one place of the (colour, shape) asked
    about; or, describing, things named each by a colour and a shape and nothing else.
    Measured (issue 25): the policy answered "the square is yellow." to "what color is the
    circle?" and "there are two ." to a count, which no client's rejected sentence is like,
    so the clients' reward models could not rank them down and GRPO learned them."""
    try:
        if group_of_sentence(completion) != group or not completion.rstrip().endswith("."):
            return False
    except ValueError:
        return False
    asked, got, last = facts(question), facts(completion), words_of(completion)[-1]
    if group == "count":
        return len(got["numbers"]) == 1 and last in ("shape", "shapes")
    if group == "color":
        return got["shapes"] == asked["shapes"] and len(got["colours"]) == 1 and last in COLOURS
    if group == "position":
        return (got["things"] == asked["things"] and len(got["positions"]) == 1 and len(got["colours"]) == 1
                and last in (*POSITIONS, "center"))
    if group == "describe":
        return 0 < len(got["things"]) == len(got["colours"]) == len(got["shapes"]) and last in SHAPES
    raise ValueError(f"unknown group {group!r}")


def words_of(text: str) -> list[str]:
    """Lowercase words and digits of ``text``, plural shapes made singular."""
    return [_PLURAL.get(w, w) for w in _WORD.findall(text.lower())]


def facts(text: str) -> dict[str, object]:
    """What ``text`` states: numbers, colours, shapes and places mentioned, and the
    described things (each colour word followed by a shape word)."""
    words = words_of(text)
    things = [(words[i], words[i + 1]) for i in range(len(words) - 1) if words[i] in COLOURS and words[i + 1] in SHAPES]
    return {"numbers": [_NUMBER_VALUES[w] for w in words if w in _NUMBER_VALUES],
            "colours": [w for w in words if w in COLOURS],
            "shapes": [w for w in words if w in SHAPES],
            "positions": [("middle" if w == "center" else w) for w in words if w in (*POSITIONS, "center")],
            "things": things}


def states_the_facts(group: str, reference: str, completion: str) -> bool:
    """Whether ``completion`` states the facts ``reference`` states for a question of
    ``group``, and no contradicting or invented fact of the kind asked about: the count;
    the one colour (and no other shape); the one place (of that shape); every described
    shape with its colour, none missing, none invented."""
    want, got = facts(reference), facts(completion)
    if group == "count":
        return got["numbers"] == want["numbers"]
    if group == "color":
        return set(got["colours"]) == set(want["colours"]) and set(got["shapes"]) <= set(want["shapes"])
    if group == "position":
        return (set(got["positions"]) == set(want["positions"]) and set(got["colours"]) <= set(want["colours"])
                and set(got["shapes"]) <= set(want["shapes"]))
    if group == "describe":
        return (sorted(got["things"]) == sorted(want["things"])  # type: ignore[type-var]
                and len(got["colours"]) == len(want["colours"]) and len(got["shapes"]) == len(want["shapes"]))
    raise ValueError(f"unknown group {group!r}")
