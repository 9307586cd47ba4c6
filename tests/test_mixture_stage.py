"""The ALIGN stage in process on a tiny causal LM: GRPO on the routed fusion of three
clients (one judging the toy task, one random, one inverted) raises the toy reward; the
router learns to trust the good one; faulty answers leave a client out of a step without
poisoning it; no answer at all skips steps and ends the stage; a restart mid-stage
resumes from the last checkpointed step with the router as it was."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from fedsecure.types import Modality, Score, ScoreItem
from server.align.engine.grpo import GRPOEngine
from server.align.combiners import Routed, Uniform
from server.align.features import reference_features
from server.align.reward import MixtureReward, ScoringClient, check_answer
from server.align.router import Router
from server.align.preferences import PreferenceSet
from server.align.stage import AlignStage, AlignStageConfig
from tests.test_grpo_engine import config, low_tokens, pool, snapshot, tiny_policy


def _toy(completion: str) -> float:
    return low_tokens(None, completion)  # type: ignore[arg-type]


def good(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
    return [Score(i.item_id, 10.0 * _toy(i.completion) + 3.0) for i in items]


def inverted(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
    return [Score(i.item_id, -_toy(i.completion)) for i in items]


def noisy(seed: int):  # noqa: ANN201
    """A client whose scores are noise, drawn per (question, completion): the stage sends
    items in a CSPRNG order under CSPRNG ids, so noise drawn in call order made the router's
    fit differ from run to run (accuracy 0.625-0.88 seen); keyed by content, it is the same."""
    def score(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        return [Score(i.item_id, random.Random(f"{seed}|{i.question}|{i.completion}").gauss(0, 1)) for i in items]
    return score


TEXT = (Modality.TEXT,)


def preferences(n: int = 24) -> PreferenceSet:
    prompts = pool(n + 16)[16:]
    low = " ".join(str(3 + k % 8) for k in range(8))
    high = " ".join(str(20 + k % 8) for k in range(8))
    mixed = " ".join(str(x) for x in (3, 4, 20, 21, 5, 22, 23, 24))
    return PreferenceSet(prompts=tuple(prompts), chosen=tuple(low if i % 2 else mixed for i in range(n)),
                         rejected=tuple((high,) for _ in range(n)), groups=tuple("toy" for _ in range(n)))


def build(tmp: Path, *, clients: list[ScoringClient], routed: bool = True, steps: int = 4) -> AlignStage:
    policy = tiny_policy()
    engine = GRPOEngine(policy=policy, config=config(lr=1e-2), checkpoint_dir=tmp / "ckpt", checkpoint_every=1)
    router = Router(feature_dim=32, clients=len(clients), hidden=16) if routed else None
    reward = MixtureReward(clients=clients, combiner=Routed(router) if router is not None else Uniform(),
                           features=reference_features(policy), deadline_s=5.0)
    return AlignStage(engine=engine, reward=reward, pool=pool(), monitor=[], preferences=preferences() if routed else None,
                      router=router, config=AlignStageConfig(steps_per_round=steps, router_steps=200))


def mean_toy(stage: AlignStage, prompts: int = 16) -> float:
    engine = stage.engine
    _, _, texts, _ = engine._rollout(pool()[:prompts])
    return sum(_toy(t) for t in texts) / len(texts)


def test_routed_fusion_drives_grpo_and_trusts_the_good_client(tmp_path: Path) -> None:
    clients = [ScoringClient("good", TEXT, good), ScoringClient("random", TEXT, noisy(0)),
               ScoringClient("inverted", TEXT, inverted)]
    stage = build(tmp_path, clients=clients, steps=10)
    before_params = snapshot(stage.engine.policy)
    before = mean_toy(stage)
    results = [stage.run_round(r) for r in range(3)]
    after = mean_toy(stage)
    assert any(not torch.equal(before_params[n], p) for n, p in stage.engine.policy.trainable())
    fit = results[0].router_fit
    # 24 pairs, half the weight held back by the cap: the fit's accuracy depends on the
    # random client's noise; its loss always drops
    assert fit is not None and fit["accuracy_after"] >= 0.65 and fit["loss_after"] < fit["loss_before"] - 0.1, fit
    weights = results[-1].router_weights["toy"]
    # The good client gets all the router may give one client (the cap: no client owns the
    # fusion); the inverted one the least.
    assert weights["good"] >= 0.499 and weights["inverted"] < min(0.15, weights["random"]), weights
    assert after > before + 0.1, (before, after)
    assert all(r.stopped is None and r.skipped == 0 for r in results)
    stage.reward.close()


def test_the_router_learns_from_a_slow_client_on_its_preference_step(tmp_path: Path) -> None:
    """A fast client that covers every item once started the grace and cut the slower ones
    off the step that carries the router's preference items: the router was fit on the fast
    client alone and never moved (the demo and `experiment mor`: loss before = after).
    That step waits for every client (to the deadline); the steps after it keep the grace."""
    import time

    def slow_good(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        time.sleep(1.5)  # far longer than the fast client took, shorter than the 5 s deadline
        return good(step, items, timeout)

    clients = [ScoringClient("fast-random", TEXT, noisy(0)), ScoringClient("fast-inverted", TEXT, inverted),
               ScoringClient("slow-good", TEXT, slow_good)]
    stage = build(tmp_path, clients=clients, steps=2)
    result = stage.run_round(0)
    first, second = stage.reward.logs[0], stage.reward.logs[1]
    assert "slow-good" not in first.left_out, first.left_out  # waited for on the router's step
    assert "grace" in second.left_out.get("slow-good", "grace"), second.left_out  # the grace still holds after it
    fit = result.router_fit
    assert fit is not None and fit["loss_after"] < fit["loss_before"] - 0.05, fit
    weights = result.router_weights["toy"]
    assert weights["slow-good"] >= 0.499 and weights["fast-inverted"] < weights["slow-good"], weights
    stage.reward.close()


def test_bad_answers_leave_the_client_out_and_a_repeat_offender_is_reported(tmp_path: Path) -> None:
    def nan_scores(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        return [Score(i.item_id, math.nan) for i in items]

    def wrong_count(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        return [Score(i.item_id, 1.0) for i in items[:-1]]

    def foreign(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        return [Score(f"{i.item_id}x", 1.0) for i in items]

    def slow(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        import time
        time.sleep(6.0)
        return good(step, items, timeout)

    clients = [ScoringClient("good", TEXT, good), ScoringClient("nan", TEXT, nan_scores),
               ScoringClient("count", TEXT, wrong_count), ScoringClient("foreign", TEXT, foreign),
               ScoringClient("slow", TEXT, slow)]
    stage = build(tmp_path, clients=clients, routed=False, steps=3)
    result = stage.run_round(0)
    assert result.skipped == 0 and result.steps == 3  # never poisoned: the good client carried every step
    assert result.left_out == {"nan": 3, "count": 3, "foreign": 3, "slow": 3}
    assert set(result.offenders) == {"nan", "count", "foreign"}  # a timeout is not an offence
    assert "deadline" in stage.reward.logs[0].left_out["slow"] or "grace" in stage.reward.logs[0].left_out["slow"]
    stage.reward.close()


def test_check_answer_refusals() -> None:
    sent = [ScoreItem("a"), ScoreItem("b")]
    assert check_answer([Score("b", 2.0), Score("a", 1.0)], sent) == [1.0, 2.0]
    for bad, match in (([Score("a", 1.0)], "1 scores for 2"), ([Score("a", 1.0), Score("a", 2.0)], "twice"),
                       ([Score("a", 1.0), Score("c", 2.0)], "not sent"),
                       ([Score("a", 1.0), Score("b", math.inf)], "finite")):
        with pytest.raises(ValueError, match=match):
            check_answer(bad, sent)


def test_no_answers_skip_steps_and_end_the_stage(tmp_path: Path) -> None:
    def down(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        raise ConnectionError("client gone")

    stage = build(tmp_path, clients=[ScoringClient("gone", TEXT, down)], routed=False, steps=10)
    before = snapshot(stage.engine.policy)
    result = stage.run_round(0)
    assert result.skipped == 5 and result.stopped is not None and "5 steps in a row" in result.stopped
    assert all(torch.equal(before[n], p) for n, p in stage.engine.policy.trainable())
    stage.reward.close()


def test_restart_mid_stage_resumes_from_the_last_step_with_the_router(tmp_path: Path) -> None:
    clients = [ScoringClient("good", TEXT, good), ScoringClient("random", TEXT, noisy(1))]
    stage = build(tmp_path, clients=clients, steps=4)
    calls: list[int] = []
    original = stage.engine.step

    def crash_after_six(prompts, reward):  # noqa: ANN001, ANN202
        if stage.engine.step_count == 6:
            raise KeyboardInterrupt("server killed mid-step")
        calls.append(stage.engine.step_count)
        return original(prompts, reward)

    stage.engine.step = crash_after_six  # type: ignore[method-assign]
    stage.run_round(0)
    with pytest.raises(KeyboardInterrupt):
        stage.run_round(1)
    router_state = {k: v.clone() for k, v in stage.router.state_dict().items()}  # type: ignore[union-attr]
    trained = snapshot(stage.engine.policy)
    stage.reward.close()

    restarted = build(tmp_path, clients=clients, steps=4)
    assert restarted.resume() == 6
    assert all(torch.equal(trained[n], p) for n, p in restarted.engine.policy.trainable())
    assert all(torch.equal(router_state[k], v) for k, v in restarted.router.state_dict().items())  # type: ignore[union-attr]
    scored_steps: list[int] = []
    good_scorer = restarted.reward.clients[0].scorer
    restarted.reward.clients[0] = ScoringClient(
        "good", TEXT,
        lambda ex, items, t: (scored_steps.append(restarted.reward.step), good_scorer(ex, items, t))[1])
    result = restarted.run_round(1)
    assert result.steps == 2 and result.router_fit is None  # mid-round: no refresh, the router as saved
    assert scored_steps == [6, 7]  # the interrupted step is redone once; earlier steps are not rescored
    assert calls == [0, 1, 2, 3, 4, 5]
    restarted.reward.close()


def test_reward_hacking_rule(tmp_path: Path) -> None:
    from server.align.stage import AlignRoundResult

    stage = build(tmp_path, clients=[ScoringClient("good", TEXT, good)], routed=False)
    stage.config = AlignStageConfig(hacking_rounds=2)
    stage.history = [{"reward_level": 1.0, "monitor_accuracy": 0.6}, {"reward_level": 2.0, "monitor_accuracy": 0.5}]
    rising_falling = AlignRoundResult(round=2, reward_level=3.0, monitor_accuracy=0.4)
    assert "reward hacking" in (stage._hacking(rising_falling) or "")
    assert stage._hacking(AlignRoundResult(round=2, reward_level=3.0, monitor_accuracy=0.55)) is None  # accuracy up
    stage.history = stage.history[1:]
    assert stage._hacking(rising_falling) is None  # one round of it is not yet a pattern
    stage.history = [{"reward_level": 1.0, "monitor_accuracy": 0.600}, {"reward_level": 1.0, "monitor_accuracy": 0.595}]
    assert stage._hacking(AlignRoundResult(round=2, reward_level=1.0, monitor_accuracy=0.59)) is None  # within noise
    stage.reward.close()


def test_the_hacking_monitor_cannot_be_blinded_by_a_client(tmp_path: Path) -> None:
    """Attack review (issue 23 item 2): the monitor watched the mean of the clients' raw
    scores, which a client moves at will. An offset that makes the level fall, or a score
    of 1e39 (finite as a Python float, inf in float32: the level became NaN), hid falling
    held-out accuracy. Now the rule watches only what the server measures, and such a
    score is refused where it enters."""
    from server.align.stage import AlignRoundResult

    stage = build(tmp_path, clients=[ScoringClient("good", TEXT, good)], routed=False)
    stage.config = AlignStageConfig(hacking_rounds=2)
    for level in (-1.0, float("nan")):  # the attacker's offset drives the level down, or to NaN
        stage.history = [{"reward_level": 3.0, "monitor_accuracy": 0.6}, {"reward_level": 2.0, "monitor_accuracy": 0.5}]
        assert "reward hacking" in (stage._hacking(AlignRoundResult(round=2, reward_level=level,
                                                                    monitor_accuracy=0.4)) or "")
    stage.reward.close()

    def huge(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        return [Score(i.item_id, 1e39) for i in items]

    blinding = build(tmp_path / "b", clients=[ScoringClient("good", TEXT, good), ScoringClient("huge", TEXT, huge)],
                     routed=False, steps=2)
    result = blinding.run_round(0)
    assert result.skipped == 0 and result.left_out == {"huge": 2} and math.isfinite(result.reward_level)
    assert "magnitude" in blinding.reward.logs[0].left_out["huge"]
    blinding.reward.close()
    from fedsecure import serde
    from fedsecure.proto.v1 import common_pb2
    for value in (1e39, -1e7, math.inf):
        with pytest.raises(ValueError, match="magnitude"):
            serde.scores_from_proto([common_pb2.Score(item_id="x", value=value)])


class PositionalAttacker:
    """The attack review's client with no reward model (issue 23 item 1): it spots the
    router's preference items (their `router:` ids, or the one batch of a round larger than
    the others) and answers them by position (the preferred answer was always the even
    item), to earn the router's trust; every other item it scores toward its own target
    (the inverse of the task)."""

    def __init__(self) -> None:
        self.smallest = 0
        self.router_batches: list[list[ScoreItem]] = []

    def __call__(self, step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        router_batch = any(i.item_id.startswith("router:") for i in items) or \
            (self.smallest and len(items) > self.smallest)
        self.smallest = min(self.smallest or len(items), len(items))
        if router_batch:
            self.router_batches.append(list(items))
            return [Score(i.item_id, 1.0 if n % 2 == 0 else -1.0) for n, i in enumerate(items)]
        return [Score(i.item_id, -_toy(i.completion)) for i in items]


def test_a_client_without_a_model_cannot_capture_the_router(tmp_path: Path) -> None:
    """Two good clients, a random one and the attacker. Before the fix the attacker ranked
    every preference pair right by position and the router trusted it most. Now its items
    cannot be told apart (random ids, order and fill): its positional guess is at chance,
    no client's weight passes the cap, and the policy learns the task nearly as well as
    with that client honest (the item order is drawn from the CSPRNG, so the figures vary
    between runs; the closing note of issue 23 gives them)."""
    outcome = {}
    attacker = PositionalAttacker()
    def good2(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        return [Score(i.item_id, 5.0 * _toy(i.completion) - 1.0) for i in items]

    for who, third in (("attacker", attacker), ("honest", good)):
        clients = [ScoringClient("good", TEXT, good), ScoringClient("good2", TEXT, good2),
                   ScoringClient("random", TEXT, noisy(0)), ScoringClient(who, TEXT, third)]
        stage = build(tmp_path / who, clients=clients, steps=10)
        before = mean_toy(stage)
        results = [stage.run_round(r) for r in range(3)]
        outcome[who] = (results[-1].router_weights["toy"][who], before, mean_toy(stage))
        stage.reward.close()
    print("third client's router weight, toy objective before -> after:", outcome)
    weight, before, after = outcome["attacker"]
    assert weight <= 0.5 + 1e-6, outcome  # never more than the cap: no client owns the fusion
    honest_gain = outcome["honest"][2] - outcome["honest"][1]
    assert after - before > 0.6 * honest_gain, outcome
    # Its positional guess ranks the preference pairs it was sent at chance (1.0 before).
    prefs = preferences()
    right = []
    for batch in attacker.router_batches:
        for q, chosen, (rejected,) in zip((p.question for p in prefs.prompts), prefs.chosen, prefs.rejected,
                                          strict=True):
            at = {i.completion: n for n, i in enumerate(batch) if i.question == q}
            if chosen in at and rejected in at:
                parity = (at[chosen] % 2 == 0) - (at[rejected] % 2 == 0)
                right.append(0.5 + 0.5 * parity)
    assert len(right) >= 24 and 0.15 < sum(right) / len(right) < 0.85, (len(right), sum(right) / len(right))
    assert all(len(i.item_id) == 24 and not i.item_id.startswith("router") for b in attacker.router_batches for i in b)


def test_a_silent_client_does_not_hold_every_step_to_its_deadline(tmp_path: Path) -> None:
    """Attack review (issue 23 item 8): a client that never answers held each of six steps
    to its 5 s deadline (38-40 s a round instead of 1-6 s) and timeouts were not counted.
    Now the step moves on once the answers in hand cover every prompt (plus a grace), a
    client still answering is not asked again yet, and misses are counted (not as
    offences); a client nobody else covers is waited for to the deadline twice in a row,
    then not again that round."""
    import time

    def silent(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        time.sleep(timeout)  # what a session that never answers does
        raise TimeoutError("no answer")

    stage = build(tmp_path, clients=[ScoringClient("good", TEXT, good), ScoringClient("silent", TEXT, silent)],
                  routed=False, steps=6)
    stage.reward.deadline_s = 5.0
    started = time.monotonic()
    result = stage.run_round(0)
    took = time.monotonic() - started
    assert result.skipped == 0 and result.left_out == {"silent": 6}, result.left_out
    assert took < 15.0, took  # six steps at the deadline would be 30 s
    reasons = [e.left_out["silent"] for e in stage.reward.logs]
    assert all("grace" in r or "earlier step" in r for r in reasons), reasons
    assert stage.reward.misses["silent"] == 6 and "silent" not in stage.reward.offenders()
    stage.reward.close()

    alone = build(tmp_path / "alone", clients=[ScoringClient("silent", TEXT, silent)], routed=False, steps=4)
    alone.reward.deadline_s = 1.0
    started = time.monotonic()
    result = alone.run_round(0)
    assert result.skipped == 4 and time.monotonic() - started < 8.0
    reasons = [e.left_out["silent"] for e in alone.reward.logs]
    assert "deadline" in reasons[0] and all("not asked" in r for r in reasons[2:]), reasons
    alone.reward.close()


def test_the_align_phase_stays_open_for_its_planned_work(tmp_path: Path) -> None:
    from server.align.planner import AlignPlanner
    from server.planners.metrics import MetricsLog
    from server.rounds.phases import phase_deadline_s
    from server.align.sessions import ScoreSessions

    planner = AlignPlanner(sessions=ScoreSessions(), build_stage=lambda roster: None,  # type: ignore[arg-type, return-value]
                           metrics=MetricsLog(tmp_path / "m.jsonl"),
                           steps_per_round=6, step_deadline_s=30.0, connect_timeout_s=60.0)
    assert phase_deadline_s(planner, 120) == planner.min_deadline_s() >= 60 + 7 * 30
    assert phase_deadline_s(planner, 5000) == 5000
    assert phase_deadline_s(object(), 120) == 120


def test_preference_items_look_like_groups_and_map_back_to_their_lists() -> None:
    from server.align.preferences import PreferenceItems

    base = pool(3)
    prefs = PreferenceSet(prompts=tuple(base), chosen=("a", "b", "c"),
                          rejected=(("x", "y", "z", "w", "v", "u", "t", "s", "r"), ("x",), ("a", "b")),
                          groups=("g",) * 3)
    distinct_counts = set()
    for _ in range(30):
        layout = PreferenceItems.of(prefs, group_size=8)
        assert len(layout.completions) == 24 and len(layout.lists) == 3
        for m, members in enumerate(layout.lists):
            group = layout.completions[8 * m:8 * m + 8]
            assert all(8 * m <= i < 8 * m + 8 for i in members)
            assert layout.completions[members[0]] == prefs.chosen[m]  # preferred first
            assert {layout.completions[i] for i in members} == set(group)  # every distinct answer, once
            assert set(group) - {prefs.chosen[m]} <= set(prefs.rejected[m])
            assert len({layout.prompts[i].prompt_id for i in range(8 * m, 8 * m + 8)}) == 1
            assert layout.prompts[8 * m].prompt_id != base[m].prompt_id  # never the pool's id
        distinct_counts.add(len(layout.lists[0]))
    assert min(distinct_counts) < max(distinct_counts) <= 8  # how many candidates is drawn at random
    # Scores of the items come back as lists: client 0 scores by a table, client 1 skips list 2.
    table = {"a": 3.0, "b": 2.0, "c": 1.0, "x": 0.0, "y": -1.0, "z": -2.0, "w": -3.0, "v": -4.0,
             "u": -5.0, "t": -6.0, "s": -7.0, "r": -8.0}
    raw = torch.tensor([[table[c] for c in layout.completions]] * 2)
    answered = torch.ones(2, 24, dtype=torch.bool)
    answered[1, 16:] = False
    data = layout.scores(raw, answered, torch.zeros(3, 1))
    first, available = data.client_first()
    assert available.tolist() == [[True, True], [True, True], [True, False]]
    assert first[0].tolist() == [1.0, 1.0] and first[1].tolist() == [1.0, 1.0] and first[2, 0] == 0.0  # c < a, b
    everything = PreferenceItems.of(prefs, group_size=None)
    assert [len(x) for x in everything.lists] == [10, 2, 3] and len(everything.completions) == 15
    with pytest.raises(ValueError, match="distinct"):
        PreferenceSet(prompts=tuple(base[:1]), chosen=("a",), rejected=(("a", "b"),), groups=("g",))
    # Which candidates are of the list's own group: without rejected_groups, all of them;
    # with them, the preferred answer and the rejected ones of its group.
    assert everything.same_group(prefs).sum(-1).tolist() == [10, 2, 3]
    typed = dataclasses.replace(prefs, rejected_groups=(("g", "h", "g", "h", "h", "h", "h", "h", "h"), ("h",),
                                                        ("g", "h")))
    same = everything.same_group(typed)
    assert same.sum(-1).tolist() == [3, 1, 2] and bool(same[:, 0].all())
    assert {everything.completions[everything.lists[0][k]] for k in range(10) if same[0, k]} == {"a", "x", "z"}
    with pytest.raises(ValueError, match="rejected_groups"):
        dataclasses.replace(prefs, rejected_groups=(("g",), ("h",), ("g", "h")))


def test_a_slower_honest_client_is_waited_for_as_long_as_it_usually_takes(tmp_path: Path) -> None:
    """The grace alone cut the slower image clients off nearly every step (issue 24: the
    fusion GRPO trained on was the text clients'). A client's late answer still finishes
    and its time is recorded; from then on it is waited for 1.5 × its median answer time
    (never past the deadline), so it answers every later step; a silent client, with no
    answer on record, still only gets the grace."""
    import time

    def fast(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        time.sleep(0.1)
        return good(step, items, timeout)

    def slow(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        time.sleep(0.3)
        return good(step, items, timeout)

    def silent(step: int, items: Sequence[ScoreItem], timeout: float) -> list[Score]:
        time.sleep(timeout)
        raise TimeoutError("no answer")

    stage = build(tmp_path, clients=[ScoringClient("fast", TEXT, fast), ScoringClient("slow", TEXT, slow),
                                     ScoringClient("silent", TEXT, silent)], routed=False, steps=8)
    stage.reward.deadline_s, stage.reward.min_grace_s = 5.0, 0.05
    started = time.monotonic()
    result = stage.run_round(0)
    took = time.monotonic() - started
    logs = stage.reward.logs
    assert "slow" not in logs[0].answered and "grace" in logs[0].left_out["slow"]  # no record yet: cut
    # Still answering step 0 for the next steps (not asked again yet), then on record.
    assert all("slow" in e.answered for e in logs[-3:]), [(e.answered, e.left_out.get("slow")) for e in logs]
    assert result.left_out["silent"] == 8 and all("grace" in e.left_out["silent"] or "earlier" in e.left_out["silent"]
                                                  for e in logs)
    assert took < 8 * 5.0 / 2, took  # the silent client never held a step to its deadline
    stage.reward.close()


def test_the_align_stage_starts_in_its_first_round_and_counts_its_rounds_from_there(tmp_path: Path) -> None:
    import asyncio
    import json
    from types import SimpleNamespace

    from server.align.sessions import ScoreSessions
    from server.align.stage import AlignRoundResult
    from server.align.planner import AlignPlanner
    from server.planners.metrics import MetricsLog
    from server.rounds.phases import phase_applies

    ran: list[int] = []

    def run_round(r: int) -> AlignRoundResult:
        ran.append(r)
        return AlignRoundResult(round=r)

    planner = AlignPlanner(sessions=ScoreSessions(), build_stage=lambda roster: None,  # type: ignore[arg-type, return-value]
                           metrics=MetricsLog(tmp_path / "m.jsonl"), steps_per_round=4, first_round=3)
    assert [phase_applies(planner, SimpleNamespace(round=r)) for r in (1, 2, 3, 4)] == [False, False, True, True]
    planner.stage = SimpleNamespace(run_round=run_round)  # type: ignore[assignment]
    asyncio.run(planner._drive("run", 3, []))
    asyncio.run(planner._drive("run", 4, []))
    assert ran == [0, 1]  # the stage's rounds 0 and 1, in run rounds 3 and 4
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["round"], r["stage_round"]) for r in rows] == [(3, 0), (4, 1)]
    with pytest.raises(ValueError, match="first_round"):
        AlignPlanner(sessions=ScoreSessions(), build_stage=lambda roster: None,  # type: ignore[arg-type, return-value]
                     metrics=MetricsLog(tmp_path / "n.jsonl"), steps_per_round=4, first_round=0)


def test_grpo_leaves_out_the_question_types_the_fused_reward_cannot_judge(tmp_path: Path) -> None:
    """Measured in the demo: the reward models ranked shapes near chance, GRPO on them
    collapsed the policy's shape answers (0.48 → 0.28 on the test). With a floor on the
    fused reward's lift over chance per type, measured on the router's public lists each
    round, GRPO draws its prompts only from the types above it."""
    low = " ".join(str(3 + k % 8) for k in range(8))
    high = " ".join(str(20 + k % 8) for k in range(8))
    n = 24
    prefs = PreferenceSet(prompts=tuple(pool(n + 16)[16:]),  # the good client is right on "judged" only
                          chosen=tuple(low if i % 2 else high for i in range(n)),
                          rejected=tuple((high,) if i % 2 else (low,) for i in range(n)),
                          groups=tuple("judged" if i % 2 else "misjudged" for i in range(n)))
    policy = tiny_policy()
    # β = 0: the left-out types are not drawn at all (with β > 0 they stay in, anchored: test_policy_lists.py)
    engine = GRPOEngine(policy=policy, config=config(lr=1e-2, beta=0.0), checkpoint_dir=tmp_path / "ckpt",
                        checkpoint_every=1)
    router = Router(feature_dim=32, clients=1, hidden=16)
    reward = MixtureReward(clients=[ScoringClient("good", TEXT, good)], combiner=Routed(router),
                           features=reference_features(policy), deadline_s=5.0)
    prompts = pool()
    groups = ["judged" if i < 8 else "misjudged" for i in range(len(prompts))]
    with pytest.raises(ValueError, match="groups"):
        AlignStage(engine=engine, reward=reward, pool=prompts, monitor=[], preferences=prefs, router=router,
                   config=AlignStageConfig(min_fused_lift=0.5))
    stage = AlignStage(engine=engine, reward=reward, pool=prompts, monitor=[], preferences=prefs, router=router,
                       config=AlignStageConfig(steps_per_round=3, router_steps=50, min_fused_lift=0.5),
                       pool_groups=groups)
    drawn: list[list[str]] = []
    sample = engine.sample_prompts
    engine.sample_prompts = lambda p: (lambda out: (drawn.append([x.prompt_id for x in out]), out)[1])(sample(p))
    result = stage.run_round(0)
    assert result.fused_lift == {"judged": pytest.approx(1.0), "misjudged": pytest.approx(-1.0)}
    assert result.groups_left_out == ["misjudged"] and result.steps == 3
    judged = {p.prompt_id for p, g in zip(prompts, groups) if g == "judged"}
    assert not set(drawn[0]) <= judged            # the first step carries the lists: the whole pool
    assert all(set(ids) <= judged for ids in drawn[1:]) and len(drawn) == 3
    # the choice survives a restart
    again = AlignStage(engine=engine, reward=reward, pool=prompts, monitor=[], preferences=prefs, router=router,
                       config=dataclasses.replace(stage.config), pool_groups=groups)
    again._restore_extra(*stage._extra_state())
    assert again.trusted == {"judged"}
    stage.reward.close()
