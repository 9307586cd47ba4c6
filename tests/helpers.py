"""Test doubles and helpers (tests only: the demo never uses these)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from client_sdk import FederatedClient, Scores
from fedsecure.models.groups import GroupKey, block_shape
from fedsecure.types import Capabilities, Score, ScoreItem, ScoreSpec, Task, TaskKind, TaskSpec
from server.rounds.phases import PhaseContext
from server.rounds.store import SubmissionRow


# What the test clients declare, and the aggregation groups that fit it (random backbone).
TEST_SHAPE = block_shape(hidden=64, layers=2, heads=4, intermediate=128)


def group(stack: str, family: str = "attn") -> str:
    """The name of a test client's aggregation group for ``stack``."""
    return GroupKey.of(family=family, stack=stack, backbone_sha256="", shape=TEST_SHAPE).name


TEXT, IMAGE = group("text"), group("image")


class StaticScorePlanner:
    """Hands every participant the same fixed items; remembers what each phase accepted."""

    def __init__(self, n_items: int = 3) -> None:
        self.items = tuple(ScoreItem(item_id=f"i{k}", question=f"q{k}", completion=f"c{k}") for k in range(n_items))
        self.closed: list[tuple[int, int, list[str]]] = []

    def plan(self, ctx: PhaseContext, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        return {p: ScoreSpec(items=self.items) for p in participants}

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        self.closed.append((ctx.round, ctx.attempt, sorted(s.client for s in accepted)))


def length_scorer(task: Task, ctx: Any) -> Scores:
    """A deterministic test scorer: the completion's length."""
    assert isinstance(task.spec, ScoreSpec)
    return Scores(tuple(Score(i.item_id, float(len(i.completion))) for i in task.spec.items))


def run_in_thread(client: FederatedClient, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``client.run(**kwargs)`` on a thread; the result lands in the returned dict."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["summary"] = client.run(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


SCORE = TaskKind.SCORE


def resign(client: FederatedClient, env: Any, **changes: Any) -> Any:
    """An envelope with ``changes`` applied, validly signed by ``client`` (a forgery
    that only the binding checks can catch)."""
    import dataclasses

    from fedsecure.crypto import signing

    unsigned = dataclasses.replace(env, signature=b"", **changes)
    return dataclasses.replace(unsigned, signature=signing.sign(client.kit.private_key,
                                                                 signing.envelope_bytes(unsigned)))


class StaticTrainPlanner:
    """TRAIN phase double: on close, publishes the contributors' first chunks joined,
    so a download can be checked byte for byte."""

    def __init__(self) -> None:
        self.closed: list[list[str]] = []

    def plan(self, ctx: PhaseContext, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        from fedsecure.types import TrainSpec

        return {p: TrainSpec(local_steps=1, upload_group="attn") for p in participants}

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        from fedsecure import serde

        digests: list[bytes] = []
        for sub in sorted(accepted, key=lambda s: s.client):
            digests.extend(serde.stored_update(sub.payload).manifest.chunk_sha256)
        ctx.store.submissions.publish_aggregate(run_id=ctx.run_id, round_=ctx.round, group="attn", encoding="raw",
                                    chunk_digests=digests, contributors=len(accepted))
        self.closed.append(sorted(s.client for s in accepted))


def encrypted_update(kit: Any, groups: Mapping[str, Any], weight: float, family: str = "attn") -> Any:
    """A real CKKS update under the kit's public context: one section per group, each
    holding one tensor ``w`` with the given values."""
    from client_sdk import Update
    from fedsecure.crypto import ckks
    from fedsecure.crypto.ckks_encryptor import Encryptor
    from fedsecure.crypto.packing import TensorLayout, encoding_for

    public = ckks.kit_public_context(kit)
    enc = Encryptor(public_context=public, params=ckks.kit_params(kit), workers=1)
    layouts = {g: TensorLayout.of({"w": v}) for g, v in groups.items()}
    encoding = encoding_for(enc.context_id, layouts)
    chunks: list[bytes] = []
    for section in encoding.sections:
        chunks += enc.encrypt(groups[section.name], weight=weight)
    return Update(family, weight, str(encoding), tuple(chunks))


def pull_tasks(fed: Any, names: Sequence[str]) -> dict[str, tuple[FederatedClient, Task]]:
    """Enrol each named client with ``fed`` and pull its first task (which must be there)."""
    from fedsecure import serde

    clients = {n: FederatedClient(kit=fed.kit(n), address=fed.address, poll_wait_ms=5000,
                                  capabilities=Capabilities(block_shape=TEST_SHAPE)) for n in names}
    for c in clients.values():
        c.hello()
    out = {}
    for n, c in clients.items():
        resp = c.pull()
        assert resp.WhichOneof("outcome") == "task", resp
        out[n] = (c, serde.task_from_proto(resp.task))
    return out


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    import time

    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def assert_refused(call: Any, code: Any, text: str) -> None:
    """``call`` must fail with gRPC status ``code`` and a message containing ``text``."""
    import grpc
    import pytest

    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() is code, err.value.details()
    assert text in (err.value.details() or ""), err.value.details()


def run_torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 240) -> str:
    """Run ``tests/<script>`` under ``torchrun --standalone`` on CPU; return its stdout.
    In its own session: on a timeout the whole group (torchrun and every rank) is killed,
    none left behind, and the ranks' dumped stacks are in the failure message."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.Popen([str(torchrun), "--standalone", f"--nproc_per_node={nproc}",
                             str(Path(__file__).with_name(script)), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun timed out; where the ranks were:\n{out}\n{err[-6000:]}") from None
    assert proc.returncode == 0, err[-4000:]
    return out
