"""``fedsecure client``: run one federation participant until the run ends."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from client_sdk.join import join_federation, reward_model_config
from client_sdk.reward_participant import MODEL_DIR, ParticipantConfig
from client_sdk.settings import DATA_FIELDS, ClientSettings
from fedsecure.data.local import load_pairs as load_local_pairs
from fedsecure.data.preferences import PreferencePair
from fedsecure.kit import Kit, load_kit
from fedsecure.models.reward import RewardModelConfig
from fedsecure.settings import add_options, config_schema, from_namespace
from fedsecure.task import Task
from fedsecure.types import Role


def add_data_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, required: bool = True) -> None:
    """Where a client's private pairs and reward model come from (shared with the audit)."""
    add_options(p, ClientSettings, only=DATA_FIELDS, required=required)


# `fedsecure client --config client.toml`: section -> key -> option (docs/configuration.md).
CONFIG_SCHEMA = config_schema(ClientSettings)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure client`` (:class:`ClientSettings`)."""
    p.add_argument("--config", type=Path, help="a TOML client configuration (docs/configuration.md); "
                                                "flags override it")
    add_options(p, ClientSettings)


def load_pairs(args: ClientSettings | argparse.Namespace, kit: Kit, task: Task) -> list[PreferencePair]:
    """The client's pairs, from its own file or its simulated share of ``task`` (all of
    them: ``--max-pairs`` is applied by :func:`join_federation`, and by the membership
    audit the same way)."""
    if args.pairs is not None:
        # Refused whole, with every bad record in the message (DataError is a ValueError:
        # the command prints it and exits 2 before anything is trained or sent).
        pairs = load_local_pairs(args.pairs, needs_images=args.kind != "text", answer_set=task.answer_set)
    else:
        clients = [c.strip() for c in args.simulated_clients.split(",") if c.strip()]
        pairs = task.simulated_pairs(client=kit.name, clients=clients, kind=args.kind, alpha=args.alpha,
                                     seed=args.data_seed)
    return list(pairs)


def model_config(args: ClientSettings | argparse.Namespace, kit: Kit) -> RewardModelConfig:
    """The reward model: on the backbone the kit seals (required when it seals one)."""
    return reward_model_config(kit, kind=args.kind, backbone=getattr(args, "backbone", None))


def main(args: argparse.Namespace, *, task: Task) -> int:
    """Enrol, serve tasks until the run finishes, print a summary (``task``: the one the
    kit is sealed for)."""
    settings = from_namespace(ClientSettings, args)
    kit = load_kit(settings.kit, expected_role=Role.CLIENT)
    report = join_federation(
        kit=kit, pairs=load_pairs(settings, kit, task), kind=settings.kind, epsilon=settings.epsilon,
        delta=settings.delta, backbone=settings.backbone, state=settings.state, address=settings.address,
        accountant=settings.accountant, clip=settings.clip, personalisation_reserve=settings.personalisation_reserve,
        score_personalised=settings.score_personalised, secure_dp=not settings.insecure_dp,
        data_seed=settings.data_seed, max_idle_s=settings.max_idle, max_pairs=settings.max_pairs,
        trainable=settings.trainable)
    doc = {"client": report.client, "kind": report.kind, "completed": report.completed,
           "declined": report.declined, "refused": list(report.refused), "retries": report.retries,
           "run_state": report.run_state, "heldout_accuracy": report.heldout_accuracy,
           "aggregates_applied": [list(a) for a in report.aggregates_applied],
           "heldout_pairs": report.heldout_pairs, "train_pairs": report.train_pairs,
           "epsilon": report.epsilon, "epsilon_budget": report.epsilon_budget,
           "personalisation_reserve": report.personalisation_reserve,
           "personalisation": _personalisation_doc(report.ledger.parent),
           "delta": report.delta, "ledger": str(report.ledger)}
    if settings.summary is not None:
        settings.summary.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc))
    return 0


def _personalisation_doc(state_dir: Path) -> dict[str, object] | None:
    """The client's personalisation report, if it personalised (metrics and decisions)."""
    from client_sdk.personalisation.runner import REPORT_FILE

    path = state_dir / REPORT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def membership_main(args: argparse.Namespace, *, task: Task) -> int:
    """``fedsecure audit --membership``: loss-threshold attack on this client's model,
    training pairs (members) against its held-out pairs (non-members). Read-only."""
    from fedsecure.data.preferences import holdout
    from fedsecure.models.encoding import encode_pairs
    from fedsecure.models.reward import load_reward_model
    from fedsecure.privacy.ledger import verify_ledger
    from fedsecure.privacy.membership import membership_auc

    if args.kit is None or (args.pairs is None and args.simulated_clients is None):
        raise ValueError("--membership needs the client's --kit and --pairs or --simulated-clients")
    kit = load_kit(args.kit, expected_role=Role.CLIENT)
    state = args.state or kit.path / "state"
    model, tokenizer = load_reward_model(state / MODEL_DIR)
    pairs = load_pairs(args, kit, task)
    pairs = pairs[: args.max_pairs] if args.max_pairs else pairs  # as join_federation trained
    train, held = holdout(pairs, fraction=ParticipantConfig().holdout_fraction, seed=args.data_seed)
    answers = model.config.answers
    value = membership_auc(model, encode_pairs(train, tokenizer, answers=answers),
                           encode_pairs(held, tokenizer, answers=answers))
    ledger = state / "ledger.jsonl"
    eps = verify_ledger(ledger, ca_cert=kit.ca_cert)[-1].epsilon_after if ledger.exists() else 0.0
    print(json.dumps({"client": kit.name, "membership_auc": value, "epsilon": eps}))
    return 0
