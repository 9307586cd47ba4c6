"""``fedsecure client``: run one federation participant until the run ends."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from client_sdk.join import DEFAULT_RESERVE, join_federation, reward_model_config
from client_sdk.reward_participant import MODEL_DIR, ParticipantConfig
from fedsecure.data.local import load_pairs as load_local_pairs
from fedsecure.data.preferences import PreferencePair
from fedsecure.kit import Kit, load_kit
from fedsecure.models.reward import KINDS, RewardModelConfig
from fedsecure.privacy.accountant import ACCOUNTANTS
from fedsecure.task import Task
from fedsecure.types import Role


def add_data_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, required: bool = True) -> None:
    """Where a client's private pairs and reward model come from (shared with the audit)."""
    p.add_argument("--kit", required=required, type=Path, help="this client's kit folder")
    p.add_argument("--state", type=Path, help="ledger and model folder (default: KIT/state)")
    p.add_argument("--kind", choices=KINDS, default="image_text",
                   help="reward model kind: image_text, image or text (docs/design.md §5)")
    data = p.add_mutually_exclusive_group(required=required)
    data.add_argument("--pairs", type=Path, help="local preference pairs: JSONL, Parquet or a `datasets` folder "
                                                 "(check it first: `fedsecure data check PATH`)")
    data.add_argument("--simulated-clients", dest="simulated_clients", help="comma-separated federation clients: use this client's "
                                                "simulated Dirichlet share of the task's data (demos, benchmarks)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the simulated split")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--max-pairs", type=int, default=None, help="use at most this many pairs")
    p.add_argument("--backbone", type=Path,
                   help="the federation's pretrained backbone folder (its SHA-256 must be the one the kit seals)")


# `fedsecure client --config client.toml`: section -> key -> option (docs/configuration.md).
CONFIG_SCHEMA = {
    "client": {"kit": "kit", "state": "state", "address": "address", "summary": "summary", "max_idle_s": "max_idle"},
    "data": {"kind": "kind", "pairs": "pairs", "simulated_clients": "simulated_clients", "alpha": "alpha",
             "data_seed": "data_seed", "max_pairs": "max_pairs", "backbone": "backbone"},
    "privacy": {"epsilon": "epsilon", "delta": "delta", "accountant": "accountant", "clip": "clip",
                "personalisation_reserve": "personalisation_reserve", "insecure_dp": "insecure_dp"},
    "scoring": {"personalised": "score_personalised"},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure client``."""
    p.add_argument("--config", type=Path, help="a TOML client configuration (docs/configuration.md); "
                                                "flags override it")
    add_data_arguments(p)
    p.add_argument("--address", help="server host:port (default: the kit's server_address)")
    p.add_argument("--epsilon", type=float, default=8.0, help="privacy budget ε over all rounds")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp")
    p.add_argument("--personalisation-reserve", type=float, default=None,
                   help="share of ε kept from federated training for personalisation (default: the kit's "
                        f"personalisation_reserve, else {DEFAULT_RESERVE})")
    p.add_argument("--score-personalised", action="store_true",
                   help="once personalised, score the server's items with the personalised model")
    p.add_argument("--clip", type=float, default=0.1, help="per-pair gradient norm bound")
    p.add_argument("--insecure-dp", action="store_true",
                   help="turn DP secure_mode off (seedable PRNG): tests and benchmarks only")
    p.add_argument("--summary", type=Path, help="write a JSON summary of the run here")
    p.add_argument("--max-idle", type=float, default=None, help="give up after this many idle seconds")


def load_pairs(args: argparse.Namespace, kit: Kit, task: Task) -> list[PreferencePair]:
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


def model_config(args: argparse.Namespace, kit: Kit) -> RewardModelConfig:
    """The reward model: on the backbone the kit seals (required when it seals one)."""
    return reward_model_config(kit, kind=args.kind, backbone=getattr(args, "backbone", None))


def main(args: argparse.Namespace, *, task: Task) -> int:
    """Enrol, serve tasks until the run finishes, print a summary (``task``: the one the
    kit is sealed for)."""
    kit = load_kit(args.kit, expected_role=Role.CLIENT)
    report = join_federation(
        kit=kit, pairs=load_pairs(args, kit, task), kind=args.kind, epsilon=args.epsilon, delta=args.delta,
        backbone=args.backbone, state=args.state, address=args.address, accountant=args.accountant, clip=args.clip,
        personalisation_reserve=args.personalisation_reserve, score_personalised=args.score_personalised,
        secure_dp=not args.insecure_dp, data_seed=args.data_seed, max_idle_s=args.max_idle, max_pairs=args.max_pairs)
    doc = {"client": report.client, "kind": report.kind, "completed": report.completed,
           "declined": report.declined, "refused": list(report.refused), "retries": report.retries,
           "run_state": report.run_state, "heldout_accuracy": report.heldout_accuracy,
           "aggregates_applied": [list(a) for a in report.aggregates_applied],
           "heldout_pairs": report.heldout_pairs, "train_pairs": report.train_pairs,
           "epsilon": report.epsilon, "epsilon_budget": report.epsilon_budget,
           "personalisation_reserve": report.personalisation_reserve,
           "personalisation": _personalisation_doc(report.ledger.parent),
           "delta": report.delta, "ledger": str(report.ledger)}
    if args.summary is not None:
        args.summary.write_text(json.dumps(doc, indent=2))
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
