"""Operator-side clients (``fedsecure admin``): the server's Admin service, and the key
holder's revocation list (which the admin signs, so the key holder need not trust the
server to relay revocations)."""

from __future__ import annotations

from typing import Self

import grpc

from fedsecure import serde
from fedsecure.kit import Kit
from fedsecure.crypto.revocation import sign_revocations
from fedsecure.proto.v1 import admin_pb2, admin_pb2_grpc, keyholder_pb2_grpc
from fedsecure.transport.credentials import channel_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, RPC_DEADLINE_S, channel_options
from fedsecure.transport.metrics import ServerMetrics
from fedsecure.types import ClientInfo, LedgerHead, Role, RunConfig, RunStatus


class _AdminChannel:
    """One mTLS channel presenting the admin kit's certificate; closed on exit."""

    def __init__(self, *, kit: Kit, address: str, target_name: str, timeout_s: float) -> None:
        if kit.role is not Role.ADMIN:
            raise ValueError(f"admin commands need an admin kit, got a {kit.role.value} kit")
        self.kit = kit
        self._channel = grpc.secure_channel(address, channel_credentials(kit),
                                            options=channel_options(DEFAULT_LIMITS, target_name=target_name))
        self._timeout = timeout_s

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AdminClient(_AdminChannel):
    """Calls the server's Admin service with the admin kit's certificate."""

    def __init__(self, *, kit: Kit, address: str | None = None, timeout_s: float = RPC_DEADLINE_S) -> None:
        super().__init__(kit=kit, address=address or kit.server_address, target_name=kit.server_name,
                         timeout_s=timeout_s)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)

    def status(self) -> tuple[RunStatus, int, int]:
        """(run status, clients enrolled, clients revoked)."""
        r = self._stub.Status(admin_pb2.StatusRequest(), timeout=self._timeout)
        return serde.run_status_from_proto(r.run), r.clients_enrolled, r.clients_revoked

    def start_run(self, config: RunConfig) -> RunStatus:
        """Start a run with ``config``."""
        r = self._stub.StartRun(admin_pb2.StartRunRequest(config=serde.run_config_to_proto(config)),
                                timeout=self._timeout)
        return serde.run_status_from_proto(r.run)

    def stop_run(self, run_id: str = "") -> RunStatus:
        """Stop the active run."""
        r = self._stub.StopRun(admin_pb2.StopRunRequest(run_id=run_id), timeout=self._timeout)
        return serde.run_status_from_proto(r.run)

    def clients(self) -> list[ClientInfo]:
        """Every enrolled client."""
        r = self._stub.ListClients(admin_pb2.ListClientsRequest(), timeout=self._timeout)
        return [serde.client_info_from_proto(c) for c in r.clients]

    def ledger_heads(self) -> dict[str, list[LedgerHead]]:
        """Every privacy-ledger head each client reported to the server (for the auditor)."""
        r = self._stub.ExportLedgerHeads(admin_pb2.ExportLedgerHeadsRequest(), timeout=self._timeout)
        return serde.ledger_heads_export_from_proto(r)

    def revoke(self, name: str, reason: str = "") -> bool:
        """Revoke a client's certificate now; True if it was not revoked before."""
        r = self._stub.RevokeClient(admin_pb2.RevokeClientRequest(name=name, reason=reason), timeout=self._timeout)
        return r.newly_revoked

    def metrics(self) -> ServerMetrics:
        """Server-side latency and status counts per RPC, memory and file descriptors."""
        return serde.metrics_from_proto(self._stub.Metrics(admin_pb2.MetricsRequest(), timeout=self._timeout))


class KeyHolderAdminClient(_AdminChannel):
    """Sends admin-signed revocation lists to the key holder."""

    def __init__(self, *, kit: Kit, address: str | None = None, timeout_s: float = RPC_DEADLINE_S) -> None:
        super().__init__(kit=kit, address=address or kit.keyholder_address, target_name=kit.keyholder_name,
                         timeout_s=timeout_s)
        self._stub = keyholder_pb2_grpc.KeyHolderStub(self._channel)

    def revoke(self, names: list[str], reason: str = "") -> tuple[tuple[str, ...], int]:
        """Sign a list revoking ``names`` with the admin key and send it; returns (names
        the key holder newly revoked, how many it holds revoked in all)."""
        rl = sign_revocations(names=names, private_key=self.kit.private_key, signer_pem=self.kit.cert_pem,
                              reason=reason)
        r = self._stub.Revoke(serde.revocations_to_proto(rl), timeout=self._timeout)
        return tuple(r.newly_revoked), r.revoked_total
