"""A client's reward-model work: DP training (task "train") and scoring (task "score").

Scores are post-processing of the DP-trained model: computing them reads no private
data beyond what the model already is, so by the post-processing property of DP they
cost no privacy budget and add no ledger entry. (The items scored come from the
server's public pool, not from the client's data.)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from client_sdk.adapter_exchange import (
    ATTENTION_FAMILY,
    adapter_groups,
    apply_aggregate,
    aux_adapters,
    clip_shared_adapters,
    encrypt_adapters,
    head_family,
    mlp_family,
    upload_families,
)
from client_sdk.dp_training import DPSettings, pairwise_accuracy, train_private
from client_sdk.outcomes import Aggregate, Handler, Scores, TaskContext, Update
from client_sdk.personalisation.plan import PersonalisationSettings
from client_sdk.personalisation.runner import OUTPUT_DIR, Personaliser, save_atomically
from client_sdk.personalisation.stages import components as personal_components
from client_sdk.personalisation.stages import federation_model
from fedsecure.crypto import ckks
from fedsecure.crypto.ckks_encryptor import Encryptor
from fedsecure.data.preferences import PreferencePair, holdout, records_from_pairs
from fedsecure.errors import InvalidTaskSpec, PersonalisationRefused, TrainingDiverged
from fedsecure.kit import Kit
from fedsecure.models.encoding import (
    EncodedPairs,
    EncodedRecords,
    encode_pairs,
    encode_records,
)
from fedsecure.models.gate import attach_gates, merge_gates, remove_gates
from fedsecure.models.groups import GroupKey
from fedsecure.models.reward import (
    SHARED_ADAPTER,
    RewardModel,
    RewardModelConfig,
    build_reward_model,
    load_reward_model,
)
from fedsecure.models.scoring import score_items
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.privacy.ledger import Ledger
from fedsecure.state_version import claim_state_dir
from fedsecure.types import (
    AlignSpec,
    Capabilities,
    LedgerHead,
    Modality,
    PersonaliseSpec,
    Role,
    Score,
    ScoreBatch,
    ScoreSpec,
    Task,
    TaskKind,
    TaskReport,
    TrainSpec,
)

log = logging.getLogger("fedsecure.client.reward")

MODALITIES = {"image_text": (Modality.IMAGE_TEXT,), "image": (Modality.IMAGE,), "text": (Modality.TEXT,)}
MODEL_DIR = "reward_model"
PERSONAL_DIR = "personal_model"


@dataclass(frozen=True)
class ParticipantConfig:
    """What a client brings: model kind and shape, budget, DP settings."""

    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    # 10 % of ε kept from federated training for personalisation (client_sdk/join.py DEFAULT_RESERVE).
    budget: PrivacyBudget = field(default_factory=lambda: PrivacyBudget(8.0, 1e-5, personalisation_reserve=0.1))
    dp: DPSettings = field(default_factory=DPSettings)
    accountant: str = "rdp"
    holdout_fraction: float = 0.2
    # TAP's validation split, carved from the non-held-out pairs and never trained on in
    # the federation, so that replacement decisions judge generalisation, and disjoint
    # from the held-out split that reports results.
    validation_fraction: float = 0.15
    personalisation: PersonalisationSettings = field(default_factory=PersonalisationSettings)
    score_personalised: bool = False   # the operator's switch: score with the personalised model once it exists
    seed: int = 0


def _downloaded(ctx: TaskContext, run_id: str, group: str, round_: int) -> Aggregate:
    """The published aggregate of ``group``; refused if it names another group (what is
    checked and applied must be what was asked for)."""
    aggregate = ctx.download_aggregate(run_id, group, round_)
    if aggregate.group != group or aggregate.round != round_:
        raise InvalidTaskSpec(f"asked for {group} of round {round_}, got {aggregate.group} of round {aggregate.round}")
    return aggregate


class RewardParticipant:
    """Holds the client's private pairs, reward model and ledger; serves train/score tasks."""

    def __init__(self, *, kit: Kit, state_dir: Path, pairs: Sequence[PreferencePair], config: ParticipantConfig) -> None:
        self.kit, self.state_dir, self.config = kit, state_dir, config
        claim_state_dir(state_dir, role=Role.CLIENT)
        train, held = holdout(pairs, fraction=config.holdout_fraction, seed=config.seed)
        if not train or not held:
            raise ValueError(f"{len(pairs)} pairs are too few to hold out an evaluation set")
        validation: list[PreferencePair] = []
        if config.validation_fraction > 0:
            train, validation = holdout(train, fraction=config.validation_fraction, seed=config.seed + 1)
            if not train:
                raise ValueError(f"{len(pairs)} pairs are too few to carve a validation split")
        self.ledger = Ledger(state_dir / "ledger.jsonl", kit=kit, budget=config.budget, accountant=config.accountant)
        model_dir = state_dir / MODEL_DIR
        if model_dir.exists():
            self.model, self.tokenizer = load_reward_model(model_dir)
            if self.model.config != config.model:
                raise ValueError(f"{model_dir}: saved model config differs from the requested one")
        else:
            self.model, self.tokenizer = build_reward_model(config.model)
            self._save()  # the starting point is durable: a failed round returns exactly here
        # Encoding validates every record up front (clear error, before any ledger entry).
        # Federated training is listwise: each record against every other answer of the
        # task's closed answer set, or every rejected response its pairs carry (issue 24);
        # TAP's distillation and the held-out figures use pairs.
        answers = config.model.answers
        self.train_data: EncodedRecords = encode_records(records_from_pairs(train, answer_set=answers or None),
                                                         self.tokenizer, answers=answers)
        self.train_pairs: EncodedPairs = encode_pairs(train, self.tokenizer, answers=answers)
        self.heldout_data: EncodedPairs = encode_pairs(held, self.tokenizer, answers=answers)
        self.validation_data: EncodedPairs | None = (encode_pairs(validation, self.tokenizer, answers=answers)
                                                     if validation else None)
        # Text longer than the tokenizer's length is cut to it, never silently: counted
        # here, on the client's own log only (a count of long records is not released).
        if self.train_data.truncated:
            log.warning("%d of %d training records have a text longer than the tokenizer's %d tokens: each was "
                        "truncated to it", self.train_data.truncated, len(self.train_data), config.model.max_length)
        self.encryptor: Encryptor | None = None
        self.personalised: RewardModel | None = None
        self.reports: list[TaskReport] = []                # one per training round
        self.applied: list[tuple[int, str, int]] = []      # (round, group, contributors) applied

    @property
    def kind(self) -> str:
        """image_text, image or text."""
        return self.config.model.kind

    def capabilities(self) -> Capabilities:
        """Declared at Hello: modality and number of training pairs."""
        return Capabilities(modalities=MODALITIES[self.kind], sample_counts=(("pairs", len(self.train_data)),),
                            backbone_sha256=self.model.config.backbone_sha256, block_shape=self.model.block_shape)

    def handlers(self) -> dict[TaskKind, Handler]:
        """Task handlers to register with a FederatedClient."""
        return {TaskKind.TRAIN: self.train, TaskKind.SCORE: self.score, TaskKind.ALIGN: self.align,
                TaskKind.PERSONALISE: self.personalise}

    def ledger_head(self) -> LedgerHead:
        """The ledger head reported every round."""
        return self.ledger.head()

    def heldout_accuracy(self) -> float:
        """Pairwise accuracy on the client's held-out pairs."""
        return pairwise_accuracy(self.model, self.heldout_data)

    def _apply_aggregates(self, task: Task, ctx: TaskContext, groups: Sequence[str], round_: int,
                          compensation: Mapping[str, float] | None = None) -> None:
        """Take the federation's published means: attention groups replace the local
        adapters; MLP and head groups (same kind only) move them by their compensation
        coefficient.
        ``compensation`` None: a SCORE task, which applies attention groups only (an MLP
        step is applied once, at the next TRAIN)."""
        changed = 0
        families = {GroupKey.parse(g).family for g in groups}
        if compensation is None:
            families &= {ATTENTION_FAMILY}
        mine = {name: family for family in families for name in adapter_groups(self.model, family)}
        for group in groups:
            if group not in mine:
                continue  # another stack, kind, backbone or block shape: nothing to apply
            family = mine[group]
            coefficient = 1.0 if family == ATTENTION_FAMILY else (compensation or {})[group]
            aggregate = _downloaded(ctx, task.run_id, group, round_)
            changed += apply_aggregate(self.model, aggregate, family=family, coefficient=coefficient)
            self.applied.append((round_, group, aggregate.contributors))
        if changed:
            self._save()
            log.info("%s: applied round-%d aggregates %s (%d values)", self.kit.name, round_, list(groups), changed)

    def _check_compensation(self, spec: TrainSpec) -> dict[str, float]:
        """FedCola's coefficients as sent, refused (InvalidTaskSpec) unless each is a
        finite number in [0, 1], for an MLP group of this client's kind that it downloads,
        and every such group it downloads has one. (The value itself follows from the
        others' sample counts, which a client does not know; the server computes it by
        the rule in server/planners/compensation.py.)"""
        coefficients = dict(spec.compensation)
        own = (mlp_family(self.kind), head_family(self.kind))
        for group, c in coefficients.items():
            if not (math.isfinite(c) and 0.0 <= c <= 1.0):
                raise InvalidTaskSpec(f"compensation coefficient {c} for {group} is outside [0, 1]")
            if group not in spec.download_groups or GroupKey.parse(group).family not in own:
                raise InvalidTaskSpec(f"compensation for {group}, which is not an MLP or head group of this "
                                      f"{self.kind} client's downloads")
        mine = {g for family in own for g in adapter_groups(self.model, family)}
        for group in spec.download_groups:
            if group in mine and group not in coefficients:
                raise InvalidTaskSpec(f"no compensation coefficient for the same-kind group {group}")
        return coefficients

    def _aux(self, task: Task, ctx: TaskContext, groups: Sequence[str], round_: int) -> dict[str, object]:
        """The other modality's attention means for the gate, validated before training."""
        aux: dict[str, object] = {}
        for group in groups:
            aux.update(aux_adapters(self.model, _downloaded(ctx, task.run_id, group, round_)))
        return aux

    def _restore(self) -> None:
        """Back to the last saved model: nothing of a failed round stays."""
        remove_gates(self.model)
        self.model, self.tokenizer = load_reward_model(self.state_dir / MODEL_DIR)

    def _encryptor(self) -> Encryptor:
        if self.encryptor is None:
            self.encryptor = Encryptor(public_context=ckks.kit_public_context(self.kit), params=ckks.kit_params(self.kit))
        return self.encryptor

    def train(self, task: Task, ctx: TaskContext) -> TaskReport | Update:
        """One round of DP training, then (if the server asks) the encrypted attention
        adapters; PrivacyBudgetExceeded propagates (a typed refusal)."""
        spec = task.spec
        if not isinstance(spec, TrainSpec):
            raise TypeError("train handler got a non-train task")
        # Everything the server sent is checked before any training (or budget) is spent.
        compensation = self._check_compensation(spec)
        families = upload_families(self.model, spec.upload_group) if spec.upload_group else []
        if spec.aux_groups and self.model.text is not None and self.model.image is not None:
            raise InvalidTaskSpec("this client's model holds both stacks; it takes no aux adapters")
        self._apply_aggregates(task, ctx, spec.download_groups, task.round - 1, compensation)
        aux = self._aux(task, ctx, spec.aux_groups, task.round - 1)
        weight = 0.0
        if spec.upload_group:
            # Our share of the round's pairs; the server's total covers every participant,
            # so any subset of weights sums to <= 1 (the CKKS bound). Checked before training.
            weight = len(self.train_data) / spec.weight_total if spec.weight_total > 0 else float("inf")
            if not 0.0 < weight <= 1.0:
                raise ValueError(f"server's weight_total {spec.weight_total} is below this client's "
                                 f"{len(self.train_data)} pairs")
        rounds_left = max(1, spec.planned_rounds - task.round + 1)
        # The server proposes the batch size (everyone's sampling rate is comparable).
        dp = dataclasses.replace(self.config.dp, batch_size=spec.batch_size) if spec.batch_size else self.config.dp
        if aux:
            # FedCola's gate: a zero scalar per attention projection, trained with the rest.
            attach_gates(self.model, stack="image" if self.kind == "image" else "text", adapter=SHARED_ADAPTER,
                         aux=aux)  # type: ignore[arg-type]
        try:
            result = train_private(model=self.model, data=self.train_data, ledger=self.ledger, settings=dp,
                                   steps=spec.local_steps, learning_rate=spec.learning_rate, rounds_left=rounds_left,
                                   run_id=task.run_id, round_=task.round)
            gates = merge_gates(self.model) if aux else {}
            bad = [n for n, p in self.model.named_parameters() if p.requires_grad and not bool(p.isfinite().all())]
            if bad:
                raise TrainingDiverged(f"parameter {bad[0]} is not finite")
        except TrainingDiverged as exc:
            # The release is in the ledger already (charged conservatively); nothing is saved
            # or uploaded, and the next round starts again from the last saved model.
            self._restore()
            raise TrainingDiverged(f"round {task.round}: {exc}") from exc
        except BaseException:
            self._restore()
            raise
        self._save()
        acc = self.heldout_accuracy()
        log.info("%s round %d: ε=%.3f/%.1f σ=%.3f loss %.3f->%.3f held-out acc %.3f", self.kit.name, task.round,
                 result.epsilon_after, self.config.budget.epsilon, result.noise_multiplier, result.loss_first,
                 result.loss_last, acc)
        report = TaskReport(metrics=tuple(sorted({
            "heldout_accuracy": acc, "epsilon": result.epsilon_after, "epsilon_budget": self.config.budget.epsilon,
            "noise_multiplier": result.noise_multiplier, "sample_rate": result.sample_rate,
            "steps": float(result.steps), "loss_first": result.loss_first, "loss_last": result.loss_last,
            "parameters_changed": float(result.parameters_changed), "ledger_seq": float(result.ledger_seq),
            **({"gate_mean": sum(gates.values()) / len(gates), "gate_max_abs": max(abs(g) for g in gates.values())}
               if gates else {})}.items())))
        self.reports.append(report)
        if not spec.upload_group:
            self._save_personal()
            return report
        clamped = clip_shared_adapters(self.model, bound=self._encryptor().params.value_bound, families=families)
        if clamped:
            log.warning("%s round %d: %d adapter values clamped into the CKKS bound before sharing",
                        self.kit.name, task.round, clamped)
            self._save()
        self._save_personal()
        # Post-processing of the DP-trained model: encrypting it costs no further budget.
        return encrypt_adapters(self.model, encryptor=self._encryptor(), families=families, weight=weight)

    def score(self, task: Task, ctx: TaskContext) -> Scores:
        """Reward for each item (post-processing of the DP model: no privacy cost)."""
        spec = task.spec
        if not isinstance(spec, ScoreSpec):
            raise TypeError("score handler got a non-score task")
        self._apply_aggregates(task, ctx, spec.download_groups, task.round)
        values = score_items(self._scoring_model(), self.tokenizer, spec.items)
        return Scores(tuple(Score(i.item_id, v) for i, v in zip(spec.items, values, strict=True)))

    def align(self, task: Task, ctx: TaskContext) -> TaskReport:
        """Serve the ALIGN stage: score the policy's completions step by step with the
        current DP reward model (post-processing: no privacy cost, no ledger entry)."""
        spec = task.spec
        if not isinstance(spec, AlignSpec):
            raise TypeError("align handler got a non-align task")
        self._apply_aggregates(task, ctx, spec.download_groups, task.round)
        model = self._scoring_model()

        def scorer(batch: ScoreBatch) -> list[Score]:
            return [Score(i.item_id, v) for i, v in zip(batch.items, score_items(model, self.tokenizer,
                                                                               batch.items), strict=True)]
        return ctx.score_session(task, scorer)

    def personalise(self, task: Task, ctx: TaskContext) -> TaskReport:
        """TAP after the federation (client_sdk.personalisation): replace shared
        components by margin on the validation split, distil the federation's model into
        the personal one under DP, save it, report held-out metrics only."""
        spec = task.spec
        if not isinstance(spec, PersonaliseSpec):
            raise TypeError("personalise handler got a non-personalise task")
        try:  # the server's knobs, checked before anything is read or charged
            settings = dataclasses.replace(self.config.personalisation, margin=spec.replace_margin,
                                           distill_steps=spec.distill_steps, distill_weight=spec.distill_weight,
                                           temperature=spec.temperature)
        except ValueError as exc:
            raise InvalidTaskSpec(str(exc)) from exc
        personal_dir = self.state_dir / PERSONAL_DIR
        if not personal_dir.exists():
            raise PersonalisationRefused("no personal model: this client has not trained in a federation round")
        if self.validation_data is None:
            raise PersonalisationRefused("this client keeps no validation split (validation_fraction 0)")
        personal, _ = load_reward_model(personal_dir)
        run_id, round_ = spec.source_run_id or task.run_id, spec.source_round or task.round
        parts = personal_components(personal, spec.download_groups)
        aggregates = {g: _downloaded(ctx, run_id, g, round_) for g in parts}
        teacher = federation_model(personal, aggregates)
        outcome = Personaliser(state_dir=self.state_dir, ledger=self.ledger, tokenizer=self.tokenizer,
                               settings=settings, dp=self.config.dp).run(
            personal=personal, teacher=teacher, parts=parts, train=self.train_pairs, validation=self.validation_data,
            heldout=self.heldout_data, run_id=run_id, round_=round_)
        self.personalised = outcome.model
        log.info("%s personalised on %s round %d: %s; held-out %.3f personal, %.3f global, %.3f personalised; "
                 "ε=%.3f/%.1f", self.kit.name, run_id, round_,
                 ", ".join(f"{d.component} {'replaced' if d.replaced else 'kept'}" for d in outcome.decisions)
                 or "no shared component", outcome.metrics["heldout_accuracy_personal"],
                 outcome.metrics["heldout_accuracy_global"], outcome.metrics["heldout_accuracy_personalised"],
                 self.ledger.epsilon, self.config.budget.epsilon)
        return TaskReport(metrics=tuple(sorted(outcome.metrics.items())))

    def _scoring_model(self) -> RewardModel:
        """The model that scores: the personalised one when the operator enabled it and it
        exists, else the federated one."""
        if self.config.score_personalised:
            if self.personalised is None and (self.state_dir / OUTPUT_DIR).exists():
                self.personalised, _ = load_reward_model(self.state_dir / OUTPUT_DIR)
            if self.personalised is not None:
                return self.personalised
        return self.model

    def _save(self) -> None:
        save_atomically(self.model, self.tokenizer, self.state_dir / MODEL_DIR)

    def _save_personal(self) -> None:
        # The client's own model as it leaves a training round, before later tasks apply
        # the federation's means: TAP's "personal" side.
        save_atomically(self.model, self.tokenizer, self.state_dir / PERSONAL_DIR)

