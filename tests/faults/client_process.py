"""A fault-matrix client in a process of its own, so that a test can SIGKILL it:
``python -m tests.faults.client_process --kit KIT --address HOST:PORT [--hang upload|score]
[--skew-s S]``.

``--hang upload`` streams the header and the first chunk of its TRAIN update, then stops
sending (killed there: mid-upload); ``--hang score`` never returns from its SCORE handler
(killed there: mid-scoring); ``--skew-s`` runs its clock S seconds off (beyond the
server's window: every signed submission is refused)."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from typing import Any

from client_sdk import FederatedClient, Update
from client_sdk import client as client_module
from client_sdk.client import upload_requests
from fedsecure.kit import load_kit
from fedsecure.proto.v1 import federation_pb2
from fedsecure.transport.limits import STREAM_DEADLINE_S
from fedsecure.types import Task, TaskKind
from tests.faults.harness import BACKOFF, CAPABILITIES, fault_update, personalised_report
from tests.helpers import length_scorer


class _SkewedClock:
    """``time`` as the client module sees it, ``skew_s`` off."""

    def __init__(self, skew_s: float) -> None:
        self.skew_s = skew_s

    def time(self) -> float:
        return time.time() + self.skew_s

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class HangingClient(FederatedClient):
    """Streams only the header and first chunk of an update, then hangs."""

    def submit(self, task: Task, outcome: Any) -> object:
        if not isinstance(outcome, Update):
            return super().submit(task, outcome)
        requests = upload_requests(self.kit, task, outcome)

        def stream() -> Iterator[federation_pb2.UploadUpdateRequest]:
            yield from requests[:2]
            print(f"{self.name}: hanging mid-upload", flush=True)
            threading.Event().wait()  # until killed

        return self._stub.UploadUpdate(stream(), timeout=STREAM_DEADLINE_S)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kit", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--hang", choices=["upload", "score"], default=None)
    p.add_argument("--skew-s", type=float, default=0.0)
    args = p.parse_args()
    if args.skew_s:
        client_module.time = _SkewedClock(args.skew_s)  # type: ignore[assignment]
    kit = load_kit(args.kit)

    def score(task: Task, ctx: Any) -> Any:
        if args.hang == "score":
            print(f"{kit.name}: hanging mid-scoring", flush=True)
            threading.Event().wait()  # until killed
        return length_scorer(task, ctx)

    cls = HangingClient if args.hang == "upload" else FederatedClient
    client = cls(kit=kit, address=args.address, poll_wait_ms=500, backoff=BACKOFF, capabilities=CAPABILITIES,
                 handlers={TaskKind.TRAIN: lambda task, ctx: fault_update(kit, task), TaskKind.SCORE: score,
                           TaskKind.PERSONALISE: lambda task, ctx: personalised_report(task)})
    summary = client.run()
    print(f"{kit.name}: done {dict(summary.completed)} refused {len(summary.refused)}", flush=True)


if __name__ == "__main__":
    main()
