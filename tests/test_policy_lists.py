"""The ALIGN stage judges the fused reward on the policy's own samples (issue 25, scenes:
lists of curated wrong answers passed the gate, then GRPO on the policy's samples lost
every question type). Known answers for the lists; in the stage, GRPO trains only on the
groups whose samples the fused reward ranks well, and learns nothing when there is none."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from fedsecure.types import Modality, Score, ScoreItem
from server.align.combiners import Routed
from server.align.engine.grpo import GRPOEngine
from server.align.engine.prompts import Prompt
from server.align.features import reference_features
from server.align.reward import MixtureReward, ScoringClient
from server.align.router import Router
from server.align.preferences import PreferenceSet, joined, policy_lists
from server.align.stage import AlignStage, AlignStageConfig
from tests.test_grpo_engine import config, low_tokens, pool, snapshot, tiny_policy

TEXT = (Modality.TEXT,)


def test_lists_put_a_right_sample_above_the_distinct_wrong_ones() -> None:
    prompts = [Prompt("a", "qa", (5,), answer="ref-a", group="g"), Prompt("b", "qb", (5,), answer="ref-b", group="g"),
               Prompt("c", "qc", (5,), answer="ref-c", group="h")]
    samples = ["ok1", "bad", "ok2", "ok2",      # a: right ones, the most frequent chosen
               "bad", "worse", "bad", " ",      # b: none right: the reference is chosen; blanks never count
               "ok", "ok", "ok", "ok"]          # c: all right: no list

    def judge(p: Prompt, completion: str) -> bool:
        return completion.startswith("ok")

    lists, sampled, right = policy_lists(prompts, samples, group_size=4, judge=judge)
    assert lists is not None and sampled == (True, False)
    assert lists.chosen == ("ok2", "ref-b") and lists.rejected == (("bad",), ("bad", "worse"))
    assert lists.groups == ("g", "g") and right == {"g": 0.375, "h": 1.0}
    both = joined(PreferenceSet(prompts=(prompts[2],), chosen=("x",), rejected=(("y", "z"),), groups=("h",),
                                rejected_groups=(("h", "other"),)), lists)
    assert both.groups == ("h", "g", "g") and both.rejected_groups == (("h", "other"), ("g",), ("g", "g"))
    with pytest.raises(ValueError, match="group_size"):
        policy_lists(prompts, samples[:-1], group_size=4, judge=judge)


def _low(p: Prompt, completion: str) -> bool:
    return low_tokens(p, completion) >= 0.5


def _judge(p: Prompt, completion: str) -> bool:
    # "judged" questions want low tokens (what the client rewards); "misjudged" want high ones
    return _low(p, completion) if p.group == "judged" else not _low(p, completion)


def good(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
    return [Score(i.item_id, 10.0 * low_tokens(None, i.completion) + 3.0) for i in items]  # type: ignore[arg-type]


def _stage(tmp: Path, groups: Sequence[str]) -> tuple[AlignStage, list[Prompt]]:
    prompts = [dataclasses.replace(p, answer="3 3 3 3 3 3 3 3", group=g) for p, g in zip(pool(16), groups, strict=True)]
    low = " ".join(str(3 + k % 8) for k in range(8))
    high = " ".join(str(20 + k % 8) for k in range(8))
    router_prompts = [dataclasses.replace(p, answer=low if g == "judged" else high, group=g)
                      for p, g in zip(pool(40)[16:], [*groups, *groups][:24], strict=True)]
    # the curated lists all look judged well: the right answer is the low one everywhere
    prefs = PreferenceSet(prompts=tuple(router_prompts), chosen=tuple(low for _ in router_prompts),
                          rejected=tuple((high,) for _ in router_prompts), groups=tuple(p.group for p in router_prompts))  # type: ignore[misc]
    policy = tiny_policy()
    engine = GRPOEngine(policy=policy, config=config(lr=1e-2, beta=0.0), checkpoint_dir=tmp / "ckpt",
                        checkpoint_every=1)
    router = Router(feature_dim=32, clients=1, hidden=16)
    reward = MixtureReward(clients=[ScoringClient("good", TEXT, good)], combiner=Routed(router),
                           features=reference_features(policy), deadline_s=5.0)
    stage = AlignStage(engine=engine, reward=reward, pool=prompts, monitor=[], preferences=prefs, router=router,
                       config=AlignStageConfig(steps_per_round=3, router_steps=50, min_fused_lift=0.5,
                                               policy_lists_per_group=6),
                       pool_groups=list(groups), judge=_judge)
    return stage, prompts


def test_the_gate_is_measured_on_the_policy_samples(tmp_path: Path) -> None:
    groups = ["judged" if i % 2 else "misjudged" for i in range(16)]
    stage, prompts = _stage(tmp_path, groups)
    drawn: list[list[str]] = []
    sample = stage.engine.sample_prompts
    stage.engine.sample_prompts = lambda p: (lambda out: (drawn.append([x.prompt_id for x in out]), out)[1])(sample(p))  # type: ignore[method-assign]
    result = stage.run_round(0)
    assert result.fused_lift_on == "policy samples" and result.policy_lists > 0
    assert set(result.policy_right) == {"judged", "misjudged"}
    # on the curated lists both groups looked judged; on the policy's samples only one is
    assert result.fused_lift["judged"] > 0.5 > result.fused_lift["misjudged"]
    assert result.groups_left_out == ["misjudged"] and result.passed == 0 and result.steps == 3
    judged = {p.prompt_id for p in prompts if p.group == "judged"}
    assert all(set(ids) <= judged for ids in drawn[1:])
    stage.reward.close()


def test_nothing_is_learnt_when_no_group_is_judged_well(tmp_path: Path) -> None:
    stage, _ = _stage(tmp_path, ["misjudged"] * 16)
    before = snapshot(stage.engine.policy)
    result = stage.run_round(0)
    assert result.groups_left_out == ["misjudged"] and result.passed == result.steps == 3 and result.skipped == 0
    assert result.stopped is None and stage.engine.step_count == 3  # the round keeps its length
    after = snapshot(stage.engine.policy)
    assert all(torch.equal(before[n], after[n]) for n in before)  # the policy is untouched
    result = stage.run_round(1)  # the next refresh starts from the whole pool again, and decides again
    assert result.passed == 3 and stage.engine.step_count == 6
    stage.reward.close()


def test_the_policy_is_measured_and_promoted_inside_a_round(tmp_path: Path) -> None:
    """Measured on scenes: the one trusted type rose inside the round while the others fell
    by its end; a held-out check every few steps can export the policy of the gain."""
    stage, prompts = _stage(tmp_path, ["judged"] * 16)
    exported: list[int] = []
    stage.monitor = prompts[:8]
    stage.on_promote = lambda m: exported.append(m.step)
    # margin 0 and any drop allowed: every measurement at least as good as the best is promoted
    stage.config = dataclasses.replace(stage.config, steps_per_round=4, monitor_every=2, promotion_margin=0.0,
                                       promotion_max_type_drop=0.99)
    stage.gate = type(stage.gate)(margin=0.0, max_type_drop=0.99)
    result = stage.run_round(0)
    assert [c["step"] for c in result.checks] == [2]  # step 4 is the round's own measurement
    assert exported[0] == 0  # the start
    assert result.checks[0]["promoted"] and exported[:2] == [0, 2]  # exported at step 2, inside the round
    assert result.steps == 4
    stage.reward.close()


def test_with_a_kl_penalty_the_types_left_out_stay_in_the_steps_with_a_flat_reward(tmp_path: Path) -> None:
    stage, prompts = _stage(tmp_path, ["judged" if i % 2 else "misjudged" for i in range(16)])
    stage.trusted = {"judged"}
    assert {p.group for p in stage._pool()} == {"judged"}  # β = 0: nothing would hold them
    stage.engine.config = dataclasses.replace(stage.engine.config,
                                              loss=dataclasses.replace(stage.engine.config.loss, beta=0.04))
    assert stage._pool() == prompts  # anchored: the whole pool
    real = stage.reward
    stage.reward = lambda ps, cs: [1.0 + i for i in range(len(ps))]  # type: ignore[assignment, misc]
    rewards = stage._trusted_reward(prompts[:4], ["a", "b", "c", "d"])
    assert rewards == [0.0, 2.0, 0.0, 4.0]  # misjudged prompts (even indices): flat, no advantage
    stage.trusted = set()
    assert stage._pool() == []  # nothing trusted: the steps pass
    real.close()


def test_with_the_tasks_answer_form_check_every_type_stays_in_the_steps(tmp_path: Path) -> None:
    """β = 0, but the engine checks the answer form: the types the fused reward cannot judge
    stay in the steps with a flat reward, so the label-free check alone trains them (their
    completions out of form rank last); so do all types when none is trusted."""
    stage, prompts = _stage(tmp_path, ["judged" if i % 2 else "misjudged" for i in range(16)])
    stage.trusted = {"judged"}
    assert {p.group for p in stage._pool()} == {"judged"}
    stage.engine.answer_form = lambda prompt, completion: True
    assert stage._pool() == prompts
    stage.trusted = set()
    assert stage._pool() == prompts
    stage.reward.close()


def test_the_types_left_out_are_held_near_the_start_by_their_own_kl_weight(tmp_path: Path) -> None:
    # β 0 for the trusted types, left_out_beta on the others: they stay in the steps, and
    # the engine adds the anchor on their prompts alone.
    stage, prompts = _stage(tmp_path, ["judged" if i % 2 else "misjudged" for i in range(16)])
    stage.config = dataclasses.replace(stage.config, left_out_beta=2.0)
    anchored = AlignStage(engine=stage.engine, reward=stage.reward, pool=prompts, monitor=[],
                          preferences=stage.preferences, router=stage.router, config=stage.config,
                          pool_groups=[p.group for p in prompts], judge=_judge)  # type: ignore[misc]
    assert stage.engine.kl_anchor is not None
    assert [stage.engine.kl_anchor(p) for p in prompts[:2]] == [0.0, 0.0]  # no verdict yet
    anchored.trusted = {"judged"}
    assert anchored._pool() == prompts  # anchored: the whole pool
    assert [stage.engine.kl_anchor(p) for p in prompts[:4]] == [2.0, 0.0, 2.0, 0.0]
    result = anchored.run_round(0)  # refit: only "judged" is trusted on the policy's samples
    assert result.groups_left_out == ["misjudged"] and result.steps == 3
    weights = {p.group: stage.engine.kl_anchor(p) for p in prompts}
    assert weights == {"judged": 0.0, "misjudged": 2.0}
    with pytest.raises(ValueError, match="left_out_beta"):
        AlignStageConfig(left_out_beta=-1.0)
    stage.reward.close()
