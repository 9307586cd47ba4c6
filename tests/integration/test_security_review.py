"""Regression tests for the independent security review's findings, over real gRPC on
loopback (the key holder's own findings are in test_keyholder.py):
- a chunk whose second ciphertext has another scale leaves the running sum unchanged,
  and the round then closes with the correct mean;
- closing retries are bounded: the attempt fails, then the run, with the reason;
- unsigned 64-bit fields at 2^63 and 2^64 - 1 in every request -> INVALID_ARGUMENT;
- request bytes that do not decode -> INVALID_ARGUMENT with a generic message;
- the same envelope with a tampered payload is refused, not acknowledged as a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import tenseal as ts
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from fedsecure import serde
from fedsecure.crypto import ckks, signing
from fedsecure.crypto.packing import parse_plain_encoding
from fedsecure.kit import Kit, load_kit
from fedsecure.proto.v1 import admin_pb2, federation_pb2, keyholder_pb2
from fedsecure.transport.credentials import channel_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, channel_options
from fedsecure.transport.retry import Backoff
from fedsecure.types import LedgerHead, PayloadKind, PhaseConfig, RunConfig, TaskKind
from server.planners.metrics import MetricsLog
from server.planners.train import TrainPlanner
from tests.conftest import Federation
from tests.helpers import TEXT, assert_refused, encrypted_update, pull_tasks, wait_for
from tests.integration.test_secure_aggregation import _stream

TRAIN = RunConfig(rounds=1, quorum=2, min_clients=3, phases=(PhaseConfig(TaskKind.TRAIN, 60),))
N = 3 * 2048  # three ciphertexts in one chunk


def _running_sum(fed: Federation, run_id: str, group: str) -> list[bytes]:
    acc = fed.server.aggregator.accumulator
    return fed.loop.call(lambda: [c.to_bytes() for c in acc._sums[(run_id, 1, 1, group)].chunks])


def test_mixed_scale_chunk_leaves_the_sum_unchanged_and_the_round_closes(start_federation, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fed = start_federation(TRAIN, planners=lambda aggregator: {TaskKind.TRAIN: TrainPlanner(
        metrics=MetricsLog(tmp_path / "m.jsonl"), aggregator=aggregator)},
                           keyholder=True)
    tasks = pull_tasks(fed, ("a", "b", "c"))
    w = 1.0 / 3.0
    rng = np.random.default_rng(7)
    x = {n: rng.uniform(-1, 1, N) for n in "abc"}
    (client_a, task), (client_b, task_b) = tasks["a"], tasks["b"]
    client_a.submit(task, encrypted_update(fed.kit("a"), {TEXT: x["a"]}, w))
    before = _running_sum(fed, task.run_id, TEXT)

    # b's signed upload: first ciphertext valid, second encrypted at scale 2^25, third valid.
    good_b = encrypted_update(fed.kit("b"), {TEXT: x["b"]}, w)
    parts = ckks.unframe(good_b.chunks[0])
    params = ckks.kit_params(fed.kit("b"))
    public = ckks.load_public_context(ckks.kit_public_context(fed.kit("b")), params)
    odd = ts.ckks_vector(public, x["b"][2048:4096] * w, scale=2.0 ** 25).serialize()
    mixed = ckks.frame([parts[0], odd, parts[2]])
    assert_refused(lambda: client_b._stub.UploadUpdate(_stream(client_b, task_b, good_b, chunks=[mixed]), timeout=10),
                   grpc.StatusCode.INVALID_ARGUMENT, "scale 2^25.00 is not 2^30")
    assert _running_sum(fed, task.run_id, TEXT) == before  # not one ciphertext of it stayed

    # b then uploads properly, c too: the round closes with the exact mean.
    client_b.submit(task_b, good_b)
    client_c, task_c = tasks["c"]
    client_c.submit(task_c, encrypted_update(fed.kit("c"), {TEXT: x["c"]}, w))
    wait_for(lambda: fed.loop.call(fed.server.engine.status).state == "finished", 60, "the run to finish")
    agg = client_a.download_aggregate(task.run_id, TEXT, 1)
    assert agg.contributors == 3 and parse_plain_encoding(agg.encoding)[1] == N
    mean = np.frombuffer(agg.data, dtype="<f4")
    assert np.max(np.abs(mean - (x["a"] + x["b"] + x["c"]) / 3)) < 1e-4
    for c, _ in tasks.values():
        c.close()


def test_closing_retries_are_bounded_then_the_run_fails_with_the_reason(start_federation, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Key holder unreachable: the close is tried twice, the attempt fails, and with
    max_attempts = 1 the run fails naming why, instead of retrying every 2 s forever."""
    config = RunConfig(rounds=1, quorum=2, min_clients=3, max_attempts=1, phases=(PhaseConfig(TaskKind.TRAIN, 60),))
    fed = start_federation(config, planners=lambda aggregator: {TaskKind.TRAIN: TrainPlanner(
        metrics=MetricsLog(tmp_path / "m.jsonl"), aggregator=aggregator)},
                           keyholder_address="127.0.0.1:9",
                           keyholder_backoff=Backoff(initial_s=0.05, max_delay_s=0.1, max_elapsed_s=0.2),
                           max_close_attempts=2, close_retry_s=0.1)
    tasks = pull_tasks(fed, ("a", "b", "c"))
    for name, (client, task) in tasks.items():
        client.submit(task, encrypted_update(fed.kit(name), {TEXT: np.full(2048, 0.3)}, 1 / 3))
    status = wait_for(lambda: (s := fed.loop.call(fed.server.engine.status)).state == "failed" and s, 30,
                      "the run to fail")
    assert "closing phase TRAIN failed 2 times" in status.detail, status.detail
    assert "unreachable" in status.detail, status.detail
    for c, _ in tasks.values():
        c.close()


