"""``join_federation``: the one call a hospital or a bank makes to take part in a run.

It is the client's composition root — ``fedsecure client`` calls it too — so the sealed
kit, the data check, the backbone check, the privacy budget and the DP settings are put
together in one place, before any data is read into a model or any byte is sent.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from client_sdk.client import FederatedClient
from client_sdk.dp_training import DPSettings
from client_sdk.reward_participant import ParticipantConfig, RewardParticipant
from fedsecure.data.local import load_pairs as load_local_pairs
from fedsecure.data.preferences import PreferencePair
from fedsecure.errors import KitError
from fedsecure.kit import Kit, load_kit
from fedsecure.models.backbone import sealed_backbones, verify_backbone
from fedsecure.models.reward import KINDS, RewardModelConfig, config_on_backbone
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.task import SealedTask
from fedsecure.types import Role

# Share of the ε budget federated training leaves for personalisation: 10% (ε 0.8 of 8),
# measured to leave room for the replacement decisions and 30 distillation steps.
DEFAULT_RESERVE = 0.1


@dataclass(frozen=True)
class ClientReport:
    """What taking part in one run did: tasks answered, the run's end state, the reward
    model's held-out pairwise accuracy and the privacy spent, with the ledger to audit."""

    client: str
    kind: str
    run_state: str
    completed: dict[str, int]
    declined: dict[str, int]
    refused: tuple[str, ...]
    retries: int
    heldout_accuracy: float
    heldout_pairs: int
    train_pairs: int
    epsilon: float
    epsilon_budget: float
    delta: float
    personalisation_reserve: float
    ledger: Path
    aggregates_applied: tuple[tuple[str, ...], ...] = field(default=())


def reward_model_config(kit: Kit, *, kind: str, backbone: Path | None) -> RewardModelConfig:
    """The reward model on the backbone the kit seals. A federation that seals backbones
    needs one of them, checked against the sealed digest (a changed file would change
    every score the server fuses); one that seals none refuses a backbone. The task's
    answer set and words come from the kit too (sealed by the CA)."""
    task = SealedTask.from_settings(kit.settings)
    sealed = sealed_backbones(kit.settings)
    if not sealed:
        if backbone is not None:
            raise KitError(f"{kit.path}: this federation seals no backbone; run without --backbone")
        return RewardModelConfig(kind=kind, answers=task.answers, vocabulary=task.vocabulary)
    if backbone is None:
        raise KitError(f"{kit.path}: this federation's reward models use one of its pretrained backbones "
                       f"(sha256 {', '.join(s[:16] + '…' for s in sealed)}): pass --backbone DIR")
    verify_backbone(backbone, expected_sha256=list(sealed))
    return config_on_backbone(kind, backbone, answers=task.answers, vocabulary=task.vocabulary)


def join_federation(*, kit: Path | Kit, pairs: Path | Sequence[PreferencePair], kind: str = "image_text",
                    epsilon: float = 8.0, delta: float = 1e-5, backbone: Path | None = None,
                    state: Path | None = None, address: str | None = None, max_pairs: int | None = None,
                    accountant: str = "rdp", clip: float = 0.1, personalisation_reserve: float | None = None,
                    score_personalised: bool = False, secure_dp: bool = True, data_seed: int = 0,
                    trainable: str = "all",
                    max_idle_s: float | None = None, stop: threading.Event | None = None) -> ClientReport:
    """Enrol with the federation the kit names, train a reward model on ``pairs`` under
    (ε, δ)-DP, score the server's items and report the ledger until the run ends.

    ``pairs`` is a file (JSONL, Parquet or a ``datasets`` folder: ``id, image, question,
    chosen, rejected``) checked whole before anything starts — every bad record is named
    in the :class:`fedsecure.data.local.DataError` — or pairs already loaded. The kit is
    verified against the consortium CA; its personalisation reserve applies unless one is
    given. ``trainable`` is what each round's DP training updates
    (:data:`client_sdk.dp_training.TRAINABLE_SETS`). Returns a :class:`ClientReport`; the model and ledger stay under ``state``
    (default: the kit's ``state`` folder)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not epsilon > 0 or not 0 < delta < 1:
        raise ValueError(f"need ε > 0 and 0 < δ < 1, got ε={epsilon}, δ={delta}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError("max_pairs must be positive")
    loaded_kit = kit if isinstance(kit, Kit) else load_kit(kit, expected_role=Role.CLIENT)
    if loaded_kit.role is not Role.CLIENT:
        raise KitError(f"{loaded_kit.path}: a client kit is needed, got a {loaded_kit.role.value} kit")
    if isinstance(pairs, Path):
        # Refused whole, with every bad record in the message, before anything is trained or sent.
        answers = SealedTask.from_settings(loaded_kit.settings).answers
        data = load_local_pairs(pairs, needs_images=kind != "text", answer_set=answers or None)
    else:
        data = list(pairs)
    data = data[:max_pairs] if max_pairs else data
    reserve = (float(loaded_kit.settings.get("personalisation_reserve", DEFAULT_RESERVE))
               if personalisation_reserve is None else personalisation_reserve)
    config = ParticipantConfig(
        model=reward_model_config(loaded_kit, kind=kind, backbone=backbone),
        budget=PrivacyBudget(epsilon, delta, personalisation_reserve=reserve),
        score_personalised=score_personalised,
        dp=DPSettings(max_grad_norm=clip, secure_mode=secure_dp, trainable=trainable), accountant=accountant,
        seed=data_seed)
    participant = RewardParticipant(kit=loaded_kit, state_dir=state or loaded_kit.path / "state", pairs=data,
                                    config=config)
    with FederatedClient(kit=loaded_kit, address=address, capabilities=participant.capabilities(),
                         handlers=participant.handlers(), ledger_head=participant.ledger_head) as client:
        summary = client.run(max_idle_s=max_idle_s, stop=stop)
    return ClientReport(
        client=loaded_kit.name, kind=participant.kind, run_state=summary.run_state,
        completed=dict(summary.completed), declined=dict(summary.declined), refused=tuple(summary.refused),
        retries=summary.retries, heldout_accuracy=participant.heldout_accuracy(),
        heldout_pairs=len(participant.heldout_data), train_pairs=len(participant.train_data),
        epsilon=participant.ledger.epsilon, epsilon_budget=config.budget.epsilon, delta=config.budget.delta,
        personalisation_reserve=config.budget.personalisation_reserve, ledger=participant.ledger.path,
        aggregates_applied=tuple(tuple(a) for a in participant.applied))
