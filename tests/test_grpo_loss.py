"""Known-answer tests of the GRPO objective (hand-computed values)."""

from __future__ import annotations

import math

import pytest
import torch

from server.align.engine.grpo_loss import GRPOLossConfig, group_advantages, grpo_loss, k3_kl


def test_advantages_by_hand_zero_mean_and_flat_groups() -> None:
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0]), group_size=2, std_eps=0.0)
    # group (1, 0): mean 0.5, unbiased std sqrt(0.5) -> ±0.5/0.7071 = ±0.7071; flat groups -> 0
    assert torch.allclose(adv, torch.tensor([math.sqrt(0.5), -math.sqrt(0.5), 0, 0, 0, 0]))
    many = group_advantages(torch.randn(40, generator=torch.Generator().manual_seed(0)), group_size=8)
    assert torch.allclose(many.view(5, 8).mean(dim=1), torch.zeros(5), atol=1e-6)
    # Dr. GRPO (no division by the std): a judge's small margin stays small.
    small = group_advantages(torch.tensor([0.02, 0.0, 1.0, 0.0, 3.0, 3.0]), group_size=2, scale=False)
    assert torch.allclose(small, torch.tensor([0.01, -0.01, 0.5, -0.5, 0.0, 0.0]))
    scaled = group_advantages(torch.tensor([0.02, 0.0, 1.0, 0.0]), group_size=2)
    assert torch.allclose(scaled[:2], scaled[2:], atol=1e-2)  # scaled: the tiny margin is a full-size update
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, float("nan")]), group_size=2)
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), group_size=2)


def test_k3_is_zero_at_the_reference_and_matches_by_hand() -> None:
    lp = torch.tensor([-1.0, -2.0])
    assert torch.equal(k3_kl(lp, lp), torch.zeros(2))
    # r = ref - logp = log(0.5) -> exp(r) - r - 1 = 0.5 + ln 2 - 1
    got = k3_kl(torch.tensor([0.0]), torch.tensor([math.log(0.5)]))
    assert math.isclose(float(got), 0.5 + math.log(2) - 1, rel_tol=1e-6)


def test_loss_on_a_tiny_fixed_example_by_hand() -> None:
    # Two completions, two tokens each, the second completion's last token is padding.
    old = torch.tensor([[math.log(0.5), math.log(0.5)], [math.log(0.5), math.log(0.5)]])
    new = torch.tensor([[math.log(0.8), math.log(0.5)], [math.log(0.25), math.log(0.9)]])
    ref = old.clone()
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    cfg = GRPOLossConfig(epsilon=0.2, beta=0.1, averaging="sequence")
    loss, stats = grpo_loss(logp=new, old_logp=old, ref_logp=ref, advantages=adv, mask=mask, config=cfg)
    # ratios: 1.6 (clipped to 1.2 since A>0), 1.0, 0.5 (A<0: min(-0.5, -0.8) = -0.8 -> loss 0.8)
    kl = lambda lp, rp: math.exp(rp - lp) - (rp - lp) - 1  # noqa: E731
    t11 = -1.2 + 0.1 * kl(math.log(0.8), math.log(0.5))
    t12 = -1.0 + 0.0
    t21 = 0.8 + 0.1 * kl(math.log(0.25), math.log(0.5))
    expected = ((t11 + t12) / 2 + t21) / 2
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    token = GRPOLossConfig(epsilon=0.2, beta=0.1, averaging="token")
    loss_t, _ = grpo_loss(logp=new, old_logp=old, ref_logp=ref, advantages=adv, mask=mask, config=token)
    assert math.isclose(float(loss_t), (t11 + t12 + t21) / 3, rel_tol=1e-6)
    assert 0 < stats["clipped_fraction"] < 1


