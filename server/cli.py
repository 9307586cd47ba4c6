"""``fedsecure server``: run the aggregation server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from fedsecure.kit import load_kit
from fedsecure.task import SealedTask, Task
from fedsecure.transport.serving import (
    add_serving_arguments,
    until_terminated,
    write_port_file,
)
from fedsecure.types import PhaseConfig, Role, RunConfig, TaskKind
from server.api.app import start_server
from server.mixture.sessions import ScoreSessions
from server.rewards.compensation import stacks_of_kinds
from server.rewards.personalise import PersonalisePlanner
from server.rewards.planners import (
    LedgerReportPlanner,
    MetricsLog,
    ScorePlanner,
    TrainPlanner,
)
from server.rounds.phases import PhasePlanner
from server.secagg.aggregator import SecureAggregator

log = logging.getLogger("fedsecure.server")


# `fedsecure server --config run.toml`: section -> key -> option (docs/configuration.md).
CONFIG_SCHEMA = {
    "server": {"kit": "kit", "address": "address", "state": "state", "keyholder_address": "keyholder_address",
               "object_store_limit_mib": "object_store_limit_mib", "task": "task"},
    "run": {"rounds": "rounds", "quorum": "quorum", "min_clients": "min_clients", "sample_rate": "sample_rate",
            "phases": "phases", "phase_deadline_s": "phase_deadline", "max_attempts": "max_attempts",
            "enroll_timeout_s": "enroll_timeout"},
    "training": {"local_steps": "local_steps", "learning_rate": "learning_rate", "batch_size": "batch_size",
                 "prompts_per_round": "prompts_per_round", "data_seed": "data_seed"},
    "personalise": {"replace_margin": "replace_margin", "distill_steps": "distill_steps",
                    "distill_weight": "distill_weight", "distill_temperature": "distill_temperature"},
    "align": {"steps": "align_steps", "out": "align_out", "prompts": "align_prompts",
              "step_deadline_s": "align_step_deadline", "hacking_rounds": "align_hacking_rounds",
              "first_round": "align_first_round", "min_fused_lift": "align_min_fused_lift"},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure server``."""
    p.add_argument("--config", type=Path, help="a TOML run configuration (docs/configuration.md); "
                                                "flags override it")
    add_serving_arguments(p, party="server", address_setting="server_address",
                          state="its database, object store and metrics")
    p.add_argument("--keyholder-address", help="host:port of the key holder (default: the kit's keyholder_address)")
    p.add_argument("--object-store-limit-mib", type=int, default=None,
                   help="most MiB of uploaded chunks and aggregates kept on disk; an upload beyond it is refused "
                        "whole with RESOURCE_EXHAUSTED (default: no limit but the disk's)")
    run = p.add_argument_group("start a run at start-up (ignored when a run already exists)")
    run.add_argument("--rounds", type=int, help="rounds of the run; omit to wait for `fedsecure admin start`")
    run.add_argument("--quorum", type=int, default=2)
    run.add_argument("--min-clients", type=int, default=2)
    run.add_argument("--sample-rate", type=float, default=1.0)
    run.add_argument("--phases", default="report_ledger", help="comma-separated task kinds per round")
    run.add_argument("--phase-deadline", type=int, default=60, help="seconds per phase")
    run.add_argument("--max-attempts", type=int, default=3)
    run.add_argument("--enroll-timeout", type=int, default=120)
    work = p.add_argument_group("reward rounds")
    work.add_argument("--local-steps", type=int, default=100, help="DP steps per client per round")
    work.add_argument("--learning-rate", type=float, default=0.01,
                      help="for DP training (listwise, with a 0.1 clip; chosen by `fedsecure bench reward-sweep`)")
    work.add_argument("--batch-size", type=int, default=128, help="expected DP batch size (records)")
    work.add_argument("--prompts-per-round", type=int, default=32,
                      help="public questions scored per round (every answer of each)")
    work.add_argument("--data-seed", type=int, default=0, help="seed of the task's split (the server's public parts)")
    tap = p.add_argument_group("PERSONALISE phase (TAP, in the run's last round; also `fedsecure admin personalise`)")
    tap.add_argument("--replace-margin", type=float, default=0.01,
                     help="replace a component when L_global + margin < L_personal on the client's validation split")
    tap.add_argument("--distill-steps", type=int, default=30, help="DP-SGD steps of distillation (0: replacement only)")
    tap.add_argument("--distill-weight", type=float, default=1.0, help="λ of the distillation term")
    tap.add_argument("--distill-temperature", type=float, default=1.0, help="τ of the distillation term")
    align = p.add_argument_group("ALIGN stage (phase 'align': GRPO of the server's policy on the clients' fused scores)")
    align.add_argument("--align-steps", type=int, default=20, help="GRPO steps per round")
    align.add_argument("--align-out", type=Path, help="policy, router and checkpoints (default: STATE/align)")
    align.add_argument("--align-prompts", type=int, default=16, help="prompts per GRPO step")
    align.add_argument("--align-first-round", type=int, default=1,
                       help="the run round the ALIGN stage starts in (earlier rounds train the reward models only)")
    align.add_argument("--align-step-deadline", type=float, default=30.0, help="seconds a step waits for scores")
    align.add_argument("--align-hacking-rounds", type=int, default=2,
                       help="rounds of rising fused reward with falling held-out accuracy that stop the stage")
    align.add_argument("--align-min-fused-lift", type=float, default=None,
                       help="GRPO only on the question types where the fused reward beats chance by this much among "
                            "answers of the type, on the router's public questions (0 chance, 1 always right; "
                            "default: the stage's, 0.5; -1: every type)")


