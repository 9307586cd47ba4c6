"""A DP training + scoring round over real gRPC: two clients of different kinds, the
server's real planners, ledger heads reported and cross-checked by the auditor."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk import FederatedClient
from client_sdk.dp_training import DPSettings
from client_sdk.reward_participant import ParticipantConfig, RewardParticipant
from fedsecure.admin_client import AdminClient
from fedsecure.crypto import pki
from fedsecure.kit import load_kit
from fedsecure.privacy.audit import audit_ledger
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.privacy.heads_export import heads_to_json, load_heads
from fedsecure.provision import Provisioned
from fedsecure.types import PhaseConfig, RunConfig, TaskKind
from server.planners.metrics import MetricsLog
from server.planners.score import ScorePlanner
from server.planners.train import TrainPlanner
from tasks.easyvqa import TASK as EASYVQA
from tasks.easyvqa.shares import client_pairs, server_part
from tests.conftest import Federation
from tests.helpers import run_in_thread


def test_dp_training_and_scoring_round_over_grpc(start_federation: Callable[..., Federation], kits: Provisioned,
                                                 tmp_path: Path) -> None:
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    questions = server_part("reward_eval", seed=0)
    def planners(aggregator):  # type: ignore[no-untyped-def]
        return {TaskKind.TRAIN: TrainPlanner(metrics=metrics, aggregator=aggregator, local_steps=25, learning_rate=3e-3,
                                             batch_size=64),
                TaskKind.SCORE: ScorePlanner(task=EASYVQA, questions=questions, metrics=metrics, prompts_per_round=6)}
    cfg = RunConfig(rounds=2, quorum=2, min_clients=2, phases=(
        PhaseConfig(TaskKind.TRAIN, 120), PhaseConfig(TaskKind.SCORE, 60), PhaseConfig(TaskKind.REPORT_LEDGER, 30)))
    fed = start_federation(cfg, planners=planners)
    participants, clients = {}, []
    for name, kind in (("a", "text"), ("b", "image")):
        part = RewardParticipant(kit=fed.kit(name), state_dir=tmp_path / name,
                                 pairs=client_pairs(name=name, clients=["a", "b"], kind=kind, limit=800),
                                 config=ParticipantConfig(model=easyvqa_reward_config(kind=kind),
                                                          budget=PrivacyBudget(8.0, 1e-5), dp=DPSettings()))
        participants[name] = part
        clients.append(FederatedClient(kit=fed.kit(name), address=fed.address, poll_wait_ms=500,
                                       capabilities=part.capabilities(), handlers=part.handlers(),
                                       ledger_head=part.ledger_head))
    threads = [run_in_thread(c) for c in clients]
    for t, out in threads:
        t.join(300)
        assert not t.is_alive() and "error" not in out, out
        assert dict(out["summary"].completed) == {"TRAIN": 2, "SCORE": 2, "REPORT_LEDGER": 2}
    for c in clients:
        c.close()
    status = fed.loop.call(fed.server.engine.status)
    assert (status.state, status.rounds_closed) == ("finished", 2)

    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["phase"] == "train"]
    score = [r for r in records if r["phase"] == "score"]
    assert len(train) == 4 and all(r["uploaded"] == 1.0 for r in train)  # encrypted adapters went up
    for part in participants.values():  # the training metrics stay with the client
        assert len(part.reports) == 2
        assert all(0 < dict(r.metrics)["epsilon"] <= 8.0 and dict(r.metrics)["parameters_changed"] > 0
                   for r in part.reports)
    # A text-only and an image-only client share no stack: nothing reaches the quorum of 2,
    # so nothing was decrypted and each kept its own adapters.
    assert not any(part.applied for part in participants.values())
    assert len(score) == 4 and all(r["finite"] for r in score)
    image_prompts = {r["prompts"] for r in score if r["client"] == "b"}
    assert image_prompts and max(image_prompts) <= 6  # image-only clients get no yes/no prompts
    # Measured on public questions with every answer scored: the per-type metrics are there
    # for whatever types were sampled, the image-only client has none for yes/no.
    assert all(0.0 <= r[k] <= 1.0 for r in score for k in r if k.split(".")[0] in ("top1_all", "pairwise"))
    assert not any(k.endswith(".yesno") for r in score if r["client"] == "b" for k in r)
    assert all(sum(v for k, v in r.items() if k.startswith("count.")) == r["prompts"] for r in score)

    # The server holds each client's latest head; the auditor ties ledger and server together.
    # The operator exports them (Admin RPC), the auditor reads the export, never the database.
    ca = pki.load_certificate((kits.root / "ca" / "ca.pem").read_bytes())
    with AdminClient(kit=load_kit(kits.admin), address=fed.address) as admin:
        heads = admin.ledger_heads()
    heads_file = tmp_path / "ledger_heads.json"
    heads_file.write_text(heads_to_json(heads))
    assert load_heads(heads_file) == heads
    for name, part in participants.items():
        assert fed.store(lambda s, n=name: s.submissions.ledger_head(n)) == part.ledger.head() == heads[name][-1]
        report = audit_ledger(part.ledger.path, ca_cert=ca, server_heads=heads)
        assert report.ok, report.violations
        assert len(report.releases) == 2
        last = report.releases[-1]
        assert abs(last.epsilon_recomputed - last.epsilon_ledger) <= 0.01 * last.epsilon_ledger

    # Rollback: the client drops its newest entry; the server remembers it.
    ledger = participants["a"].ledger.path
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:-1]))
    rolled = audit_ledger(ledger, ca_cert=ca, server_heads=heads)
    assert not rolled.ok and any("rolled back" in v for v in rolled.violations)
    cli = subprocess.run([sys.executable, "-m", "apps.cli", "audit", str(ledger), "--ca",
                          str(kits.root / "ca" / "ca.pem"), "--server-heads", str(heads_file), "--json",
                          "--html", str(tmp_path / "audit.html")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "rolled back" in cli.stdout
    assert "<svg" in (tmp_path / "audit.html").read_text()
    ledger.write_text("".join(lines))
    ok = subprocess.run([sys.executable, "-m", "apps.cli", "audit", str(ledger), str(participants["b"].ledger.path),
                         "--ca", str(kits.root / "ca" / "ca.pem"), "--server-heads", str(heads_file)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("PASS") == 2