# --- integers and undecodable bytes in every request ----------------------------------------

SERVICES = (
    (federation_pb2.DESCRIPTOR.services_by_name["Federation"], "client"),
    (admin_pb2.DESCRIPTOR.services_by_name["Admin"], "admin"),
    (keyholder_pb2.DESCRIPTOR.services_by_name["KeyHolder"], "server"),
)
BIG = (2**63, 2**64 - 1)


def _uint64_paths(desc, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:  # type: ignore[no-untyped-def]
    for f in desc.fields:
        if f.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
            yield (*prefix, f.name)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            yield from _uint64_paths(f.message_type, (*prefix, f.name))


def _with_value(msg: Message, path: tuple[str, ...], value: int) -> None:
    field = msg.DESCRIPTOR.fields_by_name[path[0]]
    if len(path) == 1:
        if field.is_repeated:
            getattr(msg, path[0]).append(value)
        else:
            setattr(msg, path[0], value)
        return
    if field.message_type.GetOptions().map_entry:
        getattr(msg, path[0])["k"] = value  # path[1] is the entry's "value"
        return
    child = getattr(msg, path[0]).add() if field.is_repeated else getattr(msg, path[0])
    _with_value(child, path[1:], value)


def _call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes, timeout: float = 10) -> None:
    name = f"/{method.containing_service.full_name}/{method.name}"
    if method.client_streaming:
        kind = channel.stream_stream if method.server_streaming else channel.stream_unary
        result = kind(name)(iter([payload]), timeout=timeout)
    else:
        kind = channel.unary_stream if method.server_streaming else channel.unary_unary
        result = kind(name)(payload, timeout=timeout)
    if method.server_streaming:
        list(result)


def _kits(fed: Federation) -> dict[str, Kit]:
    return {"client": fed.kit("a"), "admin": load_kit(fed.kits.admin), "server": load_kit(fed.kits.server)}


def _channels(fed: Federation) -> Callable[[str, str], grpc.Channel]:
    kits = _kits(fed)
    kh_address = f"127.0.0.1:{fed.keyholder.port}"

    def open_channel(service: str, role: str) -> grpc.Channel:
        address, target = (kh_address, "keyholder") if service == "KeyHolder" else (fed.address, "server")
        return grpc.secure_channel(address, channel_credentials(kits[role]),
                                   options=channel_options(DEFAULT_LIMITS, target_name=target))

    return open_channel


