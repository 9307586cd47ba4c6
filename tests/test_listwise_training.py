"""Listwise reward training (issue 24 item 1): records with every candidate answer, the
loss's known answers, and DP training that moves the parameters and the metric."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk.dp_training import (
    DPSettings,
    DPStepper,
    bt_loss,
    listwise_loss,
    record_accuracy,
    train_nonprivate,
)
from fedsecure.data.preferences import (
    PreferencePair,
    PreferenceRecord,
    records_from_pairs,
)
from fedsecure.models.encoding import encode_pairs, encode_records
from fedsecure.models.reward import build_reward_model
from tasks.easyvqa.data import answers, load_records
from tasks.easyvqa.shares import client_pairs


def test_listwise_loss_known_answers() -> None:
    # Equal rewards over K real candidates: log K.
    assert float(listwise_loss(torch.zeros(3, 5), torch.ones(3, 5, dtype=torch.bool))) == pytest.approx(math.log(5))
    # Two candidates: exactly Bradley–Terry on the margin.
    r = torch.tensor([[1.5, -0.5], [0.2, 0.7]])
    torch.testing.assert_close(listwise_loss(r, torch.ones(2, 2, dtype=torch.bool)), bt_loss(r[:, 0] - r[:, 1]))
    # Padding is ignored whatever it scores.
    padded = torch.tensor([[1.5, -0.5, 99.0], [0.2, 0.7, -99.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    torch.testing.assert_close(listwise_loss(padded, mask), bt_loss(r[:, 0] - r[:, 1]))


IMAGE = load_records("train")[1].image  # any easy-VQA image


def _pair(rid: str, chosen: str, rejected: str, question: str = "what colour is the shape?") -> PreferencePair:
    return PreferencePair(rid, question, chosen, rejected, image=IMAGE)


def test_records_from_pairs_closed_set_and_free_text() -> None:
    pairs = [_pair("r1", "red", "blue"), _pair("r1", "red", "green"), _pair("r1", "red", "blue"),
             _pair("r2", "circle", "triangle", "what shape?")]
    closed = records_from_pairs(pairs, answer_set=answers())
    assert [r.record_id for r in closed] == ["r1", "r2"]
    assert set(closed[0].candidates) == set(answers()) and closed[0].candidates[0] == "red"
    free = records_from_pairs(pairs)
    assert free[0].rejected == ("blue", "green") and free[1].rejected == ("triangle",)
    with pytest.raises(ValueError, match="disagree"):
        records_from_pairs([_pair("r1", "red", "blue"), _pair("r1", "teal", "blue")])
    with pytest.raises(ValueError, match="not in the answer set"):
        records_from_pairs([_pair("r1", "crimson", "blue")], answer_set=answers())
    with pytest.raises(ValueError, match="distinct"):
        PreferenceRecord("r", "q", "red", ("red",), IMAGE)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(answers()), st.sampled_from(answers())),
                min_size=1, max_size=20))
def test_records_never_reject_their_chosen_answer(rows: list[tuple[str, str, str]]) -> None:
    chosen = {}
    pairs = []
    for rid, c, r in rows:
        c = chosen.setdefault(rid, c)
        if r != c:
            pairs.append(_pair(rid, c, r))
    if not pairs:
        return
    for rec in records_from_pairs(pairs):
        assert rec.chosen not in rec.rejected and len(set(rec.rejected)) == len(rec.rejected)


def test_encoded_records_pad_uneven_candidate_lists() -> None:
    _, tok = build_reward_model(easyvqa_reward_config(kind="text"))
    recs = [PreferenceRecord("a", "what colour?", "red", ("blue",), IMAGE),
            PreferenceRecord("b", "what colour?", "green", ("blue", "teal", "gray"), IMAGE)]
    data = encode_records(recs, tok, answers=answers())
    assert data.candidates == 4 and data.candidate_mask.tolist() == [[True, True, False, False], [True] * 4]
    batch = data.batch(torch.arange(2))
    assert batch["candidate_input_ids"].shape[:2] == (2, 4)


def test_dp_stepper_keeps_frozen_stacks_in_eval_mode() -> None:
    torch.manual_seed(0)
    model, tok = build_reward_model(easyvqa_reward_config(kind="image_text"))
    model.train()  # as a careless caller might leave it
    data = encode_records(records_from_pairs(client_pairs(name="a", clients=["a", "b"], kind="image_text", limit=16),
                                             answer_set=answers()), tok, answers=answers())
    with DPStepper(model=model, settings=DPSettings(batch_size=8, secure_mode=False), noise_multiplier=1.0,
                   learning_rate=1e-2, sample_rate=0.5) as stepper:
        dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert dropouts and not any(m.training for m in dropouts)
        assert model.head[0].training and model.fuse.training
        stepper.step(data)
    assert not model.training


@pytest.mark.parametrize("kind", ["image_text", "image", "text"])
def test_listwise_training_moves_parameters_and_accuracy(kind: str) -> None:
    torch.manual_seed(0)
    model, tok = build_reward_model(easyvqa_reward_config(kind=kind, dropout=0.0))
    pairs = client_pairs(name="a", clients=["a", "b"], kind=kind, limit=256)
    data = encode_records(records_from_pairs(pairs, answer_set=answers()), tok, answers=answers())
    before_params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    before = record_accuracy(model, data)
    losses = train_nonprivate(model=model, data=data, steps=60, learning_rate=1e-2, batch_size=64)
    after = record_accuracy(model, data)
    assert any(not torch.equal(before_params[n], p) for n, p in model.named_parameters() if p.requires_grad)
    assert losses[-1] < losses[0]
    # A zero head ties every candidate (ties count wrong); training must rank the chosen first.
    assert before == 0.0 and after > 0.3


def test_batches_drop_padding_columns_and_keep_the_rewards() -> None:
    """A batch's text ends at the last column any of its rows attends to; the rewards are
    those of the fully padded rows (every dropped column is masked padding)."""
    from fedsecure.models.encoding import trim_padding

    torch.manual_seed(0)
    model, tok = build_reward_model(easyvqa_reward_config(kind="image_text"))
    model.eval()
    data = encode_records(records_from_pairs(client_pairs(name="a", clients=["a", "b"], kind="image_text", limit=40),
                                             answer_set=answers()), tok, answers=answers())
    idx = torch.arange(len(data))
    batch = data.batch(idx)
    width = int(data.text["candidate_attention_mask"][idx].sum(-1).max())
    assert batch["candidate_input_ids"].shape[-1] == width < data.text["candidate_input_ids"].shape[-1]
    assert batch["position_ids"].shape == (len(idx), width)
    padded = {**batch, **{k: v[idx] for k, v in data.text.items()}}
    seq = padded["candidate_input_ids"].shape[-1]
    padded["position_ids"] = torch.arange(seq).expand(len(idx), seq).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(padded), rtol=0, atol=1e-6)
    left = {"attention_mask": torch.tensor([[0, 1, 1], [0, 0, 1]]), "input_ids": torch.tensor([[0, 5, 6], [0, 0, 7]])}
    assert trim_padding(left)["input_ids"].shape[-1] == 3  # left padding: nothing to drop


def test_text_beyond_the_tokenizers_length_is_truncated_and_counted() -> None:
    """Issue 25 (bad input): free text longer than the tokenizer's length is cut to it and
    counted, per record and per pair, never silently mixed in."""
    _, tok = build_reward_model(easyvqa_reward_config(kind="text"))
    long = " ".join(["nodule"] * 40)
    recs = [PreferenceRecord("short", "what colour?", "red", ("blue",), IMAGE),
            PreferenceRecord("long", "what colour?", "red", (long, "blue"), IMAGE)]
    data = encode_records(recs, tok)
    assert data.truncated == 1 and data.text["candidate_input_ids"].shape[-1] <= 24
    pairs = [_pair("p1", "red", "blue"), _pair("p2", "red", long), _pair("p3", long, "blue")]
    assert encode_pairs(pairs, tok).truncated == 2
