"""A policy with room to learn (issue 24 item 3): the warm start and GRPO's pool are
balanced by question type, the tower's public pretraining never sees the held-out part,
and GRPO can keep the pretrained tower frozen."""

from __future__ import annotations

from collections import Counter

import pytest

from fedsecure.task import public_labelled
from tasks.easyvqa.data import vocabulary

from fedsecure.models.policy_vlm import PATCH, build_tiny_vlm
from server.align.engine.devices import select_placement
from server.align.engine.job import prompt_pool, seed_questions
from server.align.engine.policy import Policy, PolicySetup
from server.align.engine.vision_pretrain import vision_tower
from tasks.easyvqa import TASK as EASYVQA
from tasks.easyvqa.data import answer_type
from tasks.easyvqa.shares import server_part


def test_warm_start_and_pool_are_balanced_by_type() -> None:
    seed = Counter(answer_type(r.answer) for r in seed_questions(EASYVQA, 67))
    assert seed == {"yesno": 67, "color": 67, "shape": 67}
    more = Counter(answer_type(r.answer) for r in seed_questions(EASYVQA, 67, counts={"yesno": 400}))
    assert more == {"yesno": 400, "color": 67, "shape": 67}
    pool = prompt_pool(EASYVQA, 1500)
    counts = Counter(answer_type(r.answer) for r in pool)
    assert len(set(counts.values())) == 1 and len(pool) <= 1500 and len(counts) == 3


def test_the_gates_questions_spread_each_type_evenly_over_its_answers() -> None:
    """A policy answering one shape to every shape question scores 1/3 on these, whatever
    that shape's share of the part."""
    from fedsecure.task import balanced_by_answer

    part = server_part("reward_eval")
    held = balanced_by_answer(part, 60)
    by_answer = Counter(r.answer for r in held)
    assert Counter(answer_type(r.answer) for r in held) == {"yesno": 60, "color": 60, "shape": 60}
    assert {by_answer[a] for a in ("circle", "rectangle", "triangle")} == {20}
    assert {by_answer[a] for a in ("yes", "no")} == {30}
    assert max(by_answer[a] for a in by_answer if answer_type(a) == "color") - \
        min(by_answer[a] for a in by_answer if answer_type(a) == "color") <= 1
    assert {id(r) for r in held} <= {id(r) for r in part} and len({id(r) for r in held}) == len(held)
    with pytest.raises(ValueError):
        balanced_by_answer(part, 0)


def test_tower_pretraining_never_sees_the_held_out_part() -> None:
    held = {r.image for r in server_part("reward_eval")}
    seen = {r.image for r in public_labelled(EASYVQA)}
    assert seen and not seen & held
    assert {r.image for r in server_part("pretrain")} <= seen


def test_grpo_can_keep_the_vision_tower_frozen() -> None:
    assert PATCH == 8
    model, processor = build_tiny_vlm(words=vocabulary(), seed=0)
    tower = {id(p) for p in vision_tower(model).parameters()}
    policy = Policy.for_vlm(model, processor, setup=PolicySetup(adapter="full", freeze_vision_tower=True),
                            placement=select_placement("cpu"))
    trainable = policy.trainable()
    assert trainable and not any(id(p) in tower for _, p in trainable)
    model2, _ = build_tiny_vlm(words=vocabulary(), seed=0)
    full = Policy.for_vlm(model2, processor, setup=PolicySetup(adapter="full"), placement=select_placement("cpu"))
    assert len(full.trainable()) > len(trainable)


@pytest.mark.parametrize("bad", [{"seed_per_type": 0}, {"seed_per_group": (("yesno", -1),)}])
def test_warm_start_counts_are_checked_up_front(tmp_path, bad) -> None:  # type: ignore[no-untyped-def]
    from server.align.engine.job import AlignmentSettings

    with pytest.raises(ValueError, match="seed_per"):
        AlignmentSettings(out=tmp_path, **bad)


def test_a_base_built_by_other_warm_start_settings_is_refused_not_reused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Rerunning into the same folder with another warm start must not silently reuse the
    old start (the experiment's `--seed-per-group` would otherwise change nothing)."""
    import dataclasses
    import json

    from fedsecure.errors import PolicyLoadError
    from server.align.engine.job import WARM_START_FILE, AlignmentSettings, prepare_base

    small = AlignmentSettings(out=tmp_path, sft_epochs=1, vision_pretrain_steps=2, seed_per_type=2)
    base = prepare_base(small, task=EASYVQA)
    recorded = json.loads((base / WARM_START_FILE).read_text())
    assert recorded["seed_per_type"] == 2 and recorded["seed_per_group"] == []
    weights = {p.name: p.stat().st_mtime_ns for p in base.iterdir()}
    assert prepare_base(small, task=EASYVQA) == base  # the same settings: reused, not rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in base.iterdir()} == weights
    with pytest.raises(PolicyLoadError, match="seed_per_group"):
        prepare_base(dataclasses.replace(small, seed_per_group=(("yesno", 3),)), task=EASYVQA)
    with pytest.raises(PolicyLoadError, match="sft_epochs"):
        prepare_base(dataclasses.replace(small, sft_epochs=2), task=EASYVQA)
