"""The task interface: easy-VQA behind it, chosen by name, and the framework's balancing
helpers on its examples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedsecure.errors import KitError
from fedsecure.kit import load_kit
from fedsecure.provision import Provisioned
from fedsecure.task import SERVER_PARTS, Example, SealedTask, Task, balanced_by_group
from tasks import KNOWN, get_task
from tasks.easyvqa import TASK


def test_easyvqa_is_a_task_chosen_by_name() -> None:
    task = get_task("easyvqa")
    assert task is TASK and isinstance(task, Task) and task.name == "easyvqa"
    with pytest.raises(ValueError, match="unknown task 'vqa-v2'; known tasks: easyvqa, scenes"):
        get_task("vqa-v2")
    assert set(KNOWN) == {"easyvqa", "scenes"}


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
    # a group may take another number than the rest, none at all included
    assert [e.record_id for e in balanced_by_group(ex, 1, counts={"yesno": 3})] == ["r0", "r1", "r2", "r3", "r4"]
    assert [e.record_id for e in balanced_by_group(ex, 2, counts={"yesno": 0})] == ["r2", "r4"]
    with pytest.raises(ValueError):
        balanced_by_group(ex, 1, counts={"yesno": -1})


def test_an_unknown_task_is_refused_at_start_naming_the_known_ones(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from apps.cli import main

    assert main(["server", "--kit", str(tmp_path / "kit"), "--task", "vqa-v2"]) == 2
    assert "unknown task 'vqa-v2'; known tasks: easyvqa" in capsys.readouterr().err


def test_every_kit_seals_the_task_and_a_client_takes_its_answers_and_words_from_it(kits: Provisioned) -> None:
    from client_sdk.join import reward_model_config

    kit = load_kit(kits.clients["a"])
    sealed = SealedTask.from_settings(kit.settings)
    assert sealed == SealedTask.of(TASK) and sealed.name == "easyvqa" and len(sealed.answers) == 13
    config = reward_model_config(kit, kind="image", backbone=None)
    assert config.answers == TASK.answer_set and config.vocabulary == tuple(TASK.vocabulary())
    assert SealedTask.from_settings(load_kit(kits.server).settings) == sealed


def test_a_kit_without_a_task_or_with_a_malformed_one_is_refused() -> None:
    # Fail closed: a party never guesses the task its federation runs.
    with pytest.raises(KitError, match="names no task"):
        SealedTask.from_settings({"ckks": {}})
    with pytest.raises(KitError, match="malformed"):
        SealedTask.from_settings({"task": {"name": "easyvqa", "answers": "red,blue", "vocabulary": []}})
    with pytest.raises(KitError, match="malformed"):
        SealedTask.from_settings({"task": {"name": "easyvqa", "answers": [1, 2], "vocabulary": []}})


def test_a_server_started_on_another_task_refuses_its_kit(kits: Provisioned, tmp_path: Path) -> None:
    from apps.cli import build_parser
    from server.cli import main as server_main

    other = dataclasses.replace(TASK, name="other-task")
    with pytest.raises(KitError, match="sealed for task 'easyvqa', not 'other-task'"):
        SealedTask.from_settings(load_kit(kits.server).settings).require(other)
    args = build_parser(command="server").parse_args(
        ["server", "--kit", str(kits.server), "--address", "127.0.0.1:0", "--state", str(tmp_path / "state")])
    with pytest.raises(KitError, match="not 'other-task'"):
        server_main(args, task=other)  # refused before anything binds or is written
    assert not (tmp_path / "state").exists()
