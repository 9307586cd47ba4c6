"""Authentication and authorisation over real mTLS on 127.0.0.1 (port 0)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client_sdk import FederatedClient
from fedsecure.admin_client import AdminClient
from fedsecure.kit import Kit, load_kit
from fedsecure.proto.v1 import admin_pb2, admin_pb2_grpc, federation_pb2, federation_pb2_grpc
from fedsecure.provision import Provisioned
from fedsecure.transport.credentials import channel_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, channel_options
from tests.conftest import Federation


def _channel(fed: Federation, kit: Kit) -> grpc.Channel:
    return grpc.secure_channel(fed.address, channel_credentials(kit),
                               options=channel_options(DEFAULT_LIMITS, target_name="server"))


def _enrolled(fed: Federation) -> list[str]:
    return fed.store(lambda s: [c.name for c in s.client_infos()])


def test_client_with_its_kit_is_served(start_federation: Callable[..., Federation]) -> None:
    fed = start_federation()
    with _channel(fed, fed.kit("a")) as ch:
        resp = federation_pb2_grpc.FederationStub(ch).Hello(federation_pb2.HelloRequest(sdk_version="t"), timeout=5)
        assert resp.client_id == "a"
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert _enrolled(fed) == ["a"]


def test_no_client_certificate_is_refused(start_federation: Callable[..., Federation]) -> None:
    fed = start_federation()
    creds = grpc.ssl_channel_credentials(root_certificates=fed.kit("a").ca_pem)  # no client cert
    with grpc.secure_channel(fed.address, creds, options=[("grpc.ssl_target_name_override", "server")]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            federation_pb2_grpc.FederationStub(ch).Hello(federation_pb2.HelloRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    assert _enrolled(fed) == []


def test_certificate_from_another_ca_is_refused(start_federation: Callable[..., Federation],
                                                other_kits: Provisioned) -> None:
    fed = start_federation()
    foreign = load_kit(other_kits.clients["a"])  # same name "a", wrong CA
    creds = grpc.ssl_channel_credentials(root_certificates=fed.kit("a").ca_pem, private_key=foreign.key_pem,
                                         certificate_chain=foreign.cert_pem)
    with grpc.secure_channel(fed.address, creds, options=[("grpc.ssl_target_name_override", "server")]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            federation_pb2_grpc.FederationStub(ch).Hello(federation_pb2.HelloRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert _enrolled(fed) == []


def test_client_cannot_call_admin(start_federation: Callable[..., Federation]) -> None:
    fed = start_federation()
    with _channel(fed, fed.kit("a")) as ch:
        with pytest.raises(grpc.RpcError) as err:
            admin_pb2_grpc.AdminStub(ch).RevokeClient(admin_pb2.RevokeClientRequest(name="b"), timeout=5)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "role client may not call" in err.value.details()
    assert fed.store(lambda s: s.clients.revoked_names()) == set()


def test_admin_cannot_act_as_a_client(start_federation: Callable[..., Federation], kits: Provisioned) -> None:
    fed = start_federation()
    with _channel(fed, load_kit(kits.admin)) as ch:
        with pytest.raises(grpc.RpcError) as err:
            federation_pb2_grpc.FederationStub(ch).Hello(federation_pb2.HelloRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert _enrolled(fed) == []


def test_calls_without_deadline_are_refused(start_federation: Callable[..., Federation]) -> None:
    fed = start_federation()
    with _channel(fed, fed.kit("a")) as ch:
        with pytest.raises(grpc.RpcError) as err:
            federation_pb2_grpc.FederationStub(ch).Hello(federation_pb2.HelloRequest())
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "deadline" in err.value.details()
    assert _enrolled(fed) == []


def test_revocation_at_run_time(start_federation: Callable[..., Federation], kits: Provisioned) -> None:
    fed = start_federation()
    client = FederatedClient(kit=fed.kit("b"), address=fed.address)
    client.hello()
    with AdminClient(kit=load_kit(kits.admin), address=fed.address) as admin:
        assert admin.revoke("b", "lost laptop") is True
        assert admin.revoke("b") is False
        states = {c.name: c.state for c in admin.clients()}
    assert states["b"] == "revoked"
    with pytest.raises(grpc.RpcError) as err:
        client.hello()
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in err.value.details()
    client.close()
    # The server keeps serving everyone else.
    with FederatedClient(kit=fed.kit("a"), address=fed.address) as other:
        assert other.hello().client_id == "a"


def test_revoking_the_admins_name_does_not_lock_the_operator_out(
        start_federation: Callable[..., Federation], kits: Provisioned) -> None:
    """The revocation list holds client credentials only (found by fuzzing: revoking the
    name "admin" used to refuse the admin's own calls from then on)."""
    fed = start_federation()
    with AdminClient(kit=load_kit(kits.admin), address=fed.address) as admin:
        admin.revoke("admin", "fuzz")
        assert "admin" in fed.store(lambda s: s.clients.revoked_names())
        admin.clients()  # still served


def test_admin_metrics_count_each_call_and_its_status(start_federation: Callable[..., Federation],
                                                      kits: Provisioned) -> None:
    fed = start_federation()
    with FederatedClient(kit=fed.kit("a"), address=fed.address) as client:
        client.hello()
    with _channel(fed, fed.kit("a")) as ch:  # a client may not call Admin: counted as refused
        with pytest.raises(grpc.RpcError):
            admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=5)
    with AdminClient(kit=load_kit(kits.admin), address=fed.address) as admin:
        m = admin.metrics()
    hello, status = m.rpc("Hello"), m.rpc("Status")
    assert hello is not None and hello.calls == 1 and hello.codes == (("OK", 1),) and hello.p99_ms > 0
    assert status is not None and status.codes == (("PERMISSION_DENIED", 1),)
    assert m.rss_bytes > 0 and m.open_fds > 0
