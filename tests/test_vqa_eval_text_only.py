"""The text-only baseline: the most common training answer for a question's text."""

from __future__ import annotations

from fedsecure.task import Example
from server.align.engine.prompts import Prompt
from server.align.engine.vqa_eval import evaluate_text_only, text_only_answers


def _record(i: int, question: str, answer: str) -> Example:
    return Example(record_id=f"r{i}", question=question, answer=answer, group="")


def test_text_only_known_answers() -> None:
    train = [_record(0, "What color is the shape?", "red"), _record(1, "what color is the shape?", "blue"),
             _record(2, "What color is the shape?", "blue"), _record(3, "Is there a circle?", "no"),
             _record(4, "Is there a circle?", "yes")]
    table = text_only_answers(train)
    assert table == {"what color is the shape": "blue", "is there a circle": "no"}  # tie: alphabetically first
    prompts = [Prompt(prompt_id="a", question="What color is the shape?", input_ids=(1,), answer="blue", group="color"),
               Prompt(prompt_id="b", question="What color is the shape?", input_ids=(1,), answer="red", group="color"),
               Prompt(prompt_id="c", question="Is there a circle?", input_ids=(1,), answer="no", group="yesno"),
               Prompt(prompt_id="d", question="Is there a triangle?", input_ids=(1,), answer="yes", group="yesno")]
    result = evaluate_text_only(prompts, table)
    assert result.count == 4 and result.accuracy == 0.5
    assert result.by_type == {"color": 0.5, "yesno": 0.5}  # an unseen question text is a miss
    assert result.by_type_count == {"color": 2, "yesno": 2}  # each type's figure with the questions behind it
