"""The server's composition root: the one place it is assembled — store, round engine,
secure aggregator, score sessions, phase planners, interceptors, servicers, health.

:func:`serve_settings` builds everything an operator's :class:`server.settings.ServerSettings`
asks for (``fedsecure server`` calls it); :func:`start_server` is the transport and engine
half, which tests and benchmarks call with planners of their own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedsecure.crypto.pki import Identity
from fedsecure.kit import Kit
from fedsecure.models.backbone import sealed_backbones
from fedsecure.state_version import claim_state_dir
from fedsecure.proto.v1 import admin_pb2_grpc, federation_pb2_grpc
from fedsecure.transport.auth import AuthInterceptor
from fedsecure.transport.metrics import MetricsInterceptor, RpcRecorder
from fedsecure.transport.rate_limit import RateLimiter
from fedsecure.transport.credentials import server_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, Limits, server_options
from fedsecure.transport.retry import Backoff
from fedsecure.types import Role, RunConfig, TaskKind

from fedsecure.task import Task
from server.api.admin_servicer import AdminServicer
from server.rounds.admission import Admission
from server.rounds.engine import CLOSE_RETRY_S, HEARTBEAT_INTERVAL_MS, LIVENESS_MS, MAX_CLOSE_ATTEMPTS, RoundEngine
from server.align.sessions import ScoreSessions
from server.api.federation_servicer import FederationServicer
from server.rounds.phases import PhasePlanner
from server.secagg.aggregator import SecureAggregator
from server.rounds.store import Store
from server.planners.compensation import stacks_of_kinds
from server.planners.personalise import PersonalisePlanner
from server.planners.ledger import LedgerReportPlanner
from server.planners.metrics import MetricsLog
from server.planners.score import ScorePlanner
from server.planners.train import TrainPlanner
from server.settings import ServerSettings

log = logging.getLogger("fedsecure.server")

SERVICE_ROLES = {
    "fedsecure.v1.Federation": frozenset({Role.CLIENT}),
    "fedsecure.v1.Admin": frozenset({Role.ADMIN}),
    "grpc.health.v1.Health": frozenset(Role),
}


@dataclass
class RunningServer:
    """A started server: its port, engine, store and aggregator, and how to stop it."""

    port: int
    server: grpc.aio.Server
    engine: RoundEngine
    store: Store
    aggregator: SecureAggregator
    stop_event: asyncio.Event
    engine_task: asyncio.Task[None]
    health: health_async.HealthServicer
    interceptor: AuthInterceptor

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting calls, finish the engine loop, close the database."""
        await self.health.enter_graceful_shutdown()
        self.stop_event.set()
        await self.server.stop(grace)
        await self.engine_task
        await self.aggregator.close()
        self.store.close()


async def start_server(
    *,
    kit: Kit,
    address: str = "127.0.0.1:0",
    state_dir: Path,
    planners: Mapping[TaskKind, PhasePlanner] | None = None,
    aggregator: SecureAggregator | None = None,
    limits: Limits = DEFAULT_LIMITS,
    run_config: RunConfig | None = None,
    liveness_ms: int = LIVENESS_MS,
    keyholder_address: str | None = None,
    keyholder_backoff: Backoff | None = None,
    max_close_attempts: int = MAX_CLOSE_ATTEMPTS,
    close_retry_s: float = CLOSE_RETRY_S,
    sessions: ScoreSessions | None = None,
    heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS,
) -> RunningServer:
    """Start the aggregation server on ``address`` (port 0 picks a free port).

    If ``run_config`` is given and no run is active (a restart resumes the active one),
    a run is started with it before the first client is served. ``aggregator`` is the
    one the planners were given (:meth:`SecureAggregator.open`); without one, the server
    opens its own with ``keyholder_address`` (default: the kit's) for the uploads it
    accepts. Closing a phase is tried ``max_close_attempts`` times, ``close_retry_s``
    apart, before the round is retried with a fresh sample. ``sessions`` are the ALIGN
    stage's score sessions, shared with its planner (:class:`server.align.planner.AlignPlanner`).
    Clients are told to send a heartbeat every ``heartbeat_interval_ms``; a phase whose only
    missing participants are silent for three intervals closes early (never below quorum).
    """
    if kit.role is not Role.SERVER:
        raise ValueError(f"the server needs a server kit, got a {kit.role.value} kit")
    claim_state_dir(state_dir, role=Role.SERVER)
    store = Store(state_dir / "server.sqlite")
    if aggregator is None:
        aggregator = SecureAggregator.open(kit=kit, state_dir=state_dir, keyholder_address=keyholder_address,
                                           keyholder_backoff=keyholder_backoff, limits=limits)
    engine = RoundEngine(store, planners, liveness_ms=liveness_ms, max_close_attempts=max_close_attempts,
                         close_retry_s=close_retry_s, heartbeat_interval_ms=heartbeat_interval_ms)
    if run_config is not None and store.runs.active() is None and store.runs.latest() is None:
        engine.start_run(run_config)
    await aggregator.collect_garbage(store)  # what a crash or the last run left behind
    revoked = store.clients.revoked_names()

    def is_revoked(ident: Identity) -> bool:
        # The list is of *client* credentials (Admin.RevokeClient). Scoping it to the client
        # role means a revocation can never lock the operator or the key holder out of the
        # server (found by fuzzing: revoking the name "admin" refused the admin itself);
        # their credentials are replaced by re-provisioning the kit.
        return ident.role == Role.CLIENT and ident.name in revoked

    interceptor = AuthInterceptor(ca_cert=kit.ca_cert, service_roles=SERVICE_ROLES, is_revoked=is_revoked,
                                  rate_limiter=RateLimiter(rate=limits.calls_per_second, burst=limits.call_burst),
                                  limits=limits)
    recorder = RpcRecorder()
    # Metrics outermost: refusals by the authentication interceptor are timed and counted too.
    # The transport holds the clients' share plus a reserve the interceptor never lets
    # clients take: the admin and health checks are served while clients saturate theirs.
    server = grpc.aio.server(interceptors=[MetricsInterceptor(recorder), interceptor], options=server_options(limits),
                             maximum_concurrent_rpcs=limits.max_concurrent_calls)
    sessions = sessions if sessions is not None else ScoreSessions()

    def on_revoke(name: str) -> None:
        # Revocation reaches calls already open (issue 23 item 3): the client's score
        # session ends (its pending steps leave it out), then every open call is ended.
        sessions.revoke(name)
        interceptor.end_calls(name)

    federation_pb2_grpc.add_FederationServicer_to_server(
        FederationServicer(store=store, engine=engine, admission=Admission(store, engine, limits),
                           objects=aggregator.objects, accumulator=aggregator.accumulator, limits=limits,
                           backbones=frozenset(sealed_backbones(kit.settings)), sessions=sessions), server)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(store=store, engine=engine, revoked=revoked, recorder=recorder, on_revoke=on_revoke),
        server)
    health = health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_secure_port(address, server_credentials(kit))
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    for service in ("", "fedsecure.v1.Federation", "fedsecure.v1.Admin"):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    stop_event = asyncio.Event()
    engine_task = asyncio.create_task(engine.run_forever(stop_event))
    log.info("server %s listening on port %d (mTLS)", kit.name, port)
    return RunningServer(port, server, engine, store, aggregator, stop_event, engine_task, health, interceptor)