def test_a_kl_weight_per_completion_replaces_beta_by_hand() -> None:
    # The tiny example above with β per completion: 0.3 on the first, 0 on the second (an
    # anchor on one prompt, none on the other), beta in the config ignored.
    old = torch.tensor([[math.log(0.5), math.log(0.5)], [math.log(0.5), math.log(0.5)]])
    new = torch.tensor([[math.log(0.8), math.log(0.5)], [math.log(0.25), math.log(0.9)]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    kl = lambda lp, rp: math.exp(rp - lp) - (rp - lp) - 1  # noqa: E731
    expected = ((-1.2 + 0.3 * kl(math.log(0.8), math.log(0.5)) - 1.0) / 2 + 0.8) / 2
    for beta in (0.0, 0.1):
        loss, _ = grpo_loss(logp=new, old_logp=old, ref_logp=old, advantages=adv, mask=mask,
                            config=GRPOLossConfig(beta=beta), kl_weight=torch.tensor([0.3, 0.0]))
        assert math.isclose(float(loss), expected, rel_tol=1e-6)
    zero, _ = grpo_loss(logp=new, old_logp=old, ref_logp=None, advantages=adv, mask=mask,
                        config=GRPOLossConfig(beta=0.1), kl_weight=torch.zeros(2))  # no anchor: no reference needed
    assert math.isclose(float(zero), ((-1.2 - 1.0) / 2 + 0.8) / 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logp=new, old_logp=old, ref_logp=None, advantages=adv, mask=mask, config=GRPOLossConfig(beta=0.0),
                  kl_weight=torch.tensor([0.3, 0.0]))
    with pytest.raises(ValueError, match="kl_weight"):
        grpo_loss(logp=new, old_logp=old, ref_logp=old, advantages=adv, mask=mask, config=GRPOLossConfig(),
                  kl_weight=torch.tensor([-0.1, 0.0]))


def test_kl_term_is_zero_at_step_zero_and_gradient_flows() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    logp = torch.log_softmax(logits, dim=-1)
    mask = torch.ones(4, 3)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.3, 0.9]), group_size=2)
    loss, stats = grpo_loss(logp=logp, old_logp=logp.detach(), ref_logp=logp.detach(), advantages=adv, mask=mask,
                            config=GRPOLossConfig())
    assert stats["kl"] == 0.0 and stats["clipped_fraction"] == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_unfinished_completions_rank_below_every_finished_one_of_their_group() -> None:
    from server.align.engine.grpo_loss import rank_unfinished_last

    rewards = torch.tensor([3.0, 1.0, 9.0, 2.0,   5.0, 5.0, 7.0, 5.0,   4.0, 4.0, 4.0, 4.0])
    finished = torch.tensor([1, 1, 0, 1,   1, 1, 0, 0,   0, 0, 0, 0]).bool()
    got = rank_unfinished_last(rewards, finished, 4)
    # group 1: finished 3, 1, 2 (range 2) -> the unfinished 9 becomes 1 - 2 = -1
    # group 2: finished 5, 5 (no range) -> unfinished become 5 - 1 = 4
    # group 3: none finished -> unchanged
    assert got.tolist() == [3.0, 1.0, -1.0, 2.0, 5.0, 5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert rewards[2] == 9.0  # the input is not changed
    with pytest.raises(ValueError, match="whole groups"):
        rank_unfinished_last(rewards[:5], finished[:5], 4)


def test_best_of_groups_picks_the_first_top_reward_of_groups_that_differ() -> None:
    from server.align.engine.grpo_loss import best_of_groups

    rewards = torch.tensor([0.0, 1.0, 1.0,   2.0, 2.0, 2.0,   -1.0, 0.5, -3.0])
    # group 1: the first of the two 1.0s; group 2: all equal -> no best; group 3: 0.5
    assert best_of_groups(rewards, 3).tolist() == [False, True, False, False, False, False, False, True, False]
    with pytest.raises(ValueError, match="whole groups"):
        best_of_groups(rewards[:4], 3)
    with pytest.raises(ValueError, match="finite"):  # a NaN must not be argmax'd into a "best"
        best_of_groups(torch.tensor([0.0, float("nan"), 1.0]), 3)
    # after the answer-form ranking: a group the judge scored flat has no best (its
    # "best" would be an arbitrary answer), one the judge told apart keeps the ranked best
    judged = torch.tensor([0.0, 0.0, 0.0,   1.0, 0.0, 0.0,   0.0, 0.0, 0.0])
    ranked = torch.tensor([0.0, 0.0, -1.0,  1.0, 0.0, -1.0,  -1.0, -1.0, -1.0])  # a non-answer in each
    assert best_of_groups(ranked, 3).tolist() == [True, False, False, True, False, False, False, False, False]
    assert best_of_groups(ranked, 3, judged=judged).tolist() == [False, False, False, True, False, False,
                                                                 False, False, False]
    with pytest.raises(ValueError, match="judged"):
        best_of_groups(ranked, 3, judged=judged[:6])


def test_best_nll_term_by_hand_and_its_gradient_raises_a_rare_right_answer() -> None:
    from server.align.engine.grpo_loss import best_nll_term

    # two groups of two; completion 0 (tokens 0.5, 0.25) and completion 3 (one real token 0.8) are best
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.9, 0.9], [0.1, 0.1], [0.8, 1.0]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    best = torch.tensor([True, False, False, True])
    expected = ((-math.log(0.5) - math.log(0.25)) / 2 + -math.log(0.8)) / 2  # per group
    assert math.isclose(float(best_nll_term(logp, mask, best, 2)), expected, rel_tol=1e-6)
    cfg = GRPOLossConfig(beta=0.0, best_nll=2.0)
    adv = torch.zeros(4)  # no GRPO term: the loss is the weighted NLL alone
    loss, stats = grpo_loss(logp=logp, old_logp=logp, ref_logp=None, advantages=adv, mask=mask, config=cfg,
                            best=best, group_size=2)
    assert math.isclose(float(loss), 2.0 * expected, rel_tol=1e-6) and math.isclose(stats["best_nll"], expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="best completion"):
        grpo_loss(logp=logp, old_logp=logp, ref_logp=None, advantages=adv, mask=mask, config=cfg)
    with pytest.raises(ValueError):
        GRPOLossConfig(best_nll=-1.0)
    # the gradient reaches the best completions only, toward higher likelihood
    leaf = logp.clone().requires_grad_(True)
    best_nll_term(leaf, mask, best, 2).backward()
    assert leaf.grad is not None and (leaf.grad[[1, 2]] == 0).all() and (leaf.grad[0] < 0).all()
    assert leaf.grad[3, 0] < 0 and leaf.grad[3, 1] == 0  # padding takes none
