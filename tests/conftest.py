"""Shared fixtures: provisioned kits and a real mTLS server on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fedsecure.kit import Kit, load_kit
from tasks.easyvqa import TASK as EASYVQA
from fedsecure.provision import Provisioned, provision
from fedsecure.transport.limits import DEFAULT_LIMITS, Limits
from fedsecure.types import RunConfig, TaskKind

T = TypeVar("T")


@pytest.fixture(scope="session")
def keyholder_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The key holder's own CKKS key folder (made before provisioning, as in production)."""
    from keyholder.keys import generate_keys

    keys = tmp_path_factory.mktemp("keyholder") / "keys"
    generate_keys(keys_dir=keys)
    return keys


@pytest.fixture(scope="session")
def kits(tmp_path_factory: pytest.TempPathFactory, keyholder_keys: Path) -> Provisioned:
    """One consortium for the whole session (provisioning is the slow part)."""
    return provision(out=tmp_path_factory.mktemp("kits") / "consortium", clients=["a", "b", "c", "d"],
                     keyholder_public_context=(keyholder_keys / "ckks_public.ctx").read_bytes(), task=EASYVQA)


@pytest.fixture(scope="session")
def other_kits(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    """A second, unrelated consortium (another CA, another key holder)."""
    from keyholder.keys import generate_keys

    public = generate_keys(keys_dir=tmp_path_factory.mktemp("other-keyholder") / "keys")
    return provision(out=tmp_path_factory.mktemp("other") / "consortium", clients=["a"],
                     keyholder_public_context=public.read_bytes(), task=EASYVQA)


class LoopThread:
    """An asyncio loop on a background thread, for running the aio server in tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run a plain function on the loop thread (the store belongs to it)."""
        fut: Future[T] = Future()

        def runner() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(runner)
        return fut.result(timeout)

    def close(self) -> None:
        """Stop the loop and join its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Federation:
    """A running server plus everything a test needs to talk to it."""

    kits: Provisioned
    loop: LoopThread
    server: Any
    state_dir: Path
    address: str
    keyholder_keys: Path = Path()
    clients: dict[str, Kit] = field(default_factory=dict)
    keyholder: Any = None

    def start_keyholder(self, *, address: str = "127.0.0.1:0", policy: Any = None) -> Any:
        """Start the key holder on this federation's loop (state beside the server's)."""
        from keyholder.service import KeyHolderPolicy, start_keyholder

        self.keyholder = self.loop.run(start_keyholder(
            kit=load_kit(self.kits.keyholder), keys_dir=self.keyholder_keys, address=address,
            state_dir=self.state_dir.parent / "keyholder", policy=policy or KeyHolderPolicy()))
        return self.keyholder

    def kit(self, name: str) -> Kit:
        """A client's verified kit."""
        if name not in self.clients:
            self.clients[name] = load_kit(self.kits.clients[name])
        return self.clients[name]

    def store(self, fn: Callable[[Any], T]) -> T:
        """Read the server's store on its own thread."""
        return self.loop.call(lambda: fn(self.server.store))


@pytest.fixture
def start_federation(kits: Provisioned, keyholder_keys: Path, tmp_path: Path) -> Iterator[Callable[..., Federation]]:
    """Factory: start a server with a given run config and planners; stopped at teardown."""
    loops: list[tuple[LoopThread, Any]] = []

    def start(config: RunConfig | None = None,
              planners: Mapping[TaskKind, Any] | Callable[[Any], Mapping[TaskKind, Any]] | None = None,
              limits: Limits = DEFAULT_LIMITS, liveness_ms: int = 60_000, keyholder: bool = False,
              keyholder_address: str | None = None, keyholder_backoff: Any = None,
              object_store_bytes: int | None = None, **server_options: Any) -> Federation:
        """``keyholder=True`` starts a key holder first and points the server at it;
        ``keyholder_address`` points the server elsewhere (e.g. at nothing). ``planners``
        may be a function of the server's aggregator (for planners that need it)."""
        from server.app import start_server
        from server.secagg.aggregator import SecureAggregator

        loop = LoopThread()
        state = tmp_path / f"state{len(loops)}"
        fed = Federation(kits, loop, None, state, "", keyholder_keys)
        if keyholder:
            keyholder_address = f"127.0.0.1:{fed.start_keyholder().port}"
        server_kit = load_kit(kits.server)
        aggregator = loop.call(lambda: SecureAggregator.open(
            kit=server_kit, state_dir=state, keyholder_address=keyholder_address or "127.0.0.1:9",
            keyholder_backoff=keyholder_backoff, limits=limits, object_store_bytes=object_store_bytes))
        if callable(planners):
            planners = planners(aggregator)
        fed.server = loop.run(start_server(kit=server_kit, state_dir=state, run_config=config, planners=planners,
                                           aggregator=aggregator, limits=limits, liveness_ms=liveness_ms,
                                           **server_options))
        fed.address = f"127.0.0.1:{fed.server.port}"
        loops.append((loop, fed))
        return fed

    yield start
    for loop, fed in loops:
        try:
            loop.run(fed.server.stop(grace=0.2))
            if fed.keyholder is not None:
                loop.run(fed.keyholder.stop(grace=0.2))
        finally:
            loop.close()