def build_planners(settings: ServerSettings, *, state_dir: Path, aggregator: SecureAggregator,
                   sessions: ScoreSessions | None, task: Task) -> dict[TaskKind, PhasePlanner]:
    """The phase planners ``settings`` ask for on ``task``: reward training with secure
    aggregation, scoring, ledger reports, personalisation and — given the score
    ``sessions`` and ALIGN steps — the ALIGN stage."""
    metrics = MetricsLog(state_dir / "metrics.jsonl")
    planners: dict[TaskKind, PhasePlanner] = {}
    if sessions is not None and settings.align_steps > 0:
        # Imported only when the stage runs: it loads the policy VLM and GRPO.
        from server.align.vqa_stage import VQAStageSettings, build_vqa_stage
        from server.align.planner import AlignPlanner

        stage = VQAStageSettings(out=settings.align_out or state_dir / "align", steps_per_round=settings.align_steps,
                                 prompts_per_step=settings.align_prompts, step_deadline_s=settings.align_step_deadline,
                                 hacking_rounds=settings.align_hacking_rounds, seed=settings.data_seed,
                                 min_fused_lift=settings.align_min_fused_lift,
                                 learning_rate=settings.align_learning_rate, beta=settings.align_beta,
                                 best_nll=settings.align_best_nll,
                                 policy_lists_per_group=settings.align_policy_lists,
                                 monitor_every=settings.align_monitor_every,
                                 left_out_beta=settings.align_left_out_beta)
        planners[TaskKind.ALIGN] = AlignPlanner(sessions=sessions, metrics=metrics, roster_file=stage.out / "roster.json",
                                                build_stage=lambda roster: build_vqa_stage(roster, stage, task=task),
                                                steps_per_round=settings.align_steps,
                                                step_deadline_s=settings.align_step_deadline,
                                                first_round=settings.align_first_round)
    return planners | {
        TaskKind.TRAIN: TrainPlanner(metrics=metrics, aggregator=aggregator, local_steps=settings.local_steps,
                                     learning_rate=settings.learning_rate, batch_size=settings.batch_size,
                                     head_sharing=settings.share_heads,
                                     stacks_of=stacks_of_kinds(closed_answer_set=task.answer_set is not None)),
        TaskKind.SCORE: ScorePlanner(task=task, questions=task.server_part("reward_eval", seed=settings.data_seed),
                                     metrics=metrics, prompts_per_round=settings.prompts_per_round,
                                     seed=settings.data_seed),
        TaskKind.REPORT_LEDGER: LedgerReportPlanner(metrics=metrics),
        TaskKind.PERSONALISE: PersonalisePlanner(metrics=metrics, margin=settings.replace_margin,
                                                 distill_steps=settings.distill_steps,
                                                 distill_weight=settings.distill_weight,
                                                 temperature=settings.distill_temperature),
    }


async def serve_settings(*, settings: ServerSettings, kit: Kit, task: Task) -> RunningServer:
    """Start the server an operator configured: its aggregator (with the object-store
    limit), score sessions and planners for ``task``, then :func:`start_server`."""
    state_dir = settings.state_dir(kit.path)
    limit = settings.object_store_limit_mib
    aggregator = SecureAggregator.open(kit=kit, state_dir=state_dir, keyholder_address=settings.keyholder_address,
                                       object_store_bytes=limit * 2**20 if limit else None)
    sessions = ScoreSessions()
    return await start_server(kit=kit, address=settings.address or kit.server_address, state_dir=state_dir,
                              run_config=settings.run_config(), aggregator=aggregator, sessions=sessions,
                              planners=build_planners(settings, state_dir=state_dir, aggregator=aggregator,
                                                      sessions=sessions, task=task))
