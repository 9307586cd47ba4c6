"""``fedsecure bench load``: many real mTLS clients against one server on loopback.

A consortium of ``clients`` is provisioned; the real server (``fedsecure server``, the
reward planners) and key holder run as their own processes, with a run of rounds of
TRAIN, SCORE and REPORT_LEDGER phases. Each simulated client is the SDK's wire protocol on
its own TLS channel (asyncio, so that hundreds fit one process): it enrols, heart-beats,
polls with wait 0 (so no latency is the long-poll hold), answers SCORE tasks with signed
scores, REPORT_LEDGER with its head, and TRAIN either with a real chunked CKKS upload (a
share ``uploaders`` of the clients) or a signed decline.

Latency is measured by the server itself (its metrics interceptor, `Admin.Metrics`): the
load generator shares the cores and would inflate client-side timings. Memory and file
descriptors are the server process's, sampled every few seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from client_sdk.client import unary_request, upload_requests
from client_sdk.outcomes import Scores, Update
from fedsecure import __version__, serde
from fedsecure.crypto import ckks
from fedsecure.crypto.ckks_encryptor import Encryptor
from fedsecure.crypto.packing import TensorLayout, encoding_for
from fedsecure.kit import Kit, load_kit
from fedsecure.models.groups import GroupKey, block_shape
from fedsecure.proto.v1 import admin_pb2, admin_pb2_grpc, federation_pb2, federation_pb2_grpc
from tasks.easyvqa import TASK as EASYVQA
from fedsecure.provision import provision
from fedsecure.transport.credentials import channel_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, RPC_DEADLINE_S, STREAM_DEADLINE_S, channel_options
from fedsecure.transport.serving import wait_for_port_file
from fedsecure.transport.metrics import ServerMetrics, percentile
from fedsecure.types import Capabilities, Decline, DeclineReason, LedgerHead, Modality, Score, ScoreSpec, Task, TaskKind

SHAPE = block_shape(hidden=64, layers=2, heads=4, intermediate=128)
UPLOAD_VALUES = 4096  # per stack: one CKKS ciphertext each at the default parameters
TARGET_P99_MS = 200.0
TARGET_RSS_GROWTH_MIB = 50.0


@dataclass(frozen=True)
class LoadConfig:
    """One load run: how many clients, for how long, at what pace."""

    clients: int = 100
    seconds: float = 30.0
    poll_interval_s: float = 1.0       # between polls of an idle client (jittered)
    heartbeat_interval_s: float = 2.0  # faster than the server's 10 s: more load
    uploaders: float = 0.1             # share of clients that answer TRAIN with a CKKS upload
    sample_every_s: float = 5.0
    rss_at_s: float = 30.0             # growth is measured from here to the end
    prompts_per_round: int = 2
    phase_deadline_s: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.clients < 2 or self.seconds <= 0 or not 0 <= self.uploaders <= 1:
            raise ValueError("need at least 2 clients, positive seconds and uploaders in [0, 1]")


@dataclass
class ClientTally:
    """What the simulated clients saw: calls and failures per RPC, tasks answered."""

    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # "Method:CODE"
    first_detail: dict[str, str] = field(default_factory=dict)  # "Method:CODE" -> its first message
    answered: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # client-side, queueing and TLS included

    async def call(self, method: str, call: Callable[[], object]) -> object | None:
        """Await one call, counting and timing it; an error is counted and swallowed (the run goes on)."""
        self.calls[method] += 1
        start = time.perf_counter()
        try:
            return await call()  # type: ignore[misc]
        except grpc.aio.AioRpcError as err:
            key = f"{method}:{err.code().name}"
            self.errors[key] += 1
            self.first_detail.setdefault(key, str(err.details())[:300])
            return None
        finally:
            self.seconds.setdefault(method, []).append(time.perf_counter() - start)

    def latency_json(self) -> dict[str, dict[str, float]]:
        """Client-side p50/p99 per method in milliseconds."""
        out = {}
        for method, values in sorted(self.seconds.items()):
            ms = sorted(v * 1000 for v in values)
            out[method] = {"p50_ms": round(percentile(ms, 0.5), 2), "p99_ms": round(percentile(ms, 0.99), 2)}
        return out


def _capabilities() -> Capabilities:
    return Capabilities(modalities=(Modality.IMAGE, Modality.TEXT), sample_counts=(("pairs", 100),),
                        block_shape=SHAPE)


def _update(kit: Kit, rng: np.random.Generator) -> Update:
    """A real CKKS update of both attention groups (encrypted once, resent each round)."""
    enc = Encryptor(public_context=ckks.kit_public_context(kit), params=ckks.kit_params(kit), workers=1)
    groups = {GroupKey.of(family="attn", stack=s, backbone_sha256="", shape=SHAPE).name:
              rng.uniform(-0.01, 0.01, UPLOAD_VALUES) for s in ("image", "text")}
    encoding = encoding_for(enc.context_id, {g: TensorLayout.of({"w": v}) for g, v in groups.items()})
    chunks: list[bytes] = []
    for section in encoding.sections:
        chunks += enc.encrypt(groups[section.name], weight=0.01)
    return Update("attn", 0.01, str(encoding), tuple(chunks))


async def _answer(stub: federation_pb2_grpc.FederationStub, kit: Kit, task: Task, update: Update | None,
                  tally: ClientTally, rng: random.Random) -> None:
    if task.kind is TaskKind.TRAIN and update is not None:
        requests = upload_requests(kit, task, update)
        ack = await tally.call("UploadUpdate", lambda: stub.UploadUpdate(iter(requests), timeout=STREAM_DEADLINE_S))
    else:
        if task.kind is TaskKind.SCORE and isinstance(task.spec, ScoreSpec):
            outcome: object = Scores(tuple(Score(i.item_id, rng.uniform(-1, 1)) for i in task.spec.items))
        elif task.kind is TaskKind.REPORT_LEDGER:
            outcome = LedgerHead()
        else:
            outcome = Decline(DeclineReason.UNSUPPORTED_TASK, "load client: no model")
        method, request = unary_request(kit, task, outcome)  # type: ignore[arg-type]
        ack = await tally.call(method, lambda: getattr(stub, method)(request, timeout=RPC_DEADLINE_S))
    if ack is not None:
        tally.answered[task.kind.name] += 1


async def _client(kit: Kit, address: str, cfg: LoadConfig, stop_at: float, update: Update | None,
                  tally: ClientTally, seed: int) -> None:
    rng = random.Random(seed)
    options = channel_options(DEFAULT_LIMITS, target_name=kit.server_name)
    async with grpc.aio.secure_channel(address, channel_credentials(kit), options=options) as channel:
        stub = federation_pb2_grpc.FederationStub(channel)
        hello = federation_pb2.HelloRequest(sdk_version=__version__,
                                            capabilities=serde.capabilities_to_proto(_capabilities()))
        loop = asyncio.get_running_loop()
        # As the SDK does: enrolment is retried with jittered backoff until it succeeds.
        delay = 0.2
        while await tally.call("Hello", lambda: stub.Hello(hello, timeout=RPC_DEADLINE_S)) is None:
            if loop.time() >= stop_at:
                return
            await asyncio.sleep(delay * rng.uniform(0.5, 1.5))
            delay = min(5.0, delay * 2)
        next_beat = loop.time() + rng.uniform(0, cfg.heartbeat_interval_s)
        handled: list[str] = []
        while loop.time() < stop_at:
            if loop.time() >= next_beat:
                await tally.call("Heartbeat", lambda: stub.Heartbeat(federation_pb2.HeartbeatRequest(),
                                                                     timeout=RPC_DEADLINE_S))
                next_beat += cfg.heartbeat_interval_s
            pull = federation_pb2.PullTaskRequest(wait_ms=0, skip_task_ids=handled[-64:])
            resp = await tally.call("PullTask", lambda: stub.PullTask(pull, timeout=RPC_DEADLINE_S))
            if resp is not None and resp.WhichOneof("outcome") == "task":  # type: ignore[attr-defined]
                task = serde.task_from_proto(resp.task)  # type: ignore[attr-defined]
                handled.append(task.task_id)
                await _answer(stub, kit, task, update, tally, rng)
                continue
            await asyncio.sleep(cfg.poll_interval_s * rng.uniform(0.5, 1.5))


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "apps.cli", *args], stdout=open(log, "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)


def _metrics_json(m: ServerMetrics) -> dict[str, object]:
    return {r.method.rsplit("/", 1)[-1]: {"calls": r.calls, "errors": r.errors, "codes": dict(r.codes),
                                          "p50_ms": round(r.p50_ms, 2), "p99_ms": round(r.p99_ms, 2),
                                          "max_ms": round(r.max_ms, 2)} for r in m.rpcs}


async def _drive(cfg: LoadConfig, kits: list[Kit], admin: Kit, address: str,
                 progress: Callable[[str], None]) -> dict[str, object]:
    rng = np.random.default_rng(cfg.seed)
    n_up = max(2, round(cfg.uploaders * len(kits))) if cfg.uploaders > 0 else 0
    progress(f"encrypting {n_up} CKKS updates")
    updates = [_update(k, rng) if i < n_up else None for i, k in enumerate(kits)]
    tally = ClientTally()
    samples: list[dict[str, float]] = []
    options = channel_options(DEFAULT_LIMITS, target_name=admin.server_name)
    async with grpc.aio.secure_channel(address, channel_credentials(admin), options=options) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)

        async def metrics() -> ServerMetrics:
            return serde.metrics_from_proto(await stub.Metrics(admin_pb2.MetricsRequest(), timeout=RPC_DEADLINE_S))

        loop = asyncio.get_running_loop()
        start = loop.time()
        stop_at = start + cfg.seconds
        progress(f"{len(kits)} clients for {cfg.seconds:.0f} s")
        clients = [asyncio.create_task(_client(k, address, cfg, stop_at, u, tally, cfg.seed * 100_003 + i))
                   for i, (k, u) in enumerate(zip(kits, updates, strict=True))]
        while loop.time() < stop_at:
            await asyncio.sleep(min(cfg.sample_every_s, max(0.0, stop_at - loop.time())))
            m = await metrics()
            samples.append({"t_s": round(loop.time() - start, 1), "rss_mib": round(m.rss_bytes / 2**20, 1),
                            "open_fds": m.open_fds})
            progress(f"t={samples[-1]['t_s']:.0f}s rss={samples[-1]['rss_mib']} MiB fds={m.open_fds} "
                     f"calls={sum(tally.calls.values())} errors={sum(tally.errors.values())}")
        await asyncio.gather(*clients)
        final = await metrics()
        status = await stub.Status(admin_pb2.StatusRequest(), timeout=RPC_DEADLINE_S)
    at = next((s for s in samples if s["t_s"] >= cfg.rss_at_s), samples[0] if samples else None)
    end = samples[-1] if samples else None
    return {"client_calls": dict(tally.calls), "client_errors": dict(tally.errors),
            "client_error_details": tally.first_detail, "answered": dict(tally.answered),
            "uploaders": n_up, "server": _metrics_json(final), "client_side_latency": tally.latency_json(),
            "samples": samples,
            "rss_mib_at": {str(int(at["t_s"])) if at else "-": at["rss_mib"] if at else None,
                           str(int(end["t_s"])) if end else "-": end["rss_mib"] if end else None},
            "rss_growth_mib": round(end["rss_mib"] - at["rss_mib"], 1) if at and end else None,
            "open_fds_end": final.open_fds, "rounds_closed": status.run.rounds_closed,
            "run_state": status.run.state}


def bench_load(cfg: LoadConfig, *, progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
               ) -> dict[str, object]:
    """Run one load test; returns its JSON-ready result with the targets and whether each held."""
    from keyholder.keys import generate_keys

    with tempfile.TemporaryDirectory(prefix="fedsecure-load-") as tmp:
        root = Path(tmp)
        progress(f"provisioning {cfg.clients} clients")
        public = generate_keys(keys_dir=root / "keys")
        names = [f"c{i:04d}" for i in range(cfg.clients)]
        kits_dir = provision(out=root / "consortium", clients=names, keyholder_public_context=public.read_bytes(), task=EASYVQA)
        kh_port_file, port_file = root / "kh.port", root / "server.port"
        procs = [_spawn(["keyholder", "--kit", str(kits_dir.keyholder), "--keys", str(root / "keys"),
                         "--address", "127.0.0.1:0", "--state", str(root / "kh-state"), "--port-file",
                         str(kh_port_file)], root / "keyholder.log")]
        try:
            kh_port = wait_for_port_file(kh_port_file, procs[0], what="key holder", timeout_s=120,
                                         log=root / "keyholder.log")
            procs.append(_spawn(["server", "--kit", str(kits_dir.server), "--address", "127.0.0.1:0", "--state",
                                 str(root / "server-state"), "--port-file", str(port_file), "--keyholder-address",
                                 f"127.0.0.1:{kh_port}", "--rounds", "100000", "--quorum", "2", "--min-clients",
                                 str(cfg.clients), "--phases", "train,score,report_ledger", "--phase-deadline",
                                 str(cfg.phase_deadline_s), "--prompts-per-round", str(cfg.prompts_per_round),
                                 "--local-steps", "1", "--align-steps", "0"], root / "server.log"))
            port = wait_for_port_file(port_file, procs[1], what="server", timeout_s=120, log=root / "server.log")
            kits = [load_kit(kits_dir.clients[n]) for n in names]
            result = asyncio.run(_drive(cfg, kits, load_kit(kits_dir.admin), f"127.0.0.1:{port}", progress))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    server = result["server"]
    p99 = {m: server[m]["p99_ms"] for m in ("PullTask", "Heartbeat") if m in server}  # type: ignore[index,operator]
    errors = sum(result["client_errors"].values())  # type: ignore[attr-defined]
    growth = result["rss_growth_mib"]
    return {"benchmark": "load", "config": asdict(cfg), "machine": {"cpus": os.cpu_count()}, **result,
            "targets": {"errors": {"value": errors, "target": 0, "met": errors == 0},
                        "p99_pull_heartbeat_ms": {"value": p99, "target": TARGET_P99_MS,
                                                  "met": bool(p99) and max(p99.values()) < TARGET_P99_MS},
                        "rss_growth_mib": {"value": growth, "target": TARGET_RSS_GROWTH_MIB,
                                           "met": growth is not None and growth <= TARGET_RSS_GROWTH_MIB,
                                           "from_s": cfg.rss_at_s, "to_s": cfg.seconds}}}
