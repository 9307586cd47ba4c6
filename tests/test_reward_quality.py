"""Known answers for the public-question reward metrics (top-1 over all answers, within
the type, pairwise against same-type wrong answers, a well-typed answer first)."""

from __future__ import annotations

import pytest

from server.planners.quality import JudgedQuestion, reward_quality
from tasks.easyvqa.data import answer_type, answers


def _all(**overrides: float) -> dict[str, float]:
    scores = {a: 0.0 for a in answers()}
    scores.update(overrides)
    return scores


def test_hand_computed_example() -> None:
    questions = [
        # colour, red correct and strictly first overall: every metric 1.
        JudgedQuestion("red", _all(red=3.0, blue=1.0)),
        # colour, blue correct; "yes" is first overall, blue first among colours.
        JudgedQuestion("blue", _all(yes=5.0, blue=2.0)),
        # shape, circle correct but tied with triangle at the top.
        JudgedQuestion("circle", _all(circle=1.0, triangle=1.0)),
        # yes/no, "no" correct, "yes" above it.
        JudgedQuestion("no", _all(yes=1.0, no=0.5)),
    ]
    m = reward_quality(questions, group_of=answer_type)
    assert m["count.color"] == 2 and m["count.shape"] == 1 and m["count.yesno"] == 1
    assert m["top1_all.color"] == 0.5 and m["top1_type.color"] == 1.0
    # red beats all 7 other colours; blue beats all 7 other colours (yes is not a colour).
    assert m["pairwise.color"] == 1.0
    assert m["typed_first.color"] == 0.5          # "yes" first for the blue question
    assert m["top1_all.shape"] == 0.0 and m["top1_type.shape"] == 0.0  # a tie is not a win
    assert m["pairwise.shape"] == pytest.approx((0.5 + 1.0) / 2)        # tie with triangle, beats rectangle
    assert m["typed_first.shape"] == 0.0          # two leaders: no single typed answer first
    assert m["top1_all.yesno"] == 0.0 and m["pairwise.yesno"] == 0.0 and m["typed_first.yesno"] == 1.0


def test_a_constant_model_is_at_chance_or_below() -> None:
    m = reward_quality([JudgedQuestion(a, _all()) for a in answers()], group_of=answer_type)
    assert all(m[f"top1_all.{k}"] == 0.0 for k in ("color", "shape", "yesno"))
    assert all(m[f"pairwise.{k}"] == 0.5 for k in ("color", "shape", "yesno"))


def test_the_correct_answer_must_be_scored() -> None:
    with pytest.raises(ValueError, match="was not scored"):
        JudgedQuestion("red", {"blue": 1.0})
