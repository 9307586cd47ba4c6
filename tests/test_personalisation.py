"""TAP personalisation on a client (issue 14): the replacement rule and the distillation
loss by known answers, the budget pre-flight, refusals that change nothing, and the whole
personalisation of a participant with its ledger, outputs, audit and crash recovery."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.easyvqa.data import answers
from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk.adapter_exchange import adapter_groups
from client_sdk.dp_training import DPSettings, margins, train_nonprivate
from client_sdk.outcomes import Aggregate, TaskContext
from client_sdk.personalisation import runner as runner_module
from client_sdk.personalisation.plan import (
    PersonalisationSettings,
    plan_personalisation,
)
from client_sdk.personalisation.rules import (
    distillation_loss,
    preference_kl,
    replacement_statistic,
    should_replace,
)
from client_sdk.personalisation.stages import (
    components,
    federation_model,
    keep_distilled,
    replace_components,
)
from client_sdk.reward_participant import (
    PERSONAL_DIR,
    ParticipantConfig,
    RewardParticipant,
)
from fedsecure.crypto.packing import TensorLayout, plain_encoding
from fedsecure.errors import (
    InvalidTaskSpec,
    PersonalisationRefused,
    PrivacyBudgetExceeded,
)
from fedsecure.kit import load_kit
from fedsecure.models.encoding import encode_pairs
from fedsecure.models.reward import (
    build_reward_model,
    load_reward_model,
)
from fedsecure.privacy.audit import audit_ledger
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.provision import Provisioned
from fedsecure.types import PersonaliseSpec, Task, TaskKind, TrainSpec
from tasks.easyvqa.shares import client_pairs

# Small splits in tests: a coarser resolution lowers the minimum validation size to 8.
SETTINGS = PersonalisationSettings(resolution=0.5, batch_size=32, distill_steps=4, learning_rate=3e-3)


# --- the rules, by known answers ------------------------------------------------------

def test_replacement_rule_at_the_margin_boundary() -> None:
    # Binary fractions: every sum below is exact.
    assert not should_replace(global_loss=0.25, personal_loss=0.375, margin=0.125)  # tie at the margin: keep
    assert should_replace(global_loss=0.25, personal_loss=0.375 + 2 ** -20, margin=0.125)
    assert not should_replace(global_loss=0.25, personal_loss=0.25, margin=0.0)     # equal, no margin: keep
    assert should_replace(global_loss=0.25, personal_loss=0.5, margin=0.0)
    assert not should_replace(global_loss=0.5, personal_loss=0.25, margin=0.0)      # global worse: keep
    with pytest.raises(ValueError, match="margin"):
        should_replace(global_loss=0.0, personal_loss=1.0, margin=-0.01)


def test_replacement_statistic_clips_each_pair_and_adds_the_noise_to_the_sum() -> None:
    personal = torch.tensor([1.0, 0.2, 3.0])
    global_ = torch.tensor([0.5, 0.7, 0.0])
    # differences 0.5, -0.5, 3 -> clipped 0.5, -0.5, 1; sum 1.0; + noise 0.5; / 3 pairs
    assert replacement_statistic(personal, global_, clip=1.0, noise=0.5) == pytest.approx(0.5)
    assert replacement_statistic(personal, global_, clip=10.0, noise=0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        replacement_statistic(personal, global_[:2], clip=1.0, noise=0.0)


def test_distillation_loss_known_answer() -> None:
    # m_T = 2, m_S = 0, τ = 2, λ = 0.5: p_T = σ(1), p_S = 1/2.
    p = 1 / (1 + math.exp(-1))
    kl = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    expected = math.log(2) + 0.5 * 2 ** 2 * kl
    got = distillation_loss(torch.tensor([0.0]), torch.tensor([2.0]), weight=0.5, temperature=2.0)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(got) == pytest.approx(0.915035, rel=1e-5)
    # The KL vanishes, with its gradient, where student and teacher agree; stays finite far out.
    s = torch.tensor([1.5, -3.0], requires_grad=True)
    kl_same = preference_kl(torch.tensor([1.5, -3.0]), s, temperature=1.0)
    kl_same.sum().backward()
    assert torch.allclose(kl_same, torch.zeros(2), atol=1e-7) and torch.allclose(s.grad, torch.zeros(2), atol=1e-7)
    assert torch.isfinite(preference_kl(torch.tensor([80.0]), torch.tensor([-80.0]), temperature=1.0)).all()
    # λ = 0 is the task loss alone.
    assert float(distillation_loss(torch.tensor([0.0]), torch.tensor([5.0]), weight=0.0, temperature=1.0)) == \
        pytest.approx(math.log(2))


@pytest.mark.parametrize("bad", [dict(margin=-0.01), dict(temperature=0.0), dict(temperature=-1.0),
                                 dict(distill_weight=-0.5), dict(margin=float("nan")), dict(distill_steps=-1)])
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PersonalisationSettings(**bad)  # type: ignore[arg-type]


def test_min_validation_pairs_follows_noise_clip_and_resolution() -> None:
    assert PersonalisationSettings().min_validation_pairs == 80   # 4 × 1 / 0.05
    assert SETTINGS.min_validation_pairs == 8


# --- the budget pre-flight ------------------------------------------------------------

def test_plan_fits_the_reserve_and_refuses_without_one() -> None:
    budget = PrivacyBudget(8.0, 1e-5, personalisation_reserve=0.1)
    from fedsecure.privacy.accountant import calibrate_noise, epsilon
    q = 64 / 1000
    sigma = calibrate_noise([], sample_rate=q, steps=90, delta=1e-5, target_epsilon=budget.federation_epsilon)
    history = [(sigma, q, 90)]
    plan = plan_personalisation(history=history, budget=budget, accountant="rdp", components=3, train_pairs=1000,
                                settings=PersonalisationSettings())
    assert plan.decisions == (4.0, 1.0, 4)  # 3 components + keeping or dropping the distilled model
    assert plan.distillation is not None and plan.distillation[1:] == (q, 30)
    assert epsilon(history, delta=1e-5) < plan.epsilon_after_decisions < plan.epsilon_after <= 8.0
    # The federation spent the whole budget (no reserve): personalisation is refused up front.
    spent = calibrate_noise([], sample_rate=q, steps=90, delta=1e-5, target_epsilon=7.999)
    with pytest.raises(PrivacyBudgetExceeded, match="reserve"):
        plan_personalisation(history=[(spent, q, 90)], budget=PrivacyBudget(8.0, 1e-5), accountant="rdp",
                             components=3, train_pairs=1000, settings=PersonalisationSettings())


# --- stage 1 on real models: replace where the federation's version is better -----------

def _text_model_and_data(seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    model, tok = build_reward_model(easyvqa_reward_config(kind="text", dropout=0.0))
    pairs = client_pairs(name="a", clients=["a", "b"], kind="text", limit=240)
    return model, encode_pairs(pairs[:160], tok, answers=answers()), encode_pairs(pairs[160:], tok, answers=answers())


def test_stage_one_replaces_a_better_federation_component_and_keeps_an_equal_one() -> None:
    trained, train, validation = _text_model_and_data()
    train_nonprivate(model=trained, data=train, steps=40, learning_rate=3e-3, batch_size=32)
    parts = components(trained, [g for g in adapter_groups(trained, "attn")])
    assert list(parts) == [g for g in sorted(adapter_groups(trained, "attn"))]
    (group,) = parts
    personal = copy.deepcopy(trained)
    with torch.no_grad():  # the personal attention adapters lost what they learnt
        for n, p in personal.named_parameters():
            if n in parts[group]:
                p.zero_()
    zero_noise = lambda std: 0.0  # noqa: E731 - the decision without its DP noise, for a known outcome
    model, (decision,) = replace_components(personal=personal, teacher=trained, parts=parts, validation=validation,
                                            settings=dataclasses.replace(SETTINGS, margin=0.0), noise=zero_noise)
    assert decision.replaced and decision.statistic > 0
    assert torch.equal(margins(model, validation), margins(trained, validation))
    # The same component on both sides: statistic 0, and 0 + margin < 0 is false at margin 0.
    model, (decision,) = replace_components(personal=trained, teacher=trained, parts=parts, validation=validation,
                                            settings=dataclasses.replace(SETTINGS, margin=0.0), noise=zero_noise)
    assert not decision.replaced and decision.statistic == 0.0
    # A margin larger than the gain keeps the personal component.
    model, (decision,) = replace_components(personal=personal, teacher=trained, parts=parts, validation=validation,
                                            settings=dataclasses.replace(SETTINGS, margin=10.0), noise=zero_noise)
    assert not decision.replaced
    assert torch.equal(margins(model, validation), margins(personal, validation))


def test_the_distilled_model_is_kept_only_when_it_beats_stage_one_on_validation() -> None:
    trained, train, validation = _text_model_and_data()
    train_nonprivate(model=trained, data=train, steps=40, learning_rate=3e-3, batch_size=32)
    worse = copy.deepcopy(trained)
    with torch.no_grad():
        worse.head[2].weight.zero_()
        worse.head[2].bias.zero_()  # every margin 0: loss log 2 on every pair
    settings = dataclasses.replace(SETTINGS, margin=0.0)
    assert keep_distilled(replaced=worse, distilled=trained, validation=validation, settings=settings,
                          noise=lambda std: 0.0).replaced
    assert not keep_distilled(replaced=trained, distilled=worse, validation=validation, settings=settings,
                              noise=lambda std: 0.0).replaced
    assert not keep_distilled(replaced=trained, distilled=copy.deepcopy(trained), validation=validation,
                              settings=settings, noise=lambda std: 0.0).replaced  # a tie keeps stage 1


# --- a participant, end to end ----------------------------------------------------------

def _participant(kits: Provisioned, tmp_path: Path, *, reserve: float = 0.1, settings=SETTINGS,  # type: ignore[no-untyped-def]
                 validation_fraction: float = 0.15, limit: int = 400) -> RewardParticipant:
    return RewardParticipant(
        kit=load_kit(kits.clients["a"]), state_dir=tmp_path / "a",
        pairs=client_pairs(name="a", clients=["a", "b"], kind="text", limit=limit),
        config=ParticipantConfig(model=easyvqa_reward_config(kind="text"), dp=DPSettings(batch_size=32),
                                 budget=PrivacyBudget(8.0, 1e-5, personalisation_reserve=reserve),
                                 personalisation=settings, validation_fraction=validation_fraction))


def _aggregate(group: str, tensors: dict[str, np.ndarray]) -> Aggregate:
    layout = TensorLayout.of(tensors)
    return Aggregate(group=group, round=1, encoding=plain_encoding(layout.digest, layout.numel), contributors=2,
                     data=layout.pack(tensors).astype("<f4").tobytes())


def _federation(part: RewardParticipant, scale: float = 0.02) -> dict[str, Aggregate]:
    """A published attention mean near the client's own adapters."""
    rng = np.random.default_rng(1)
    return {g: _aggregate(g, {n: a + rng.normal(0, scale, a.shape) for n, a in t.items()})
            for g, t in adapter_groups(part.model, "attn").items()}


