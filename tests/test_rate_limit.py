"""Per-identity rate limits (issue 15 item 5): the token bucket by known answers, and over
real mTLS one client's flood is refused with RESOURCE_EXHAUSTED while another client
is served."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from fedsecure.proto.v1 import federation_pb2, federation_pb2_grpc
from fedsecure.transport.credentials import channel_credentials
from fedsecure.transport.limits import Limits, channel_options
from fedsecure.transport.rate_limit import RateLimiter
from client_sdk import FederatedClient
from tests.conftest import Federation


def test_token_bucket_known_answers() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]  # the burst, then empty
    assert limiter.allow("b")                 # another identity has its own bucket
    now[0] = 0.5                              # 0.5 s at 2/s: one token back
    assert limiter.allow("a") and not limiter.allow("a")
    now[0] = 100.0                            # refills to the burst, never beyond
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        RateLimiter(rate=0.0, burst=1)


def test_one_clients_flood_is_refused_and_others_are_served(start_federation: Callable[..., Federation]) -> None:
    limits = Limits(calls_per_second=5.0, call_burst=10)
    fed = start_federation(limits=limits)
    FederatedClient(kit=fed.kit("a"), address=fed.address).hello()
    FederatedClient(kit=fed.kit("b"), address=fed.address).hello()

    def stub(name: str) -> federation_pb2_grpc.FederationStub:
        kit = fed.kit(name)
        channel = grpc.secure_channel(fed.address, channel_credentials(kit),
                                      options=channel_options(limits, target_name=kit.server_name))
        return federation_pb2_grpc.FederationStub(channel)
    flooder, other = stub("a"), stub("b")
    codes = []
    for _ in range(40):
        try:
            flooder.Heartbeat(federation_pb2.HeartbeatRequest(), timeout=10)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            codes.append(err.code())
    refused = [c for c in codes if c is grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(refused) >= 20 and set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert other.Heartbeat(federation_pb2.HeartbeatRequest(), timeout=10).server_time_ms > 0  # b is served
