"""Fuzzing every RPC of Federation, Admin and KeyHolder (issue 15 item 1), as an
authenticated caller of the role each service admits: hypothesis-built messages of the
right shape with hostile values (negative and huge numbers, empty, unicode, control
characters and 1 MB strings, unknown enum values, NaN/Inf, long repetitions, nested
messages) and raw random bytes. Every call must end in a clear status — never INTERNAL or
UNKNOWN — and the services keep serving legitimate callers afterwards."""

from __future__ import annotations

import os
from collections.abc import Callable

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsecure.proto.v1 import admin_pb2, federation_pb2
from fedsecure.transport.limits import Limits
from tests.conftest import Federation
from tests.integration.test_security_review import SERVICES, _call, _channels

CRASHES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# Examples per method: a few hundred calls in `make test`. The benchmark run sets
# FEDSECURE_FUZZ_CALLS (calls per service, spread over its methods) and a shorter
# FEDSECURE_FUZZ_DEADLINE_S (a hostile PullTask.wait_ms holds its call until just before it).
EXAMPLES = int(os.environ.get("FEDSECURE_FUZZ_EXAMPLES", "25"))
CALLS_PER_SERVICE = int(os.environ.get("FEDSECURE_FUZZ_CALLS", "0"))
DEADLINE_S = float(os.environ.get("FEDSECURE_FUZZ_DEADLINE_S", "3"))
FD = FieldDescriptor
TEXT = st.one_of(st.just(""), st.text(max_size=40), st.just("\x00\x07\x1b[2J\u202e"), st.just("é" * 3000),
                 st.sampled_from(["a", "b", "admin", "server", "run-x", "attn.text@random-h64l2a4m128"]),
                 st.just("x" * (1 << 20)))
SCALARS = {
    FD.TYPE_STRING: TEXT,
    FD.TYPE_BYTES: st.one_of(st.binary(max_size=300), st.just(b"\x00" * 100_000)),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FD.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
    FD.TYPE_INT32: st.integers(-2**31, 2**31 - 1), FD.TYPE_SINT32: st.integers(-2**31, 2**31 - 1),
    FD.TYPE_INT64: st.integers(-2**63, 2**63 - 1), FD.TYPE_SINT64: st.integers(-2**63, 2**63 - 1),
    FD.TYPE_UINT32: st.integers(0, 2**32 - 1), FD.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    FD.TYPE_UINT64: st.integers(0, 2**64 - 1), FD.TYPE_FIXED64: st.integers(0, 2**64 - 1),
    FD.TYPE_ENUM: st.integers(-3, 60),  # unknown values are legal on the wire
}


@st.composite
def hostile(draw: st.DrawFn, desc: Descriptor, depth: int = 0) -> bytes:
    """A message of ``desc``'s shape with hostile values (serialised)."""
    msg = message_factory.GetMessageClass(desc)()
    for f in desc.fields:
        if not draw(st.booleans()):
            continue  # missing field
        if f.type == FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            key, value = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            if value.type == FD.TYPE_MESSAGE:
                continue
            for _ in range(draw(st.integers(0, 3))):
                getattr(msg, f.name)[draw(SCALARS[key.type])] = draw(SCALARS[value.type])
            continue
        if f.type == FD.TYPE_MESSAGE:
            if depth >= 2:
                continue
            count = draw(st.sampled_from([1, 2, 200])) if f.is_repeated else 1
            sub = draw(hostile(f.message_type, depth + 1))
            if len(sub) * count > 16 << 20:
                count = 1  # past the message limit already; 200 copies would only exhaust the fuzzer's memory
            target = [getattr(msg, f.name).add() for _ in range(count)] if f.is_repeated else [getattr(msg, f.name)]
            for t in target:
                t.MergeFromString(sub)
            continue
        value = draw(SCALARS[f.type])
        if f.is_repeated:
            count = draw(st.sampled_from([0, 1, 3, 500]))
            if isinstance(value, str | bytes) and len(value) * count > 4 << 20:
                count = 3  # already past the 8 MiB message limit; more only exhausts the fuzzer's memory
            getattr(msg, f.name).extend([value] * count)
        else:
            setattr(msg, f.name, value)
    return msg.SerializeToString()


def _outcome(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> grpc.StatusCode:
    try:
        _call(channel, method, payload, timeout=DEADLINE_S)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _fuzz_service(fed: Federation, service_index: int, examples: int) -> dict[str, int]:
    service, role = SERVICES[service_index]
    if CALLS_PER_SERVICE:
        examples = -(-CALLS_PER_SERVICE // len(service.methods))
    open_channel = _channels(fed)
    seen: dict[str, int] = {}
    with open_channel(service.name, role) as ch:
        if service.name == "Federation":  # enrolled: the calls get past the enrolment check
            ch.unary_unary("/fedsecure.v1.Federation/Hello")(
                federation_pb2.HelloRequest(sdk_version="fuzz").SerializeToString(), timeout=10)
        for method in service.methods:
            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(payload=st.one_of(hostile(method.input_type), st.binary(max_size=512)))
            def one(payload: bytes) -> None:
                code = _outcome(ch, method, payload)
                assert code not in CRASHES, (method.name, code)
                seen[code.name] = seen.get(code.name, 0) + 1
            one()
    return seen


def _still_serving(fed: Federation) -> None:
    open_channel = _channels(fed)
    with open_channel("Admin", "admin") as ch:
        ch.unary_unary("/fedsecure.v1.Admin/Status")(admin_pb2.StatusRequest().SerializeToString(), timeout=10)
    assert fed.keyholder is not None


def test_every_rpc_survives_hostile_input(start_federation: Callable[..., Federation]) -> None:
    # No rate limit here: the point is what each call does, not how many a caller may make.
    fed = start_federation(keyholder=True, limits=Limits(calls_per_second=1e9, call_burst=10**9))
    total: dict[str, int] = {}
    for index in range(len(SERVICES)):
        seen = _fuzz_service(fed, index, examples=EXAMPLES)
        print(f"fuzz outcomes {SERVICES[index][0].name}: {sum(seen.values())} calls {seen}")
        for code, n in seen.items():
            total[code] = total.get(code, 0) + n
    print("fuzz outcomes:", total)
    assert sum(total.values()) >= 300, total
    _still_serving(fed)