def _trained(part: RewardParticipant) -> None:
    spec = TrainSpec(local_steps=4, learning_rate=3e-3, batch_size=32, planned_rounds=1)
    part.train(Task("run-x", 1, "t1", TaskKind.TRAIN, 0, 1, spec), TaskContext("a", lambda *a: None))  # type: ignore[arg-type, return-value]


def _personalise_task(part: RewardParticipant, aggregates: dict[str, Aggregate], **spec: object) -> Task:
    fields = dict(replace_margin=0.01, distill_steps=SETTINGS.distill_steps, distill_weight=1.0, temperature=1.0,
                  download_groups=tuple(aggregates))
    fields.update(spec)
    return Task("run-x", 1, "tp", TaskKind.PERSONALISE, 0, 1, PersonaliseSpec(**fields))  # type: ignore[arg-type]


def _ctx(aggregates: dict[str, Aggregate]) -> TaskContext:
    return TaskContext("a", lambda run, group, round_: aggregates[group])


def test_participant_personalises_within_its_budget_and_the_audit_passes(kits: Provisioned, tmp_path: Path) -> None:
    part = _participant(kits, tmp_path)
    _trained(part)
    assert part.ledger.epsilon <= 8.0 * 0.9 + 1e-6   # federated training left the reserve alone
    aggregates = _federation(part)
    report = dict(part.personalise(_personalise_task(part, aggregates), _ctx(aggregates)).metrics)
    purposes = [e.purpose for e in part.ledger.entries[1:]]
    assert purposes == ["", "personalise:replace", "personalise:distill"]
    assert 8.0 * 0.9 - 0.05 < part.ledger.epsilon <= 8.0 * 0.995 and report["epsilon"] == part.ledger.epsilon
    assert report["components"] == 1.0 and report["distill_steps"] == SETTINGS.distill_steps
    assert report["distill_parameters_changed"] > 0
    for key in ("personal", "global", "replaced", "personalised"):
        assert 0.0 <= report[f"heldout_accuracy_{key}"] <= 1.0
    saved, _ = load_reward_model(tmp_path / "a" / "personalised_model")
    personal, _ = load_reward_model(tmp_path / "a" / PERSONAL_DIR)
    changed = any(not torch.equal(p, q) for p, q in zip(saved.state_dict().values(), personal.state_dict().values()))
    assert changed == bool(report["replaced"] or report["distillation_kept"])
    assert report["distillation_kept"] in (0.0, 1.0) and 0.0 <= report["heldout_accuracy_distilled"] <= 1.0
    doc = json.loads((tmp_path / "a" / "personalisation.json").read_text())
    assert doc["source"] == "run-x#1" and len(doc["decisions"]) == 1
    assert doc["distillation"]["component"] == "distillation"
    audit = audit_ledger(part.ledger.path, ca_cert=part.kit.ca_cert)
    assert audit.ok, audit.violations
    # Asked again for the same source: the saved result, no new release.
    again = dict(part.personalise(_personalise_task(part, aggregates), _ctx(aggregates)).metrics)
    assert len(part.ledger.entries) == 4 and again == report
    # Scoring uses the personalised model once the operator enables it.
    part.config = dataclasses.replace(part.config, score_personalised=True)
    assert part._scoring_model() is part.personalised