def run_config_from_args(args: argparse.Namespace) -> RunConfig | None:
    """The run to start, from command-line options (None: wait for the admin)."""
    if args.rounds is None:
        return None
    try:
        kinds = [TaskKind[k.strip().upper()] for k in args.phases.split(",") if k.strip()]
    except KeyError as exc:
        raise ValueError(f"unknown phase kind {exc}; choose from {[k.name.lower() for k in TaskKind]}") from exc
    return RunConfig(rounds=args.rounds, sample_rate=args.sample_rate, quorum=args.quorum,
                     min_clients=args.min_clients, phases=tuple(PhaseConfig(k, args.phase_deadline) for k in kinds),
                     max_attempts=args.max_attempts, enroll_timeout_s=args.enroll_timeout)


def build_planners(args: argparse.Namespace, state_dir: Path, aggregator: SecureAggregator,
                   sessions: ScoreSessions | None = None, *, task: Task) -> dict[TaskKind, PhasePlanner]:
    """The real planners this server offers for ``task`` (reward training with secure
    aggregation, scoring, and — given the score ``sessions`` — the ALIGN stage)."""
    metrics = MetricsLog(state_dir / "metrics.jsonl")
    questions = task.server_part("reward_eval", seed=args.data_seed)
    planners: dict[TaskKind, PhasePlanner] = {}
    if sessions is not None and args.align_steps > 0:
        from server.mixture.vqa_stage import VQAStageSettings, build_vqa_stage
        from server.rewards.align import AlignPlanner

        settings = VQAStageSettings(out=args.align_out or state_dir / "align", steps_per_round=args.align_steps,
                                    prompts_per_step=args.align_prompts, step_deadline_s=args.align_step_deadline,
                                    hacking_rounds=args.align_hacking_rounds, seed=args.data_seed,
                                    **({} if args.align_min_fused_lift is None
                                       else {"min_fused_lift": args.align_min_fused_lift}))
        planners[TaskKind.ALIGN] = AlignPlanner(sessions=sessions, metrics=metrics,
                                                roster_file=settings.out / "roster.json",
                                                build_stage=lambda roster: build_vqa_stage(roster, settings, task=task),
                                                steps_per_round=args.align_steps,
                                                step_deadline_s=args.align_step_deadline,
                                                first_round=args.align_first_round)
    return planners | {
        TaskKind.TRAIN: TrainPlanner(metrics=metrics, aggregator=aggregator, local_steps=args.local_steps,
                                     learning_rate=args.learning_rate, batch_size=args.batch_size,
                                     stacks_of=stacks_of_kinds(closed_answer_set=task.answer_set is not None)),
        TaskKind.SCORE: ScorePlanner(task=task, questions=questions, metrics=metrics, prompts_per_round=args.prompts_per_round,
                                     seed=args.data_seed),
        TaskKind.REPORT_LEDGER: LedgerReportPlanner(metrics=metrics),
        TaskKind.PERSONALISE: PersonalisePlanner(metrics=metrics, margin=args.replace_margin,
                                                 distill_steps=args.distill_steps, distill_weight=args.distill_weight,
                                                 temperature=args.distill_temperature),
    }


def main(args: argparse.Namespace, *, task: Task) -> int:
    """Serve ``task`` until a termination signal; state survives in the state folder."""
    kit = load_kit(args.kit, expected_role=Role.SERVER)
    # A server on another task than its kit's would score and align on answers the
    # clients' models were never built for: refused at start (issue 25, bad input).
    SealedTask.from_settings(kit.settings).require(task)
    config = run_config_from_args(args)
    state_dir = args.state or kit.path / "state"
    asyncio.run(_serve(args, kit, args.address or kit.server_address, state_dir, config, task))
    return 0


async def _serve(args, kit, address, state_dir, config, task) -> None:  # type: ignore[no-untyped-def]
    limit = args.object_store_limit_mib
    aggregator = SecureAggregator.open(kit=kit, state_dir=state_dir, keyholder_address=args.keyholder_address,
                                       object_store_bytes=limit * 2**20 if limit else None)
    sessions = ScoreSessions()
    running = await start_server(kit=kit, address=address, state_dir=state_dir, run_config=config,
                                 planners=build_planners(args, state_dir, aggregator, sessions, task=task),
                                 aggregator=aggregator, sessions=sessions)
    write_port_file(args.port_file, running.port)
    await until_terminated()
    log.info("shutting down")
    await running.stop(grace=2.0)
