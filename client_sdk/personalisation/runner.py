"""Personalisation of one client, end to end, with its ledger and its files.

Order (each release is in the ledger before the data it covers is read — the ledger's
crash rule, fedsecure.privacy.ledger):
1. pre-flight: the validation split is large enough, the plan fits the budget — else a
   refusal, nothing written;
2. ledger entry ``personalise:replace``; stage 1; the replaced model and the decisions
   saved (``personalisation/replaced``, ``progress.json``);
3. ledger entry ``personalise:distill``; stage 2; one last decision (charged in step 2's
   entry) keeps the distilled model only if its validation accuracy beats the stage-1
   model's by the margin; the personalised model saved (``personalised_model``) with its
   report (``personalisation.json``).

A crash after step 2 resumes at stage 2 without a second charge for stage 1. A crash
inside stage 2 restarts stage 2 from the saved stage-1 model *under the entry already
written*: that run's output was never saved or released, so only one distilled model
ever exists for that entry (charged conservatively, never twice). A finished
personalisation of the same source is returned as it is, with no new release.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from fedsecure.errors import PersonalisationRefused
from fedsecure.models.encoding import EncodedPairs
from fedsecure.models.reward import RewardModel, load_reward_model, save_reward_model
from fedsecure.privacy.ledger import Ledger

from client_sdk.dp_training import DPSettings, pairwise_accuracy
from client_sdk.personalisation.plan import PersonalisationPlan, PersonalisationSettings, plan_personalisation
from client_sdk.personalisation.stages import (Decision, Noise, distil, keep_distilled, replace_components,
                                              secure_noise)

WORK_DIR, REPLACED_DIR, PROGRESS_FILE = "personalisation", "replaced", "progress.json"
OUTPUT_DIR, REPORT_FILE = "personalised_model", "personalisation.json"
PURPOSE_REPLACE, PURPOSE_DISTILL = "personalise:replace", "personalise:distill"


@dataclass(frozen=True)
class PersonalisationOutcome:
    """What personalisation produced: the model, its decisions and held-out metrics."""

    model: RewardModel
    decisions: tuple[Decision, ...]
    metrics: dict[str, float]
    resumed: bool = False
    replaced: RewardModel | None = None   # stage 1's model (None when returned from a finished run)


def save_atomically(model: RewardModel, tokenizer: object, folder: Path) -> None:
    """Write beside, then swap: a crash never leaves a half-written model."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    save_reward_model(model, tokenizer, tmp)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, doc: Mapping[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Personaliser:
    """Runs (or resumes) personalisation for one source (run, round) of a client."""

    def __init__(self, *, state_dir: Path, ledger: Ledger, tokenizer: object, settings: PersonalisationSettings,
                 dp: DPSettings, noise: Noise = secure_noise) -> None:
        self.state_dir, self.ledger, self.tokenizer = state_dir, ledger, tokenizer
        self.settings, self.dp, self.noise = settings, dp, noise
        self.work = state_dir / WORK_DIR

    def _progress(self) -> dict[str, object]:
        path = self.work / PROGRESS_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _entry_seqs(self, run_id: str, round_: int) -> dict[str, int]:
        """Ledger entries already written for this source (run, round), by purpose."""
        return {e.purpose: e.seq for e in self.ledger.entries[1:]
                if e.purpose.startswith("personalise:") and e.run_id == run_id and e.round == round_}

    def run(self, *, personal: RewardModel, teacher: RewardModel, parts: Mapping[str, list[str]],
            train: EncodedPairs, validation: EncodedPairs, heldout: EncodedPairs, run_id: str,
            round_: int) -> PersonalisationOutcome:
        """Stages 1 and 2 for the federation of (``run_id``, ``round_``); see the module doc."""
        s = self.settings
        source = f"{run_id}#{round_}"
        progress = self._progress()
        if progress.get("source") != source:
            progress = {"source": source}
        done = self._entry_seqs(run_id, round_)
        if progress.get("stage") == "done" and (self.state_dir / OUTPUT_DIR).exists():
            model, _ = load_reward_model(self.state_dir / OUTPUT_DIR)
            report = json.loads((self.state_dir / REPORT_FILE).read_text())
            return PersonalisationOutcome(model, tuple(Decision(**d) for d in report["decisions"]),
                                          report["metrics"], resumed=True)
        stage1_saved = progress.get("stage") in ("replaced", "distilling") and (self.work / REPLACED_DIR).exists()
        if (parts or s.distill_steps) and not stage1_saved and len(validation) < s.min_validation_pairs:
            raise PersonalisationRefused(
                f"the validation split has {len(validation)} pairs; deciding a replacement needs at least "
                f"{s.min_validation_pairs} (decision noise {s.decision_noise:g} × clip {s.loss_clip:g} / resolution "
                f"{s.resolution:g}); nothing replaced")
        history = self.ledger.history()
        distill_charged = PURPOSE_DISTILL in done
        plan = plan_personalisation(history=history, budget=self.ledger.budget, accountant=self.ledger.accountant,
                                    components=len(parts), train_pairs=len(train), settings=s,
                                    decisions_done=stage1_saved or PURPOSE_REPLACE in done,
                                    distillation_done=distill_charged)
        resumed = bool(done)
        # --- stage 1 ---------------------------------------------------------------------
        if stage1_saved:
            model, _ = load_reward_model(self.work / REPLACED_DIR)
            decisions = [Decision(**d) for d in progress["decisions"]]  # type: ignore[union-attr]
        else:
            if plan.decisions is not None:
                # Charged before the validation pairs are read; a crash leaves it standing.
                self.ledger.record(run_id=run_id, round_=round_, step=plan.decisions,
                                   epsilon_after=plan.epsilon_after_decisions, data_digest=validation.digest,
                                   purpose=PURPOSE_REPLACE)
            model, decisions = (replace_components(personal=personal, teacher=teacher, parts=parts,
                                                   validation=validation, settings=s, noise=self.noise)
                                if parts else (copy.deepcopy(personal), []))  # stage 2 trains it in place
            self.work.mkdir(parents=True, exist_ok=True)
            save_atomically(model, self.tokenizer, self.work / REPLACED_DIR)
            progress.update(stage="replaced", decisions=[asdict(d) for d in decisions])
            _write_json(self.work / PROGRESS_FILE, progress)
        replaced_acc = pairwise_accuracy(model, heldout)
        replaced_model = copy.deepcopy(model) if s.distill_steps else model
        # --- stage 2 ---------------------------------------------------------------------
        step = self._distill_step(plan, run_id, round_, distill_charged, train)
        result = None
        if step is not None:
            progress["stage"] = "distilling"
            _write_json(self.work / PROGRESS_FILE, progress)
            result = distil(student=model, teacher=teacher, data=train, settings=s, dp=self.dp,
                            noise_multiplier=step[0], sample_rate=step[1])
            distilled_acc = pairwise_accuracy(model, heldout)
            # Charged with stage 1's entry (its last query): keep the distilled model only if
            # its validation accuracy beats the stage-1 model's by the margin.
            verdict = keep_distilled(replaced=replaced_model, distilled=model, validation=validation, settings=s,
                                     noise=self.noise)
            if not verdict.replaced:
                model = replaced_model
        metrics = {
            "heldout_accuracy_personal": pairwise_accuracy(personal, heldout),
            "heldout_accuracy_global": pairwise_accuracy(teacher, heldout),
            "heldout_accuracy_replaced": replaced_acc,
            "heldout_accuracy_personalised": pairwise_accuracy(model, heldout),
            "components": float(len(decisions)), "replaced": float(sum(d.replaced for d in decisions)),
            "epsilon": self.ledger.epsilon, "epsilon_budget": self.ledger.budget.epsilon,
            "distill_steps": float(result.steps if result else 0),
            "distillation_kept": float(verdict.replaced) if result else 0.0,
            "distill_noise_multiplier": float(step[0]) if step else 0.0,
            **({"heldout_accuracy_distilled": distilled_acc,
                "distill_loss_first": result.loss_first, "distill_loss_last": result.loss_last,
                "distill_parameters_changed": float(result.parameters_changed)} if result else {}),
        }
        save_atomically(model, self.tokenizer, self.state_dir / OUTPUT_DIR)
        _write_json(self.state_dir / REPORT_FILE, {"source": source, "decisions": [asdict(d) for d in decisions],
                                                  "distillation": asdict(verdict) if result else None,
                                                  "metrics": metrics, "settings": asdict(s)})
        progress["stage"] = "done"
        _write_json(self.work / PROGRESS_FILE, progress)
        shutil.rmtree(self.work / REPLACED_DIR, ignore_errors=True)
        return PersonalisationOutcome(model, tuple(decisions), metrics, resumed=resumed, replaced=replaced_model)

    def _distill_step(self, plan: PersonalisationPlan, run_id: str, round_: int, charged: bool,
                      train: EncodedPairs) -> tuple[float, float, int] | None:
        """The distillation's release: the entry already written for this source (a
        restart after a crash), else a new entry written now, before training."""
        if charged:
            seq = self._entry_seqs(run_id, round_)[PURPOSE_DISTILL]
            return self.ledger.entries[seq].step()
        if plan.distillation is None:
            return None
        self.ledger.record(run_id=run_id, round_=round_, step=plan.distillation, epsilon_after=plan.epsilon_after,
                           data_digest=train.digest, purpose=PURPOSE_DISTILL)
        return plan.distillation
