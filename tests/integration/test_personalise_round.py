"""PERSONALISE over real gRPC (issue 14): a run of TRAIN (secure aggregation through the
key holder), PERSONALISE and REPORT_LEDGER. Personalisation is passed over in round 1 and
runs in the last round on that round's published means; each client replaces by margin,
distils under DP, charges its ledger and reports metrics only. Then the admin's on-demand
personalisation of the finished run: the same source, so no client charges again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk import FederatedClient
from client_sdk.dp_training import DPSettings
from client_sdk.personalisation.plan import PersonalisationSettings
from client_sdk.reward_participant import ParticipantConfig, RewardParticipant
from fedsecure.privacy.audit import audit_ledger
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.types import PhaseConfig, RunConfig, TaskKind
from server.planners.personalise import PersonalisePlanner
from server.planners.metrics import MetricsLog
from server.planners.train import TrainPlanner
from tasks.easyvqa.shares import client_pairs
from tests.conftest import Federation
from tests.helpers import run_in_thread

NAMES = ("a", "b")


def _serve(fed: Federation, parts: dict[str, RewardParticipant]) -> list[dict[str, object]]:
    clients = [FederatedClient(kit=fed.kit(n), address=fed.address, poll_wait_ms=500,
                               capabilities=parts[n].capabilities(), handlers=parts[n].handlers(),
                               ledger_head=parts[n].ledger_head) for n in NAMES]
    threads = [run_in_thread(c) for c in clients]
    outs = []
    for t, out in threads:
        t.join(400)
        assert not t.is_alive() and "error" not in out, out
        outs.append(out)
    for c in clients:
        c.close()
    return outs


def test_personalise_phase_in_the_last_round_and_on_demand(start_federation: Callable[..., Federation],
                                                          tmp_path: Path) -> None:
    metrics = MetricsLog(tmp_path / "metrics.jsonl")

    def planners(aggregator):  # type: ignore[no-untyped-def]
        return {TaskKind.TRAIN: TrainPlanner(metrics=metrics, aggregator=aggregator, local_steps=4,
                                             learning_rate=3e-3, batch_size=32),
                TaskKind.PERSONALISE: PersonalisePlanner(metrics=metrics, margin=0.01, distill_steps=4)}
    phases = (PhaseConfig(TaskKind.TRAIN, 240), PhaseConfig(TaskKind.PERSONALISE, 240),
              PhaseConfig(TaskKind.REPORT_LEDGER, 60))
    fed = start_federation(RunConfig(rounds=2, quorum=2, min_clients=2, phases=phases), planners=planners,
                           keyholder=True)
    settings = PersonalisationSettings(resolution=0.5, batch_size=32, learning_rate=3e-3)
    parts = {n: RewardParticipant(kit=fed.kit(n), state_dir=tmp_path / n,
                                  pairs=client_pairs(name=n, clients=list(NAMES), kind="text", limit=400),
                                  config=ParticipantConfig(model=easyvqa_reward_config(kind="text"),
                                                           dp=DPSettings(batch_size=32), personalisation=settings,
                                                           budget=PrivacyBudget(8.0, 1e-5, personalisation_reserve=0.1)))
             for n in NAMES}
    for out in _serve(fed, parts):
        assert dict(out["summary"].completed) == {"TRAIN": 2, "PERSONALISE": 1, "REPORT_LEDGER": 2}, out["summary"]
    run_id = fed.loop.call(fed.server.engine.status).run_id
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (plan,) = [r for r in records if r["phase"] == "personalise_plan"]
    assert plan["source_run_id"] == run_id and plan["source_round"] == 2 and plan["groups"]
    reports = {r["client"]: r for r in records if r["phase"] == "personalise"}
    assert set(reports) == set(NAMES)
    for name, part in parts.items():
        r = reports[name]["metrics"]
        assert {"heldout_accuracy_personal", "heldout_accuracy_global", "heldout_accuracy_personalised",
                "epsilon"} <= set(r) and r["distill_parameters_changed"] > 0 and r["components"] >= 1
        purposes = [e.purpose for e in part.ledger.entries[1:]]
        assert purposes == ["", "", "personalise:replace", "personalise:distill"]
        assert part.ledger.entries[-1].run_id == run_id and part.ledger.epsilon <= 8.0
        # The server recorded the head after personalisation: the audit ties it all together.
        heads = fed.store(lambda s, n=name: s.submissions.ledger_heads()[n])
        assert max(h.seq for h in heads) == part.ledger.head().seq
        audit = audit_ledger(part.ledger.path, ca_cert=part.kit.ca_cert, server_heads={name: heads})
        assert audit.ok, audit.violations
        assert (tmp_path / name / "personalised_model").exists()

    # On demand, for the finished run: the same source, so the saved result, no new charge.
    seqs = {n: p.ledger.head().seq for n, p in parts.items()}
    fed.loop.call(lambda: fed.server.engine.start_run(RunConfig(rounds=1, quorum=2, min_clients=2, phases=(
        PhaseConfig(TaskKind.PERSONALISE, 120), PhaseConfig(TaskKind.REPORT_LEDGER, 60)))))
    for out in _serve(fed, parts):
        assert dict(out["summary"].completed) == {"PERSONALISE": 1, "REPORT_LEDGER": 1}, out["summary"]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    plan = [r for r in records if r["phase"] == "personalise_plan"][-1]
    assert plan["source_run_id"] == run_id and plan["source_round"] == 2 and plan["run_id"] != run_id
    assert {n: p.ledger.head().seq for n, p in parts.items()} == seqs
