"""The Admin service (operator -> server): thin wrappers over the engine and store."""

from __future__ import annotations

from collections.abc import Callable

from fedsecure import __version__, serde
from fedsecure.crypto import pki
from fedsecure.proto.v1 import admin_pb2, admin_pb2_grpc

from server.rounds.engine import RoundEngine
from fedsecure.transport.metrics import RpcRecorder
from fedsecure.transport.status_codes import domain_errors
from server.rounds.store import Store


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Status, run control, client listing, run-time revocation, ledger-head export,
    server metrics."""

    def __init__(self, *, store: Store, engine: RoundEngine, revoked: set[str],
                 recorder: RpcRecorder | None = None, on_revoke: Callable[[str], None] | None = None) -> None:
        self.store, self.engine, self.revoked = store, engine, revoked
        self.recorder = recorder or RpcRecorder()
        self.on_revoke = on_revoke

    @domain_errors
    async def Status(self, request, context):  # type: ignore[no-untyped-def]
        clients = self.store.client_infos()
        return admin_pb2.StatusResponse(
            server_version=__version__, run=serde.run_status_to_proto(self.engine.status()),
            clients_enrolled=len(clients), clients_revoked=sum(c.state == "revoked" for c in clients))

    @domain_errors
    async def StartRun(self, request, context):  # type: ignore[no-untyped-def]
        config = serde.run_config_from_proto(request.config)  # ValueError -> INVALID_ARGUMENT
        return admin_pb2.StartRunResponse(run=serde.run_status_to_proto(self.engine.start_run(config)))

    @domain_errors
    async def StopRun(self, request, context):  # type: ignore[no-untyped-def]
        return admin_pb2.StopRunResponse(run=serde.run_status_to_proto(self.engine.stop_run(request.run_id)))

    @domain_errors
    async def ListClients(self, request, context):  # type: ignore[no-untyped-def]
        return admin_pb2.ListClientsResponse(clients=[serde.client_info_to_proto(c) for c in self.store.client_infos()])

    @domain_errors
    async def RevokeClient(self, request, context):  # type: ignore[no-untyped-def]
        name = pki.check_name(request.name)
        newly = self.store.revoke(name, request.reason or "revoked by admin")
        # Effective at once: the interceptor consults this set on every call and every
        # streamed message, and the client's calls already open are ended.
        self.revoked.add(name)
        if self.on_revoke is not None:
            self.on_revoke(name)
        self.engine.poke()
        return admin_pb2.RevokeClientResponse(newly_revoked=newly)

    @domain_errors
    async def ExportLedgerHeads(self, request, context):  # type: ignore[no-untyped-def]
        return serde.ledger_heads_export_to_proto(self.store.submissions.ledger_heads())

    @domain_errors
    async def Metrics(self, request, context):  # type: ignore[no-untyped-def]
        return serde.metrics_to_proto(self.recorder.snapshot())
