"""Mixture of rewards: normalisation known answers, capability masks, renormalisation over
the clients that answered, fusion, and the router learning whom to trust."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsecure.types import Modality
from server.align.fusion import capability_mask, expand_to_items, fuse, normalise_scores, renormalise
from server.align.router import PreferenceScores, Router, fit_router, masked_softmax, weights_by_group


def test_normalisation_known_answer() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0]])
    z = normalise_scores(scores, torch.ones_like(scores, dtype=torch.bool))
    s = math.sqrt(1.5)  # (1-2)/sqrt(2/3)
    assert torch.allclose(z[0], torch.tensor([-s, 0.0, s]), atol=1e-5)
    assert torch.equal(z[1], torch.zeros(3))  # constant scores carry no ranking


def test_normalisation_ignores_unanswered_and_non_finite() -> None:
    scores = torch.tensor([[1.0, float("nan"), 3.0, float("inf")]])
    answered = torch.tensor([[True, False, True, False]])
    z = normalise_scores(scores, answered)
    assert torch.allclose(z, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    assert torch.isfinite(z).all()


def test_normalisation_is_scale_free() -> None:
    scores = torch.randn(1, 16)
    ones = torch.ones_like(scores, dtype=torch.bool)
    assert torch.allclose(normalise_scores(scores, ones), normalise_scores(1000 * scores - 7, ones), atol=1e-4)


def test_capability_mask() -> None:
    mask = capability_mask([(Modality.IMAGE,), (Modality.TEXT,), (Modality.IMAGE_TEXT,)],
                           has_image=[True, False, True], has_question=[True, True, False])
    assert mask.tolist() == [[True, False, True],   # image client: needs an image
                             [True, True, False],   # text client: needs a question
                             [True, False, False]]  # image+text: needs both
    with pytest.raises(ValueError, match="no modality"):
        capability_mask([()], has_image=[True], has_question=[True])


def test_renormalisation_over_clients_that_answered() -> None:
    w = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    available = torch.tensor([[True, True, True], [False, True, True], [False, False, False]])
    out = renormalise(w, available)
    assert torch.allclose(out[0], w[0])
    assert torch.allclose(out[1], torch.tensor([0.0, 0.6, 0.4]))
    assert torch.equal(out[2], torch.zeros(3))


def test_fusion_with_one_client_is_that_clients_normalised_scores() -> None:
    raw = torch.tensor([[0.2, 0.9, -3.0, 1.5], [5.0, 1.0, 2.0, 0.0]])
    answered = torch.tensor([[True, True, True, True], [False, False, False, False]])
    z = normalise_scores(raw, answered)
    rewards, covered = fuse(z, torch.full((4, 2), 0.5), answered)
    assert covered.all()
    assert torch.allclose(rewards, normalise_scores(raw[:1], answered[:1])[0])


def test_fusion_skips_items_no_one_answered() -> None:
    z = torch.tensor([[1.0, -1.0]])
    rewards, covered = fuse(z, torch.ones(2, 1), torch.tensor([[True, False]]))
    assert covered.tolist() == [True, False] and rewards.tolist() == [1.0, 0.0]


def test_expand_to_items() -> None:
    assert expand_to_items(torch.tensor([[1.0], [2.0]]), 3).flatten().tolist() == [1, 1, 1, 2, 2, 2]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_router_weights_are_a_distribution_over_available_clients(clients: int, prompts: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(prompts, clients, generator=gen) * 50
    available = torch.rand(prompts, clients, generator=gen) > 0.4
    w = masked_softmax(logits, available)
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert torch.equal(w[~available], torch.zeros_like(w[~available]))
    sums = w.sum(-1)
    for p in range(prompts):
        assert math.isclose(float(sums[p]), 1.0 if available[p].any() else 0.0, abs_tol=1e-5)


def _toy_preferences(pairs: int, seed: int) -> PreferenceScores:
    """Four clients on two kinds of prompt: client 0 judges kind A well, client 1 kind B,
    client 2 returns random scores everywhere, client 3 inverted scores everywhere."""
    gen = torch.Generator().manual_seed(seed)
    kind = torch.arange(pairs) % 2
    features = torch.nn.functional.one_hot(kind, 2).float() + 0.1 * torch.randn(pairs, 2, generator=gen)
    noise = lambda: torch.randn(pairs, generator=gen)  # noqa: E731
    good_a = torch.where(kind == 0, 2.0, 0.0)
    good_b = torch.where(kind == 1, 2.0, 0.0)
    chosen = torch.stack([good_a + noise(), good_b + noise(), noise(), noise()])
    rejected = torch.stack([noise(), noise(), noise(), 2.0 + noise()])
    return _pairs(features, chosen, rejected)


def _pairs(features: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> PreferenceScores:
    """Lists of two (one rejected answer each), every client answering everything."""
    c, m = chosen.shape
    return PreferenceScores(features=features, scores=torch.stack([chosen, rejected], -1),
                            answered=torch.ones(c, m, 2, dtype=torch.bool), present=torch.ones(m, 2, dtype=torch.bool),
                            capable=torch.ones(m, c, dtype=torch.bool))


def test_router_learns_to_down_weight_random_and_inverted_clients() -> None:
    data = _toy_preferences(400, seed=0)
    router = Router(feature_dim=2, clients=4, hidden=16, max_weight=1.0)  # what it learns, uncapped
    before = [p.detach().clone() for p in router.parameters()]
    fit = fit_router(router, data, steps=300, learning_rate=3e-2)
    assert any(not torch.equal(a, b) for a, b in zip(before, router.parameters(), strict=True))
    assert fit.loss_after < fit.loss_before and fit.accuracy_after > fit.accuracy_before + 0.05
    test = _toy_preferences(200, seed=1)
    with torch.no_grad():
        w = router.weights(test.features, torch.ones(200, 4, dtype=torch.bool))
    by_kind = weights_by_group(w, ["A" if i % 2 == 0 else "B" for i in range(200)], ["a", "b", "random", "inverted"])
    for kind in ("A", "B"):  # uniform would be 1/4 each
        assert by_kind[kind]["random"] < 0.12 and by_kind[kind]["inverted"] < 0.05
    assert by_kind["A"]["a"] > 0.6 and by_kind["B"]["b"] > 0.6


def test_cap_weights_known_answers() -> None:
    from server.align.fusion import cap_weights

    w = torch.tensor([[0.9, 0.08, 0.02], [0.6, 0.4, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.98, 0.0, 0.02]])
    avail = torch.tensor([[True] * 3, [True, True, False], [True, False, False], [False] * 3, [True] * 3])
    capped = cap_weights(w, avail, 0.5)
    expected = torch.tensor([[0.5, 0.4, 0.1], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    # rows: the excess in proportion; two clients: even; one client alone keeps 1 (nobody to
    # share with); nobody available; an available client of weight 0 takes the excess too.
    assert torch.allclose(capped, expected, atol=1e-6), capped
    assert torch.equal(cap_weights(w, avail, 1.0), w)


def test_the_default_router_never_lets_one_client_own_the_fusion() -> None:
    data = _toy_preferences(400, seed=0)
    router = Router(feature_dim=2, clients=4, hidden=16)
    fit_router(router, data, steps=300, learning_rate=3e-2)
    with torch.no_grad():
        w = router.weights(data.features, torch.ones(400, 4, dtype=torch.bool))
    assert float(w.max()) <= 0.5 + 1e-6 and torch.allclose(w.sum(-1), torch.ones(400))


def test_unfitted_router_is_the_uniform_mean() -> None:
    router = Router(feature_dim=4, clients=3)
    w = router.weights(torch.randn(5, 4), torch.tensor([[True, True, True]] * 4 + [[True, False, True]]))
    assert torch.allclose(w[:4], torch.full((4, 3), 1 / 3)) and torch.allclose(w[4], torch.tensor([0.5, 0.0, 0.5]))


def test_router_fit_refuses_unscored_preferences() -> None:
    data = PreferenceScores(features=torch.zeros(3, 2), scores=torch.zeros(2, 3, 2),
                            answered=torch.zeros(2, 3, 2, dtype=torch.bool), present=torch.ones(3, 2, dtype=torch.bool),
                            capable=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no preference list"):
        fit_router(Router(feature_dim=2, clients=2), data)


def test_listwise_loss_known_answers() -> None:
    """An unfitted router is the uniform mean, so the loss can be worked by hand. Lists of
    two: Bradley–Terry, softplus(−s·Δ). Longer lists: −log softmax(s·fused)[preferred], and
    a padded (absent) candidate never counts, whatever its score."""
    from server.align.router import fused_scores

    # One client, two prompts: z over (2, 0, 1, 1) → (1.4142, −1.4142, 0, 0).
    pair = _pairs(torch.zeros(2, 1), torch.tensor([[2.0, 1.0]]), torch.tensor([[0.0, 1.0]]))
    fit = fit_router(Router(feature_dim=1, clients=1), pair, steps=0, margin_scale=2.0)
    expected = (math.log1p(math.exp(-2.0 * 2.8284)) + math.log(2.0)) / 2  # margins 2.83 and 0 (a tie)
    assert math.isclose(fit.loss_before, expected, rel_tol=1e-4) and fit.accuracy_before == 0.75
    # A list of three with a fourth, absent, slot holding a huge score.
    scores = torch.tensor([[[1.0, 0.0, -1.0, 50.0]]])
    present = torch.tensor([[True, True, True, False]])
    data = PreferenceScores(features=torch.zeros(1, 1), scores=scores, answered=present.unsqueeze(0).clone(),
                            present=present, capable=torch.ones(1, 1, dtype=torch.bool))
    fused, covered = fused_scores(Router(feature_dim=1, clients=1), data)
    z = 1.0 / math.sqrt(2.0 / 3.0)  # (1, 0, −1) standardised
    assert torch.allclose(fused[0, :3], torch.tensor([z, 0.0, -z])) and fused[0, 3] == float("-inf") and covered.all()
    fit = fit_router(Router(feature_dim=1, clients=1), data, steps=0, margin_scale=1.0)
    logits = torch.tensor([z, 0.0, -z])
    assert math.isclose(fit.loss_before, float(-torch.log_softmax(logits, 0)[0]), rel_tol=1e-5)
    assert fit.accuracy_before == 1.0


def test_listwise_fit_trusts_the_client_that_puts_the_answer_first() -> None:
    """Client 0 puts the true answer first of five; client 1 ranks it above one wrong answer
    only (the one a pairwise set would sample) and puts another wrong answer first. The
    listwise fit moves weight to client 0 and the fused score puts the answer first."""
    gen = torch.Generator().manual_seed(0)
    m, k = 200, 5
    first = torch.randn(m, k, generator=gen)
    first[:, 0] = first.amax(-1) + 1.0
    decoy = torch.randn(m, k, generator=gen)
    decoy[:, 0] = decoy[:, 1] + 0.5
    decoy[:, 2] = decoy.amax(-1) + 1.0
    data = PreferenceScores(features=torch.ones(m, 2) + 0.1 * torch.randn(m, 2, generator=gen),
                            scores=torch.stack([first, decoy]), answered=torch.ones(2, m, k, dtype=torch.bool),
                            present=torch.ones(m, k, dtype=torch.bool), capable=torch.ones(m, 2, dtype=torch.bool))
    first_by_client, available = data.client_first()
    assert available.all() and first_by_client[:, 0].mean() == 1.0 and first_by_client[:, 1].mean() == 0.0
    router = Router(feature_dim=2, clients=2, max_weight=1.0)
    fit = fit_router(router, data, steps=200, learning_rate=3e-2)
    assert fit.loss_after < fit.loss_before and fit.accuracy_after > fit.accuracy_before + 0.2, fit
    with torch.no_grad():
        w = router.weights(data.features, torch.ones(m, 2, dtype=torch.bool))
    assert float(w[:, 0].mean()) > 0.8, w.mean(0)


def test_fused_lift_by_group_known_answers() -> None:
    """One client, lists of 3 candidates (chance 1/3): group a always right (lift 1), group
    b right on one list of two (first ½ → lift 0.25), group c a tie for first on every list
    (first ½ → lift 0.25), and a list nobody could judge counts nowhere."""
    from server.align.router import Router, lift_by_group

    scores = torch.tensor([[[3.0, 1.0, 0.0], [3.0, 0.0, 1.0],     # a: preferred first twice
                            [3.0, 1.0, 0.0], [0.0, 3.0, 1.0],     # b: once of two
                            [2.0, 2.0, 0.0], [2.0, 0.0, 2.0],     # c: a tie for first on both
                            [9.0, 0.0, 0.0]]])                    # d: not judged
    m = scores.shape[1]
    answered = torch.ones_like(scores, dtype=torch.bool)
    capable = torch.ones(m, 1, dtype=torch.bool)
    capable[6, 0] = False
    data = PreferenceScores(features=torch.zeros(m, 2), scores=scores, answered=answered,
                            present=torch.ones(m, 3, dtype=torch.bool), capable=capable)
    lift = lift_by_group(Router(feature_dim=2, clients=1), data, ["a", "a", "b", "b", "c", "c", "d"])
    assert lift == {"a": pytest.approx(1.0), "b": pytest.approx(0.25), "c": pytest.approx(0.25)}
    # Only the candidates of the list's own kind count: c's first list tied with an answer
    # of another kind (column 1) and is now right, its second still ties (first ¾ of lists
    # of 2: lift ½); b's first list keeps the answer it beat, its second the one it lost to
    # (first ½, chance ½: lift 0); d, left with nothing to beat, counts nowhere.
    comparable = torch.tensor([[True, True, True]] * 2 + [[True, False, True], [True, True, False]]
                              + [[True, False, True]] * 2 + [[True, False, False]])
    capable[6, 0] = True
    lift = lift_by_group(Router(feature_dim=2, clients=1), data, ["a", "a", "b", "b", "c", "c", "d"], comparable)
    assert lift == {"a": pytest.approx(1.0), "b": pytest.approx(0.0), "c": pytest.approx(0.5)}
    with pytest.raises(ValueError):
        lift_by_group(Router(feature_dim=2, clients=1), data, ["a"])
    with pytest.raises(ValueError):
        lift_by_group(Router(feature_dim=2, clients=1), data, ["a"] * 7, comparable[:, :2])
