"""Known answers of the competitors the routed mixture is compared with: uniform, min,
max, a single client, expert selection and the per-type lookup table."""

from __future__ import annotations

import torch

from server.align.combiners import ExpertSelection, Extreme, LookupTable, Routed, Single, StepScores, Uniform
from server.align.router import PreferenceScores, Router

# two clients, one prompt with two completions, one prompt with one completion
Z = torch.tensor([[1.0, -1.0, 2.0], [3.0, 0.0, -2.0]])
PROMPT_OF = torch.tensor([0, 0, 1])


def scores(answered: torch.Tensor, features: torch.Tensor | None = None, groups: tuple[str, ...] = ()) -> StepScores:
    return StepScores(z=Z, answered=answered, prompt_of=PROMPT_OF,
                      features=torch.eye(2) if features is None else features, groups=groups)


ALL = torch.ones(2, 3, dtype=torch.bool)


def test_uniform_min_max_single() -> None:
    assert Uniform()(scores(ALL))[0].tolist() == [2.0, -0.5, 0.0]
    assert Extreme("min")(scores(ALL))[0].tolist() == [1.0, -1.0, -2.0]
    assert Extreme("max")(scores(ALL))[0].tolist() == [3.0, 0.0, 2.0]
    assert Single(1)(scores(ALL))[0].tolist() == [3.0, 0.0, -2.0]


def test_missing_answers_are_renormalised_or_uncovered() -> None:
    answered = torch.tensor([[True, True, False], [False, True, False]])
    rewards, covered = Uniform()(scores(answered))
    assert rewards.tolist() == [1.0, -0.5, 0.0] and covered.tolist() == [True, True, False]
    rewards, covered = Extreme("min")(scores(answered))
    assert rewards.tolist() == [1.0, -1.0, 0.0] and covered.tolist() == [True, True, False]
    rewards, covered = Single(1)(scores(answered))  # client 1 missed item 0: item 0 is not covered
    assert covered.tolist() == [False, True, False]


def test_an_unfitted_router_is_uniform() -> None:
    router = Router(feature_dim=2, clients=2)
    assert torch.allclose(Routed(router)(scores(ALL))[0], Uniform()(scores(ALL))[0])


def _prefs(correct_a: list[bool], correct_b: list[bool], features: torch.Tensor) -> PreferenceScores:
    m = len(correct_a)
    chosen = torch.tensor([[1.0 if c else -1.0 for c in correct_a], [1.0 if c else -1.0 for c in correct_b]])
    return PreferenceScores(features=features, scores=torch.stack([chosen, torch.zeros(2, m)], -1),
                            answered=torch.ones(2, m, 2, dtype=torch.bool), present=torch.ones(m, 2, dtype=torch.bool),
                            capable=torch.ones(m, 2, dtype=torch.bool))


def test_expert_selection_picks_the_competent_client_near_each_prompt() -> None:
    # pairs near feature e0: client 0 right, client 1 wrong; near e1: the reverse
    feats = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    expert = ExpertSelection.fit(_prefs([True] * 4 + [False] * 4, [False] * 4 + [True] * 4, feats), k=4)
    rewards, _ = expert(scores(ALL, features=torch.eye(2)))
    assert rewards.tolist() == [1.0, -1.0, -2.0]  # prompt 0 → client 0, prompt 1 → client 1


def test_lookup_table_weights_by_type() -> None:
    feats = torch.zeros(8, 2)
    table = LookupTable.fit(_prefs([True] * 4 + [False] * 4, [False] * 4 + [True] * 4, feats),
                            ["colour"] * 4 + ["shape"] * 4, sharpness=50.0)
    rewards, _ = table(scores(ALL, groups=("colour", "shape")))
    assert torch.allclose(rewards, torch.tensor([1.0, -1.0, -2.0]), atol=1e-4)
    uniform, _ = table(scores(ALL, groups=("yesno", "yesno")))  # never seen: uniform
    assert torch.allclose(uniform, Uniform()(scores(ALL))[0])
