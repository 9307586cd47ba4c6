"""Reward models on free text (a task without a closed answer set): every kind reads the
response through its text stack — the image-only kind too, through a response encoder
that never sees the question — and listwise training on records of sentence answers
moves the parameters and the ranking."""

from __future__ import annotations

import torch

from fedsecure.data.images import load_image
from fedsecure.data.preferences import records_from_pairs
from fedsecure.models.encoding import encode_items, encode_records
from fedsecure.models.reward import RewardModelConfig, build_reward_model
from tasks.scenes import TASK

from client_sdk.dp_training import listwise_loss


def _pairs(kind: str, n: int) -> list:  # type: ignore[type-arg]
    return list(TASK.simulated_pairs(client="a", clients=["a", "b"], kind=kind))[:n]


def test_the_image_kind_reads_the_response_and_never_the_question() -> None:
    model, tok = build_reward_model(RewardModelConfig(kind="image", vocabulary=TASK.vocabulary(), dropout=0.0))
    assert model.text is not None and model.image is not None and not model.classifies
    with torch.no_grad():
        for p in (*model.head.parameters(), *model.fuse.parameters()):  # type: ignore[union-attr]
            p.normal_()
    image = load_image(_pairs("image", 1)[0].image)
    same = model.score(encode_items([image, image], ["describe the image.", "how many shapes are there, really?"],
                                    ["a red circle.", "a red circle."], tok))
    other = model.score(encode_items([image], ["describe the image."], ["a blue square and a red circle."], tok))
    assert torch.allclose(same[0], same[1], atol=1e-4), same  # the question changes nothing (up to rounding)
    assert not torch.allclose(same[0], other[0], atol=1e-2)  # the response does


def test_listwise_training_on_sentence_answers_moves_parameters_and_ranking() -> None:
    torch.manual_seed(0)
    records = records_from_pairs(_pairs("image_text", 600), answer_set=None)
    assert max(len(r.rejected) for r in records) == 4
    model, tok = build_reward_model(RewardModelConfig(kind="image_text", vocabulary=TASK.vocabulary(), dropout=0.0))
    data = encode_records(records, tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def ranked_first() -> float:
        with torch.no_grad():
            batch = data.batch(torch.arange(len(data)))
            out = model(batch).masked_fill(~batch["candidate_mask"], float("-inf"))
            # strictly above every other candidate: a model that ties them all is not right
            return float((out[:, :1] > out[:, 1:]).all(1).float().mean())

    start = ranked_first()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(len(data), (64,), generator=gen)
        batch = data.batch(idx)
        loss = listwise_loss(model(batch), batch["candidate_mask"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    assert ranked_first() > start + 0.2, (start, ranked_first())


def test_an_image_only_model_on_a_checkpoint_is_refused_for_free_text() -> None:
    import pytest

    with pytest.raises(ValueError, match="needs a closed answer set"):
        RewardModelConfig(kind="image", tower_family="clip", image_backbone="/nowhere", vocabulary=("a",))
