"""Rollouts: seeded, padded after EOS, never emit suppressed ids, and their sampling
log-probabilities equal what the scoring forward computes (KV-cache path = full path)."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from fedsecure.models.policy_vlm import tiny_llama_config
from server.align.engine.prompts import Prompt, collate_prompts
from server.align.engine.rollouts import SamplingConfig, completion_logp, generate, sample_next

PAD, BOS, EOS = 0, 1, 2


def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=24, hidden=32, layers=2, heads=2)).eval()


def batch():  # type: ignore[no-untyped-def]
    prompts = [Prompt("a", "", (5, 6, 7)), Prompt("b", "", (8, 9, 10, 11, 12, 13)), Prompt("c", "", (4,))]
    return collate_prompts(prompts, pad_id=PAD)


def run(seed: int, config: SamplingConfig = SamplingConfig(max_new_tokens=10)):  # type: ignore[no-untyped-def]
    return generate(model(), batch(), group_size=4, config=config, eos_id=EOS, pad_id=PAD,
                    generator=torch.Generator().manual_seed(seed), suppressed=torch.tensor([PAD, BOS]))


def test_prompts_are_left_padded() -> None:
    b = batch()
    assert b.input_ids.tolist()[0] == [PAD, PAD, PAD, 5, 6, 7]
    assert b.attention_mask.tolist()[2] == [0, 0, 0, 0, 0, 1]


def test_rollouts_are_seeded_and_shaped_in_groups() -> None:
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert a.completion_ids.shape[0] == 12 and a.prompt_ids.shape[0] == 12
    assert torch.equal(a.prompt_ids[0], a.prompt_ids[3]) and not torch.equal(a.prompt_ids[3], a.prompt_ids[4])


def test_after_eos_rows_are_padding_and_suppressed_ids_never_appear() -> None:
    r = run(3, SamplingConfig(max_new_tokens=40))
    ids, mask = r.completion_ids, r.completion_mask
    for row, m in zip(ids.tolist(), mask.tolist(), strict=True):
        if EOS in row:
            end = row.index(EOS)
            assert all(t == PAD for t in row[end + 1:]) and all(v == 0 for v in m[end + 1:])
            assert all(v == 1 for v in m[:end + 1])
        real = [t for t, v in zip(row, m, strict=True) if v]
        assert PAD not in real and BOS not in real
    assert (r.sampling_logp[mask == 0] == 0).all()


def test_sampling_logp_equals_the_scoring_forward() -> None:
    m, r = model(), run(4)
    with torch.no_grad():
        scored = completion_logp(m, r, temperature=1.0, suppressed=torch.tensor([PAD, BOS]))
    keep = r.completion_mask.bool()
    torch.testing.assert_close(scored[keep], r.sampling_logp[keep], rtol=1e-4, atol=1e-4)
    assert (scored[~keep] == 0).all()


def test_temperature_scales_the_scored_logits_too() -> None:
    config = SamplingConfig(temperature=0.7, max_new_tokens=6)
    m, r = model(), run(5, config)
    with torch.no_grad():
        scored = completion_logp(m, r, temperature=0.7, suppressed=torch.tensor([PAD, BOS]))
    keep = r.completion_mask.bool()
    torch.testing.assert_close(scored[keep], r.sampling_logp[keep], rtol=1e-4, atol=1e-4)


def test_top_p_keeps_the_nucleus_and_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]] * 200)
    g = torch.Generator().manual_seed(0)
    tokens, logp = sample_next(logits, config=SamplingConfig(top_p=0.5), generator=g)
    assert set(tokens.tolist()) == {0} and torch.allclose(logp, torch.zeros(200))  # nucleus = {0}
    tokens, _ = sample_next(logits, config=SamplingConfig(top_p=0.9), generator=g)
    assert set(tokens.tolist()) == {0, 1}  # p(0)=0.71, p(0)+p(1)=0.97 covers 0.9
    tokens, _ = sample_next(logits, config=SamplingConfig(temperature=0.0), generator=g)
    assert set(tokens.tolist()) == {0}


def test_shared_prefix_scoring_matches_a_full_forward_in_values_and_gradients() -> None:
    from server.align.engine.positions import text_positions as position_ids

    m, r = model(), run(6)
    suppressed = torch.tensor([PAD, BOS])
    shared = completion_logp(m, r, temperature=1.0, suppressed=suppressed)
    (shared * r.completion_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
    t = r.completion_ids.shape[1]
    logits = m(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -t - 1:-1]
    logits = logits.index_fill(-1, suppressed, float("-inf"))
    full = logits.gather(-1, r.completion_ids[..., None]).squeeze(-1) - logits.logsumexp(-1)
    full = torch.where(r.completion_mask.bool(), full, 0.0)
    (full * r.completion_mask).sum().backward()
    torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-5)
    assert len(grads) == len([p for p in m.parameters() if p.grad is not None]) > 10
    for n, p in m.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=1e-5)


def test_sampling_draws_tokens_with_their_probabilities() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.clamp(min=1e-30).log().expand(20000, 4)
    tokens, logp = sample_next(logits, config=SamplingConfig(), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=4).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    torch.testing.assert_close(logp, probs.clamp(min=1e-30).log()[tokens])
