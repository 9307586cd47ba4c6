"""The GRPO engine on a tiny causal LM: KL zero at step 0, parameters change, reward rises
on a toy reward, bad rewards skip the step, resume reproduces an uninterrupted run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from fedsecure.errors import CheckpointError, PromptError, RewardRejected
from fedsecure.models.policy_vlm import tiny_llama_config
from server.align.engine.devices import select_placement
from server.align.engine.grpo import GRPOConfig, GRPOEngine, check_rewards, per_completion
from server.align.engine.grpo_loss import GRPOLossConfig
from server.align.engine.policy import Policy, PolicySetup
from server.align.engine.prompts import ImageInputs, Prompt
from server.align.engine.rollouts import SamplingConfig

VOCAB, PAD, BOS, EOS = 32, 0, 1, 2


def tiny_policy(adapter: str = "full", seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=VOCAB, hidden=32, layers=1, heads=2))
    return Policy(model, setup=PolicySetup(adapter=adapter), placement=select_placement("cpu"),  # type: ignore[arg-type]
                  eos_id=EOS, pad_id=PAD, is_vlm=False, suppressed_ids=[PAD, BOS])


def pool(n: int = 16) -> list[Prompt]:
    g = torch.Generator().manual_seed(1)
    return [Prompt(f"p{i}", f"q{i}", tuple(torch.randint(3, VOCAB, (3 + i % 4,), generator=g).tolist()))
            for i in range(n)]


def low_tokens(prompt: Prompt, completion: str) -> float:
    """Toy reward: share of the 8 allowed tokens whose id is below 12."""
    return sum(int(t) < 12 for t in completion.split()) / 8


def config(lr: float = 3e-3, beta: float = 0.04, mu: int = 1, unfinished_last: bool = False) -> GRPOConfig:
    # the toy rewards below score any token sequence, finished or not: the engine's rule that
    # ranks unfinished completions last is off unless a test asks for it
    return GRPOConfig(group_size=8, prompts_per_step=4, updates_per_batch=mu, learning_rate=lr, seed=0,
                      loss=GRPOLossConfig(beta=beta), sampling=SamplingConfig(max_new_tokens=8),
                      unfinished_last=unfinished_last)


def snapshot(policy: Policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.trainable()}


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_kl_is_zero_at_step_zero_and_parameters_change(adapter: str) -> None:
    policy = tiny_policy(adapter)
    engine = GRPOEngine(policy=policy, config=config())
    before = snapshot(policy)
    first = engine.step(pool()[:4], per_completion(low_tokens))
    assert first.skipped is None
    assert first.kl == 0.0  # the policy is exactly the reference before its first update
    assert any(not torch.equal(before[n], p) for n, p in policy.trainable())
    second = engine.step(pool()[4:8], per_completion(low_tokens))
    assert second.kl > 0.0
    if adapter == "lora":  # the reference is the base with adapters off: base weights untouched
        frozen = [p for n, p in policy.model.named_parameters() if not p.requires_grad]
        assert frozen and all(not p.requires_grad for p in frozen)


def test_several_updates_per_batch_move_away_from_the_sampling_policy() -> None:
    engine = GRPOEngine(policy=tiny_policy(), config=config(lr=3e-2, mu=4))
    report = engine.step(pool()[:4], per_completion(low_tokens))
    assert report.kl > 0.0  # mean over the 4 updates; only the first is at the reference
    assert report.clipped_fraction > 0.0  # later updates leave the trust region and are clipped


def test_mean_reward_rises_on_a_toy_reward() -> None:
    engine = GRPOEngine(policy=tiny_policy(), config=config(lr=1e-2, beta=0.0))
    rewards = [r.mean_reward for r in engine.train(pool(), per_completion(low_tokens), steps=30)]
    start, end = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert end > start + 0.15, (start, end)


@pytest.mark.parametrize("bad", [math.nan, math.inf, "0.5"])
def test_a_non_finite_reward_skips_the_step_and_names_the_prompt(bad: object) -> None:
    policy = tiny_policy()
    engine = GRPOEngine(policy=policy, config=config())
    before = snapshot(policy)

    def reward(prompts, completions):  # type: ignore[no-untyped-def]
        return [bad if p.prompt_id == "p2" else 1.0 for p in prompts]

    report = engine.step(pool()[:4], reward)
    assert report.skipped is not None and "p2" in report.skipped
    assert all(torch.equal(before[n], p) for n, p in policy.trainable())
    assert not engine.optimizer.state  # the optimiser never moved either
    assert engine.step_count == 1  # the run goes on with the next step


def test_a_reward_of_the_wrong_count_is_rejected() -> None:
    prompts = pool()[:2]
    with pytest.raises(RewardRejected, match="3 values for 2"):
        check_rewards([1.0, 2.0, 3.0], prompts)
    with pytest.raises(RewardRejected) as err:
        check_rewards([1.0, float("nan")], prompts)
    assert err.value.prompt_id == "p1"
    engine = GRPOEngine(policy=tiny_policy(), config=config())
    report = engine.step(pool()[:4], lambda prompts, completions: [0.0])
    assert report.skipped and "1 values for 32" in report.skipped


def test_groups_without_reward_variance_make_no_update() -> None:
    policy = tiny_policy()
    engine = GRPOEngine(policy=policy, config=config())
    before = snapshot(policy)
    report = engine.step(pool()[:4], lambda prompts, completions: [1.0] * len(prompts))
    assert report.skipped and "variance" in report.skipped
    assert all(torch.equal(before[n], p) for n, p in policy.trainable())


def test_prompts_a_text_policy_cannot_take_are_refused_before_training() -> None:
    engine = GRPOEngine(policy=tiny_policy(), config=config())
    image_prompt = Prompt("img", "q", (3, 4), images=ImageInputs.of({"pixel_values": torch.zeros(1, 3, 8, 8)}))
    with pytest.raises(PromptError, match="img"):
        engine.train([*pool(3), image_prompt], per_completion(low_tokens), steps=1)
    assert engine.step_count == 0


def _state(engine: GRPOEngine) -> list[torch.Tensor]:
    out = [p.detach().clone() for _, p in engine.policy.trainable()]
    for _, p in engine.policy.trainable():
        slot = engine.optimizer.state[p]
        out += [slot["exp_avg"].clone(), slot["exp_avg_sq"].clone(), torch.as_tensor(slot["step"]).clone()]
    return out


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_an_interrupted_run_resumes_to_the_same_weights_and_optimiser_state(tmp_path: Path, adapter: str) -> None:
    reward = per_completion(low_tokens)
    straight = GRPOEngine(policy=tiny_policy(adapter), config=config())
    straight.train(pool(), reward, steps=6)

    interrupted = GRPOEngine(policy=tiny_policy(adapter), config=config(), checkpoint_dir=tmp_path, checkpoint_every=2)
    interrupted.train(pool(), reward, steps=5)  # "crashes" after step 5; last checkpoint at 4
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 4

    resumed = GRPOEngine(policy=tiny_policy(adapter), config=config(), checkpoint_dir=tmp_path, checkpoint_every=2)
    assert resumed.resume() == 4
    assert len(resumed.train(pool(), reward, steps=6)) == 2
    for a, b in zip(_state(straight), _state(resumed), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_resume_refuses_another_configuration_and_a_corrupt_pointer(tmp_path: Path) -> None:
    engine = GRPOEngine(policy=tiny_policy(), config=config(), checkpoint_dir=tmp_path, checkpoint_every=1)
    engine.train(pool(), per_completion(low_tokens), steps=1)
    other = GRPOEngine(policy=tiny_policy(), config=config(lr=1e-4), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="config"):
        other.resume()
    (tmp_path / "latest.json").write_text('{"checkpoint": "../../etc"}')
    with pytest.raises(CheckpointError):
        GRPOEngine(policy=tiny_policy(), config=config(), checkpoint_dir=tmp_path).resume()
    (tmp_path / "latest.json").write_text('{"checkpoint": "step-000009"}')
    with pytest.raises(CheckpointError, match="missing"):
        GRPOEngine(policy=tiny_policy(), config=config(), checkpoint_dir=tmp_path).resume()


def test_a_fresh_directory_resumes_at_step_zero(tmp_path: Path) -> None:
    assert GRPOEngine(policy=tiny_policy(), config=config(), checkpoint_dir=tmp_path).resume() == 0


def test_configuration_is_checked_up_front() -> None:
    with pytest.raises(ValueError):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError):
        GRPOConfig(sampling=SamplingConfig(temperature=0.0))
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError):
        PolicySetup(adapter="qlora")  # type: ignore[arg-type]


@pytest.mark.parametrize(("averaging", "best_nll"), [("sequence", 0.0), ("token", 0.0), ("sequence", 1.0)])
def test_micro_batches_and_single_pass_give_the_whole_batch_update(averaging: str, best_nll: float) -> None:
    def run(**kwargs: object) -> list[torch.Tensor]:
        cfg = GRPOConfig(group_size=8, prompts_per_step=4, learning_rate=3e-3, seed=0,
                         loss=GRPOLossConfig(beta=0.04, averaging=averaging, best_nll=best_nll),  # type: ignore[arg-type]
                         sampling=SamplingConfig(max_new_tokens=8), **kwargs)  # type: ignore[arg-type]
        engine = GRPOEngine(policy=tiny_policy(), config=cfg)
        engine.train(pool(), per_completion(low_tokens), steps=3)
        return _state(engine)

    whole = run()
    for other in (run(micro_batch_prompts=1), run(micro_batch_prompts=3), run(single_pass=True)):
        for a, b in zip(whole, other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # float reassociation only


def test_the_best_completions_likelihood_term_takes_part_in_the_update() -> None:
    # Same seed, prompts and samples: only the added term (the NLL of each group's best
    # completion, grpo_loss.best_nll_term) can make the two updates differ.
    def run(best_nll: float) -> tuple[list[torch.Tensor], float]:
        cfg = GRPOConfig(group_size=8, prompts_per_step=4, learning_rate=3e-3, seed=0,
                         loss=GRPOLossConfig(beta=0.0, best_nll=best_nll), sampling=SamplingConfig(max_new_tokens=8),
                         unfinished_last=False)
        engine = GRPOEngine(policy=tiny_policy(), config=cfg)
        report = engine.step(pool()[:4], per_completion(low_tokens))
        return _state(engine), report.loss

    plain, plain_loss = run(0.0)
    with_term, term_loss = run(1.0)
    assert term_loss > plain_loss  # the NLL is positive
    assert any(not torch.allclose(a, b) for a, b in zip(plain, with_term, strict=True))


def test_completions_that_never_end_are_trained_away_whatever_the_reward_says() -> None:
    # A reward that pays for length would keep the policy from ever ending; ranked last,
    # unfinished completions become rarer instead (the free-text task's reward hacking).
    engine = GRPOEngine(policy=tiny_policy(), config=config(lr=1e-2, beta=0.0, unfinished_last=True))
    eos = engine.policy.eos_id
    finished: list[float] = []

    def longer_is_better(prompts, completions):  # noqa: ANN001, ANN202
        return [float(len(c.split())) for c in completions]

    before = snapshot(engine.policy)
    for _ in range(25):
        rollouts, _, texts, expanded = engine._rollout(engine.sample_prompts(pool()))
        finished.append(float((rollouts.completion_ids == eos).any(1).float().mean()))
        engine.step(engine.sample_prompts(pool()), longer_is_better)
    after = snapshot(engine.policy)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert sum(finished[-5:]) / 5 > sum(finished[:5]) / 5 + 0.15, finished


def test_completions_out_of_the_answer_form_are_trained_away_whatever_the_reward_says() -> None:
    # A reward that pays for a form the task rules out (here: completions holding token 3)
    # spreads it; ranked last by the engine's answer_form, the same form becomes rarer.
    def pays_for_3(prompts, completions):  # noqa: ANN001, ANN202
        return [float(c.split().count("3")) for c in completions]

    def share_out_of_form(answer_form) -> list[float]:  # noqa: ANN001
        engine = GRPOEngine(policy=tiny_policy(), config=config(lr=1e-2, beta=0.0, unfinished_last=True),
                            answer_form=answer_form)
        before, shares = snapshot(engine.policy), []
        for _ in range(25):
            texts = engine.sample(engine.sample_prompts(pool()))
            shares.append(sum("3" in t.split() for t in texts) / len(texts))
            engine.step(engine.sample_prompts(pool()), pays_for_3)
        after = snapshot(engine.policy)
        assert any(not torch.equal(before[n], after[n]) for n in before)
        return shares

    unchecked = share_out_of_form(None)
    checked = share_out_of_form(lambda prompt, completion: "3" not in completion.split())
    assert sum(unchecked[-5:]) > sum(unchecked[:5]) + 0.5, unchecked  # the reward alone spreads it
    assert sum(checked[-5:]) < sum(checked[:5]) / 2, checked


def test_a_group_the_judge_scored_flat_has_no_best_completion_to_learn() -> None:
    # The answer-form check alone separates answers from non-answers, not a right answer from
    # a wrong one: under a flat reward, the best-completion term must add nothing (it would
    # train the policy on whichever of its answers came first), while under a reward that
    # tells answers apart it does.
    def run(best_nll: float, reward) -> list[torch.Tensor]:  # noqa: ANN001
        cfg = GRPOConfig(group_size=8, prompts_per_step=4, learning_rate=3e-3, seed=0,
                         loss=GRPOLossConfig(beta=0.0, best_nll=best_nll), sampling=SamplingConfig(max_new_tokens=8),
                         unfinished_last=True)
        engine = GRPOEngine(policy=tiny_policy(), config=cfg,
                            answer_form=lambda prompt, completion: "3" not in completion.split())
        before = snapshot(engine.policy)
        report = engine.step(pool()[:4], reward)
        assert report.skipped is None  # the form check gives the groups variance: an update ran
        assert any(not torch.equal(before[n], p) for n, p in snapshot(engine.policy).items())
        return _state(engine)

    def flat(prompts, completions):  # noqa: ANN001, ANN202
        return [0.0] * len(completions)

    for a, b in zip(run(0.0, flat), run(1.0, flat), strict=True):
        torch.testing.assert_close(a, b)
    judged = per_completion(low_tokens)
    assert any(not torch.allclose(a, b) for a, b in zip(run(0.0, judged), run(1.0, judged), strict=True))


def test_a_kl_anchor_per_prompt_acts_as_beta_on_those_prompts() -> None:
    # The same anchor on every prompt is β itself; an anchor of 0 is none; the KL term is
    # zero at the first step, so two steps are run.
    def run(beta: float, anchor: float | None) -> list[torch.Tensor]:
        cfg = GRPOConfig(group_size=8, prompts_per_step=4, learning_rate=1e-2, seed=0,
                         loss=GRPOLossConfig(beta=beta), sampling=SamplingConfig(max_new_tokens=8))
        engine = GRPOEngine(policy=tiny_policy(), config=cfg)
        if anchor is not None:
            engine.kl_anchor = lambda prompt: anchor
        for _ in range(2):
            engine.step(pool()[:4], per_completion(low_tokens))
        return _state(engine)

    as_beta, anchored, free, zero = run(0.5, None), run(0.0, 0.5), run(0.0, None), run(0.0, 0.0)
    for a, b in zip(as_beta, anchored, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(free, zero, strict=True):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(free, anchored, strict=True))
    engine = GRPOEngine(policy=tiny_policy(), config=config(beta=0.0))
    engine.kl_anchor = lambda prompt: -1.0
    with pytest.raises(ValueError, match="kl_anchor"):
        engine.step(pool()[:4], per_completion(low_tokens))
