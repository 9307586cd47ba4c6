"""``fedsecure bench flood``: one enrolled client floods its score session; how long does
another client's heartbeat take meanwhile? (issue 23 item 5, measured the way the attack
review measured it.)

A real mTLS server on loopback (its own event loop on a thread of this process) holds an
ALIGN phase open. Client ``b`` sends a heartbeat every 50 ms, first alone (baseline), then
while client ``a`` sends ``messages`` signed step answers of about ``message_kb`` KiB each
on score sessions, reopening a session whenever the server ends one. Heartbeat latency
is measured by ``b`` (both windows in the same process and harness, so the ratio is
what counts). Prints JSON.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from client_sdk import FederatedClient
from fedsecure import serde
from fedsecure.crypto import signing
from fedsecure.kit import load_kit
from fedsecure.proto.v1 import federation_pb2, federation_pb2_grpc
from tasks.easyvqa import TASK as EASYVQA
from fedsecure.provision import provision
from fedsecure.transport.credentials import channel_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, channel_options
from fedsecure.types import AlignSpec, PayloadKind, PhaseConfig, RunConfig, Score, StepScores, Task, TaskKind, TaskSpec


class _OpenAlign:
    """An ALIGN phase that stays open (nothing is asked: every answer is unasked)."""

    def plan(self, ctx: object, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        return {p: AlignSpec() for p in participants}

    async def close(self, ctx: object, accepted: Sequence[object]) -> None:
        return None


def _heartbeats(stub: federation_pb2_grpc.FederationStub, until: float, every_s: float = 0.05) -> list[float]:
    """Heartbeats every ``every_s`` (inside the per-identity rate limit); their latencies in ms."""
    out = []
    while time.monotonic() < until:
        started = time.perf_counter()
        stub.Heartbeat(federation_pb2.HeartbeatRequest(), timeout=30)
        out.append((time.perf_counter() - started) * 1000)
        time.sleep(every_s)
    return out


def _flood(client: FederatedClient, stub: federation_pb2_grpc.FederationStub, task: Task, *, messages: int,
           message_kb: int, stop: threading.Event) -> dict[str, int]:
    scores = tuple(Score(f"i{k:07d}", 1.0) for k in range(max(1, message_kb * 1024 // 22)))
    env = client.sign(task, PayloadKind.STEP_SCORES, signing.step_scores_digest(7, scores))
    answer = serde.step_scores_to_proto(StepScores(step=7, envelope=env, scores=scores))
    opened = sent = 0
    while sent < messages and not stop.is_set():
        opened += 1
        batch = min(messages - sent, 64)

        def requests(n: int = batch):  # type: ignore[no-untyped-def]
            yield federation_pb2.ScoreSessionRequest(open=federation_pb2.ScoreSessionOpen(task_id=task.task_id))
            for _ in range(n):
                yield answer
        try:
            for _ in stub.ScoreSession(requests(), timeout=60):
                pass
        except grpc.RpcError:
            pass
        sent += batch
    return {"messages_offered": sent, "sessions_opened": opened}


def bench_flood(*, messages: int = 970, message_kb: int = 580, window_s: float = 10.0) -> dict[str, object]:
    """Heartbeat latency of one client alone, then during another's flood; see the module docstring."""
    from keyholder.keys import generate_keys
    from server.app import start_server
    from server.align.sessions import ScoreSessions

    root = Path(tempfile.mkdtemp(prefix="fedsecure-flood-"))
    public = generate_keys(keys_dir=root / "keys")
    kits = provision(out=root / "consortium", clients=["a", "b"], keyholder_public_context=public.read_bytes(), task=EASYVQA)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    config = RunConfig(rounds=1, quorum=1, min_clients=2, phases=(PhaseConfig(TaskKind.ALIGN, 3600),))
    server = asyncio.run_coroutine_threadsafe(start_server(
        kit=load_kit(kits.server), state_dir=root / "state", run_config=config,
        planners={TaskKind.ALIGN: _OpenAlign()}, sessions=ScoreSessions()), loop).result(60)
    address = f"127.0.0.1:{server.port}"
    try:
        clients = {n: FederatedClient(kit=load_kit(kits.clients[n]), address=address, poll_wait_ms=5000)
                   for n in ("a", "b")}
        for c in clients.values():
            c.hello()
        tasks = {n: serde.task_from_proto(c.pull().task) for n, c in clients.items()}
        stubs = {}
        for n in ("a", "b"):
            kit = load_kit(kits.clients[n])
            channel = grpc.secure_channel(address, channel_credentials(kit),
                                          options=channel_options(DEFAULT_LIMITS, target_name=kit.server_name))
            stubs[n] = federation_pb2_grpc.FederationStub(channel)
        baseline = _heartbeats(stubs["b"], time.monotonic() + window_s)
        stop = threading.Event()
        flood: dict[str, int] = {}
        flooder = threading.Thread(target=lambda: flood.update(_flood(
            clients["a"], stubs["a"], tasks["a"], messages=messages, message_kb=message_kb, stop=stop)))
        started = time.monotonic()
        flooder.start()
        during = _heartbeats(stubs["b"], time.monotonic() + window_s)
        stop.set()
        flooder.join(120)
        flood_s = time.monotonic() - started
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0.2), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)

    def summary(ms: list[float]) -> dict[str, float]:
        return {"calls": len(ms), "p50_ms": round(statistics.median(ms), 2),
                "p99_ms": round(sorted(ms)[int(0.99 * (len(ms) - 1))], 2), "max_ms": round(max(ms), 2)}

    return {"bench": "flood", "message_kb": message_kb, "messages_planned": messages, **flood,
            "flood_seconds": round(flood_s, 2), "heartbeat_alone": summary(baseline),
            "heartbeat_during_flood": summary(during),
            "p50_ratio": round(statistics.median(during) / statistics.median(baseline), 2)}


if __name__ == "__main__":
    import json

    print(json.dumps(bench_flood(**{k: int(v) for k, v in (a.split("=") for a in sys.argv[1:])}), indent=2))