def test_out_of_range_integers_in_every_request_are_invalid_argument(start_federation) -> None:  # type: ignore[no-untyped-def]
    fed = start_federation(keyholder=True)
    open_channel = _channels(fed)
    hello = federation_pb2.HelloRequest(sdk_version="t")
    with open_channel("Federation", "client") as ch:  # enrolled, so only the integer can be wrong
        ch.unary_unary("/fedsecure.v1.Federation/Hello")(hello.SerializeToString(), timeout=10)
    tried = []
    for service, role in SERVICES:
        with open_channel(service.name, role) as ch:
            for method in service.methods:
                for path in _uint64_paths(method.input_type):
                    for value in BIG:
                        msg = message_factory.GetMessageClass(method.input_type)()
                        _with_value(msg, path, value)
                        with pytest.raises(grpc.RpcError) as err:
                            _call(ch, method, msg.SerializeToString())
                        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (method.name, path, err.value)
                        details = err.value.details() or ""
                        named = path[-2] if path[-1] == "value" else path[-1]  # a map value is named by its map
                        assert named in details and f"{value} is out of range" in details, (method.name, path, details)
                    tried.append(f"{method.name}:{'.'.join(path)}")
    # The two fields the review saw reach SQLite, and the signed round of every submission.
    for expected in ("Hello:ledger_head.seq", "DownloadAggregate:round", "SubmitScores:envelope.round",
                     "UploadUpdate:header.manifest.total_bytes", "DecryptAggregate:commit.round"):
        assert expected in tried, tried
    # The server kept serving.
    with open_channel("Federation", "client") as ch:
        ch.unary_unary("/fedsecure.v1.Federation/Heartbeat")(
            federation_pb2.HeartbeatRequest().SerializeToString(), timeout=10)