def test_over_budget_personalisation_is_refused_before_any_data_is_touched(kits: Provisioned, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    part = _participant(kits, tmp_path, reserve=0.0)
    spec = TrainSpec(local_steps=4, learning_rate=3e-3, batch_size=32, planned_rounds=1)
    part.train(Task("run-x", 1, "t1", TaskKind.TRAIN, 0, 1, spec), TaskContext("a", lambda *a: None))  # type: ignore[arg-type, return-value]
    assert part.ledger.epsilon > 7.98   # no reserve: the federation spent it all
    aggregates = _federation(part)
    touched = []
    monkeypatch.setattr("client_sdk.personalisation.runner.replace_components",
                        lambda **kw: touched.append(1))  # would read the validation pairs
    with pytest.raises(PrivacyBudgetExceeded, match="reserve is 0%"):
        part.personalise(_personalise_task(part, aggregates), _ctx(aggregates))
    assert not touched and len(part.ledger.entries) == 2
    assert not (tmp_path / "a" / "personalised_model").exists() and not (tmp_path / "a" / "personalisation").exists()


def test_bad_spec_and_small_validation_split_are_refused_and_nothing_changes(kits: Provisioned,
                                                                            tmp_path: Path) -> None:
    part = _participant(kits, tmp_path, settings=PersonalisationSettings(batch_size=32, distill_steps=4))
    _trained(part)
    aggregates = _federation(part)
    for bad in (dict(replace_margin=-0.01), dict(temperature=0.0), dict(distill_weight=-1.0)):
        with pytest.raises(InvalidTaskSpec):
            part.personalise(_personalise_task(part, aggregates, **bad), _ctx(aggregates))
    assert len(part.validation_data) < 80  # type: ignore[arg-type]
    with pytest.raises(PersonalisationRefused, match="at least 80"):
        part.personalise(_personalise_task(part, aggregates), _ctx(aggregates))
    assert len(part.ledger.entries) == 2 and not (tmp_path / "a" / "personalised_model").exists()


def test_a_crash_mid_distillation_keeps_the_charge_and_a_rerun_finishes_without_another(
        kits: Provisioned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    part = _participant(kits, tmp_path)
    _trained(part)
    aggregates = _federation(part)

    def crash(**kw: object) -> None:
        raise KeyboardInterrupt("killed mid-distillation")
    monkeypatch.setattr(runner_module, "distil", crash)
    with pytest.raises(KeyboardInterrupt):
        part.personalise(_personalise_task(part, aggregates), _ctx(aggregates))
    charged = [e.purpose for e in part.ledger.entries[1:]]
    assert charged == ["", "personalise:replace", "personalise:distill"]
    eps = part.ledger.epsilon
    assert not (tmp_path / "a" / "personalised_model").exists()
    monkeypatch.undo()
    # A restarted client (a fresh participant on the same state) finishes under the same entries.
    part = _participant(kits, tmp_path)
    report = dict(part.personalise(_personalise_task(part, aggregates), _ctx(aggregates)).metrics)
    assert [e.purpose for e in part.ledger.entries[1:]] == charged and part.ledger.epsilon == eps
    assert report["distill_parameters_changed"] > 0 and (tmp_path / "a" / "personalised_model").exists()
    assert audit_ledger(part.ledger.path, ca_cert=part.kit.ca_cert).ok


def test_the_teacher_holds_the_federation_versions_and_personal_heads(kits: Provisioned, tmp_path: Path) -> None:
    part = _participant(kits, tmp_path)
    _trained(part)
    aggregates = _federation(part, scale=0.5)
    teacher = federation_model(part.model, aggregates)
    (group,) = aggregates
    mine = adapter_groups(teacher, "attn")[group]
    layout = TensorLayout.of(mine)
    published = layout.unpack(np.frombuffer(aggregates[group].data, dtype="<f4").astype(np.float64))
    for name, values in published.items():
        assert np.allclose(mine[name], values, atol=1e-6)
    assert torch.equal(teacher.head[0].weight, part.model.head[0].weight)
