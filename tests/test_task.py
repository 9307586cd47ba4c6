"""The task interface: easy-VQA behind it, chosen by name, and the framework's balancing
helpers on its examples."""

from __future__ import annotations

import pytest

from fedsecure.task import SERVER_PARTS, Example, Task, balanced_by_group
from tasks import KNOWN, get_task
from tasks.easyvqa import TASK


def test_easyvqa_is_a_task_chosen_by_name() -> None:
    task = get_task("easyvqa")
    assert task is TASK and isinstance(task, Task) and task.name == "easyvqa"
    with pytest.raises(ValueError, match="unknown task 'vqa-v2'; known tasks: easyvqa"):
        get_task("vqa-v2")
    assert set(KNOWN) == {"easyvqa"}


def test_easyvqa_declares_its_closed_answer_set_and_groups() -> None:
    assert TASK.answer_set is not None and len(TASK.answer_set) == 13
    assert {TASK.group_of(a) for a in TASK.answer_set} == {"color", "shape", "yesno"}
    assert TASK.group_of("circle") == "shape" and TASK.group_of("teal") == "color"
    with pytest.raises(ValueError, match="unknown answer"):
        TASK.group_of("a purple dragon")


def test_the_servers_parts_are_disjoint_by_image_and_from_the_test_split() -> None:
    images = {name: {e.image for e in TASK.server_part(name)} for name in SERVER_PARTS}  # type: ignore[arg-type]
    assert all(images.values())
    names = list(SERVER_PARTS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if {a, b} != {"pool", "seed"}:  # pool and seed set share the server's alignment images
                assert not images[a] & images[b], (a, b)
    test = TASK.test_examples()
    assert test and all(e.record_id.startswith("test-") for e in test)
    assert not {e.record_id for e in test} & {e.record_id for n in names for e in TASK.server_part(n)}  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no server part"):
        TASK.server_part("clients")  # type: ignore[arg-type]


def test_the_metric_is_exact_match_after_normalising() -> None:
    e = Example(record_id="t", question="what color is the shape?", answer="blue", group="color")
    assert TASK.correct(e, " Blue. ") and TASK.correct(e, "blue")
    assert not TASK.correct(e, "light blue") and not TASK.correct(e, "")


def test_balanced_by_group_known_answers() -> None:
    ex = [Example(f"r{i}", "q", a, g) for i, (a, g) in enumerate(
        [("yes", "yesno"), ("no", "yesno"), ("red", "color"), ("yes", "yesno"), ("circle", "shape")])]
    assert [e.record_id for e in balanced_by_group(ex, 1)] == ["r0", "r2", "r4"]
    assert [e.record_id for e in balanced_by_group(ex, 2)] == ["r0", "r1", "r2", "r4"]
    with pytest.raises(ValueError):
        balanced_by_group(ex, 0)


def test_an_unknown_task_is_refused_at_start_naming_the_known_ones(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from apps.cli import main

    assert main(["server", "--kit", str(tmp_path / "kit"), "--task", "vqa-v2"]) == 2
    assert "unknown task 'vqa-v2'; known tasks: easyvqa" in capsys.readouterr().err