def test_undecodable_requests_are_invalid_argument_with_a_generic_message(start_federation) -> None:  # type: ignore[no-untyped-def]
    fed = start_federation(keyholder=True)
    open_channel = _channels(fed)
    garbage = b"\xff\xff\xff\xff\x0f"  # field 0x1fffffff... with an invalid wire type
    count = 0
    for service, role in SERVICES:
        with open_channel(service.name, role) as ch:
            for method in service.methods:
                with pytest.raises(grpc.RpcError) as err:
                    _call(ch, method, garbage)
                details = err.value.details() or ""
                assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (method.name, err.value)
                assert details == f"request could not be decoded as {method.input_type.full_name}", details
                count += 1
    assert count >= 12
    # An unauthenticated role learns nothing from how its bytes parse: the role check comes first.
    with open_channel("Admin", "client") as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/fedsecure.v1.Admin/Status")(garbage, timeout=10)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_tampered_payload_with_an_accepted_envelope_is_refused(start_federation) -> None:  # type: ignore[no-untyped-def]
    config = RunConfig(rounds=1, quorum=2, min_clients=2, phases=(PhaseConfig(TaskKind.REPORT_LEDGER, 60),))
    fed = start_federation(config)
    tasks = pull_tasks(fed, ("a", "b"))
    client, task = tasks["a"]
    head = LedgerHead(seq=1, entry_sha256=b"\x01" * 32, epsilon=0.5, delta=1e-5, epsilon_budget=8.0)
    env = client.sign(task, PayloadKind.LEDGER_HEAD, signing.ledger_head_digest(head))
    request = federation_pb2.ReportLedgerRequest(envelope=serde.envelope_to_proto(env),
                                                 head=serde.ledger_head_to_proto(head))
    first = client._stub.ReportLedger(request, timeout=5)
    assert not first.duplicate and client._stub.ReportLedger(request, timeout=5).duplicate  # identical resend
    tampered = federation_pb2.ReportLedgerRequest()
    tampered.CopyFrom(request)
    tampered.head.epsilon = 0.01  # under-report the privacy spent, same signed envelope
    assert_refused(lambda: client._stub.ReportLedger(tampered, timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
                   "payload does not match the digest the envelope signs")
    stored = fed.store(lambda s: s.submissions.ledger_head("a"))
    assert stored.epsilon == 0.5
    for c, _ in tasks.values():
        c.close()


def test_cli_keygen_provision_and_revoke_reach_the_key_holder(start_federation, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The flow the README documents: the key holder makes its keys, provisioning seals
    only the public part, and `fedsecure admin revoke` revokes at the server *and* at the
    key holder (whose list is admin-signed)."""
    from apps.cli import main as cli

    keys = tmp_path / "kh-keys"
    assert cli(["keyholder-keygen", "--keys", str(keys)]) == 0
    assert cli(["provision", "--out", str(tmp_path / "kits"), "--clients", "x,y",
                "--keyholder-context", str(keys / "ckks_public.ctx")]) == 0
    assert load_kit(tmp_path / "kits" / "keyholder").read_file("ckks_public.ctx") == \
        (keys / "ckks_public.ctx").read_bytes()
    # A secret context is refused by the command, with a message.
    assert cli(["provision", "--out", str(tmp_path / "kits2"), "--clients", "x",
                "--keyholder-context", str(keys / "ckks_secret.ctx")]) == 2
    assert "secret key" in capsys.readouterr().err

    fed = start_federation(keyholder=True)
    admin = str(fed.kits.admin)
    assert cli(["admin", "--kit", admin, "--address", fed.address,
                "--keyholder-address", f"127.0.0.1:{fed.keyholder.port}", "revoke", "d", "--reason", "lost laptop"]) == 0
    out = capsys.readouterr().out
    assert "d: revoked at the server" in out and "d: revoked at the key holder (1 revoked there)" in out
    assert fed.store(lambda s: s.clients.revoked_names()) == {"d"}
    assert fed.loop.call(lambda: set(fed.keyholder.servicer.revocations.names)) == {"d"}


def test_an_upload_outside_the_clients_declared_groups_is_refused(start_federation, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 12: adapters are summed only within (stack, backbone, block shape): an upload
    for a group of another shape or backbone than its client declared is refused, and
    nothing of it reaches the running sum."""
    from fedsecure.models.groups import GroupKey

    fed = start_federation(TRAIN, planners=lambda aggregator: {TaskKind.TRAIN: TrainPlanner(
        metrics=MetricsLog(tmp_path / "m.jsonl"), aggregator=aggregator)}, keyholder=True)
    tasks = pull_tasks(fed, ("a", "b", "c"))
    client, task = tasks["a"]
    other_shape = GroupKey.parse(TEXT).name.replace("h64l2a4m128", "h32l1a2m64")
    other_backbone = GroupKey.of(family="attn", stack="text", backbone_sha256="ab" * 32,
                                 shape=GroupKey.parse(TEXT).shape).name
    # MLP adapters are averaged only within one kind: "a" declared no image+text modality.
    other_kind = GroupKey.parse(TEXT).name.replace("attn.", "mlp_image_text.")
    other_head = GroupKey.parse(TEXT).name.replace("attn.text", "head_image_text.head")  # heads likewise
    for name, text in ((other_shape, "shape h32l1a2m64"), (other_backbone, "backbone abababababab"),
                       ("attn.text", "not FAMILY.STACK@BACKBONE-SHAPE"),
                       (other_kind, "own kind's MLP adapters and head only"),
                       (other_head, "own kind's MLP adapters and head only")):
        update = encrypted_update(fed.kit("a"), {name: np.full(2048, 0.1)}, 1 / 3)
        assert_refused(lambda u=update: client._stub.UploadUpdate(_stream(client, task, u), timeout=10),
                       grpc.StatusCode.INVALID_ARGUMENT, text)
    acc = fed.server.aggregator.accumulator
    assert fed.loop.call(lambda: [k for k in acc._sums]) == []  # refused before a group was even opened
    assert fed.store(lambda s: s.submissions.count()) == 0
    client.submit(task, encrypted_update(fed.kit("a"), {TEXT: np.full(2048, 0.1)}, 1 / 3))  # its own group: fine
    for c, _ in tasks.values():
        c.close()
