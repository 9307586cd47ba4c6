"""Round trips proto <-> domain for every message the engine stores or sends."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedsecure import serde
from fedsecure.errors import InvalidSubmission
from fedsecure.proto.v1 import common_pb2
from fedsecure.transport.metrics import RpcStats, ServerMetrics
from fedsecure.types import (
    AlignSpec,
    Capabilities,
    ClientInfo,
    Decline,
    DeclineReason,
    Envelope,
    LedgerHead,
    Modality,
    PayloadKind,
    PersonaliseSpec,
    PhaseConfig,
    ReportLedgerSpec,
    RunConfig,
    RunStatus,
    Score,
    ScoreBatch,
    ScoreItem,
    ScoreSpec,
    StepScores,
    Task,
    TaskKind,
    TaskReport,
    TensorChunk,
    TrainSpec,
    UpdateManifest,
)

text = st.text(max_size=20)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
digest = st.binary(min_size=32, max_size=32)
names = st.lists(text, max_size=4).map(tuple)
metrics = st.dictionaries(text, finite, max_size=4).map(lambda d: tuple(sorted(d.items())))

specs = st.one_of(
    st.builds(TrainSpec, local_steps=u32, learning_rate=finite, batch_size=u32, planned_rounds=u32,
              download_groups=names, aux_groups=names, compensation=metrics, upload_group=text),
    st.builds(ScoreSpec, items=st.lists(st.builds(ScoreItem, item_id=text, prompt_id=text, image_png=st.binary(max_size=64),
                                                  question=text, completion=text), max_size=3).map(tuple)),
    st.builds(PersonaliseSpec, replace_margin=finite, distill_steps=u32, distill_weight=finite, temperature=finite,
              download_groups=names, source_run_id=text, source_round=u32),
    st.just(ReportLedgerSpec()),
    st.builds(AlignSpec, steps=u32, step_deadline_ms=u32, download_groups=names),
)
KIND_OF = {TrainSpec: TaskKind.TRAIN, ScoreSpec: TaskKind.SCORE, PersonaliseSpec: TaskKind.PERSONALISE,
           ReportLedgerSpec: TaskKind.REPORT_LEDGER, AlignSpec: TaskKind.ALIGN}
items = st.lists(st.builds(ScoreItem, item_id=text, prompt_id=text, image_png=st.binary(max_size=64), question=text,
                           completion=text), max_size=3).map(tuple)


@given(spec=specs, run_id=text, round_=u64, task_id=text, deadline=i64, attempt=u32)
def test_task_round_trip(spec, run_id, round_, task_id, deadline, attempt) -> None:  # type: ignore[no-untyped-def]
    task = Task(run_id=run_id, round=round_, task_id=task_id, kind=KIND_OF[type(spec)], deadline_unix_ms=deadline,
                attempt=attempt, spec=spec)
    wire = serde.task_to_proto(task).SerializeToString()
    msg = common_pb2.Task()
    msg.ParseFromString(wire)
    assert serde.task_from_proto(msg) == task


@given(client=text, run=text, round_=u64, task=text, nonce=st.binary(max_size=16), ts=i64,
       kind=st.sampled_from(PayloadKind), payload=digest, sig=st.binary(max_size=72))
def test_envelope_round_trip(client, run, round_, task, nonce, ts, kind, payload, sig) -> None:  # type: ignore[no-untyped-def]
    env = Envelope(client, run, round_, task, nonce, ts, kind, payload, sig)
    assert serde.envelope_from_proto(serde.envelope_to_proto(env)) == env


@given(name=text, dtype=text, shape=st.lists(i64, max_size=4).map(tuple), index=u32, data=st.binary(max_size=64),
       sha=digest)
def test_chunk_round_trip(name, dtype, shape, index, data, sha) -> None:  # type: ignore[no-untyped-def]
    chunk = TensorChunk(name, dtype, shape, index, data, sha)
    assert serde.chunk_from_proto(serde.chunk_to_proto(chunk)) == chunk


@given(group=text, weight=finite, enc=text, chunks=st.lists(digest, max_size=5).map(tuple), total=u64)
def test_manifest_round_trip(group, weight, enc, chunks, total) -> None:  # type: ignore[no-untyped-def]
    m = UpdateManifest(group, weight, enc, chunks, total)
    assert serde.manifest_from_proto(serde.manifest_to_proto(m)) == m


@given(mods=st.lists(st.sampled_from(Modality), max_size=3).map(tuple),
       counts=st.dictionaries(text, u64, max_size=3).map(lambda d: tuple(sorted(d.items()))),
       head=st.builds(LedgerHead, seq=u64, entry_sha256=digest, epsilon=finite, delta=finite, epsilon_budget=finite),
       state=text, seen=i64, sdk=text, name=text)
def test_client_info_round_trip(mods, counts, head, state, seen, sdk, name) -> None:  # type: ignore[no-untyped-def]
    info = ClientInfo(name=name, state=state, capabilities=Capabilities(mods, counts), last_seen_ms=seen,
                      ledger_head=head, sdk_version=sdk)
    assert serde.client_info_from_proto(serde.client_info_to_proto(info)) == info


@given(report=metrics.map(TaskReport), reason=st.sampled_from(DeclineReason), detail=text)
def test_report_and_decline_round_trip(report, reason, detail) -> None:  # type: ignore[no-untyped-def]
    assert serde.report_from_proto(serde.report_to_proto(report)) == report
    d = Decline(reason, detail)
    assert serde.decline_from_proto(serde.decline_to_proto(d)) == d


@given(rounds=st.integers(1, 1000), rate=st.floats(0.01, 1.0), quorum=st.integers(1, 10), extra=st.integers(0, 5),
       phases=st.lists(st.builds(PhaseConfig, kind=st.sampled_from(TaskKind), deadline_s=st.integers(1, 3600)),
                       min_size=1, max_size=3).map(tuple))
def test_run_config_and_status_round_trip(rounds, rate, quorum, extra, phases) -> None:  # type: ignore[no-untyped-def]
    cfg = RunConfig(rounds=rounds, sample_rate=rate, quorum=quorum, min_clients=quorum + extra, phases=phases)
    assert serde.run_config_from_proto(serde.run_config_to_proto(cfg)) == cfg
    status = RunStatus(run_id="r", state="running", round=2, attempt=1, phase=phases[0].kind, config=cfg,
                       tasks_open=1, tasks_done=2, rounds_closed=1, detail="x")
    assert serde.run_status_from_proto(serde.run_status_to_proto(status)) == status


def test_unknown_enum_values_are_refused() -> None:
    env = serde.envelope_to_proto(Envelope("a", "r", 1, "t", b"n", 0, PayloadKind.SCORES, b"d"))
    env.payload_kind = 99
    with pytest.raises(InvalidSubmission, match="payload_kind"):
        serde.envelope_from_proto(env)
    with pytest.raises(InvalidSubmission, match="task.kind"):
        serde.task_from_proto(common_pb2.Task(kind=42))


def test_task_kind_must_match_its_spec() -> None:
    msg = serde.task_to_proto(Task("r", 1, "t", TaskKind.SCORE, 0, 1, ScoreSpec()))
    msg.kind = int(TaskKind.TRAIN)
    with pytest.raises(ValueError, match="carries spec 'score'"):
        serde.task_from_proto(msg)


@pytest.mark.parametrize("kwargs, message", [
    ({"rounds": 0}, "rounds"), ({"sample_rate": 0.0}, "sample_rate"), ({"sample_rate": 1.5}, "sample_rate"),
    ({"quorum": 0, "min_clients": 0}, "quorum"), ({"quorum": 3, "min_clients": 2}, "min_clients"),
    ({"phases": ()}, "phase"), ({"phases": (PhaseConfig(TaskKind.SCORE, 0),)}, "deadline"),
    ({"max_attempts": 0}, "max_attempts"),
])
def test_run_config_rejects_bad_values(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs)


def test_stored_submission_forms_round_trip() -> None:
    from fedsecure.proto.v1 import federation_pb2
    from fedsecure.types import DecryptCommit, DecryptReceipt, Score, SignedContribution

    env = Envelope("a", "r", 1, "t", b"n" * 16, 5, PayloadKind.UPDATE, b"d" * 32, b"sig")
    manifest = UpdateManifest("attn", 2.0, "raw", (b"x" * 32,), 10)
    contribution = SignedContribution(env, manifest, b"-----BEGIN CERTIFICATE-----")
    assert serde.stored_update(serde.contribution_to_proto(contribution).SerializeToString()) == contribution
    commit = DecryptCommit("r", 1, "attn.text", (contribution,), (b"a" * 32, b"b" * 32), 0.75)
    assert serde.commit_from_proto(serde.commit_to_proto(commit)) == commit
    receipt = DecryptReceipt(3, b"h" * 32, b"sig", entry_json='{"seq":3}', keyholder_certificate=b"PEM")
    assert serde.receipt_from_proto(serde.receipt_to_proto(receipt)) == receipt
    scores = (Score("i1", 0.5), Score("i2", -1.0))
    req = federation_pb2.SubmitScoresRequest(scores=serde.scores_to_proto(scores))
    assert serde.stored_scores(req.SerializeToString()) == scores
    report = TaskReport((("acc", 0.9),))
    assert serde.stored_outcome(federation_pb2.FinishTaskRequest(
        report=serde.report_to_proto(report)).SerializeToString()) == report
    decline = Decline(DeclineReason.NO_DATA, "x")
    assert serde.stored_outcome(federation_pb2.FinishTaskRequest(
        decline=serde.decline_to_proto(decline)).SerializeToString()) == decline
    task = Task("r", 3, "t", TaskKind.SCORE, 9, 1, ScoreSpec((ScoreItem("i"),)))
    assert serde.task_from_bytes(serde.task_to_bytes(task)) == task


@given(value=st.integers(0, 2**64 - 1))
def test_unsigned_64_bit_fields_are_range_checked_at_any_depth(value: int) -> None:
    """Property (security review, defect 3): a uint64 anywhere in a request — nested, in a
    repeated message, or as a map value — passes iff it fits SQLite's signed 64 bits."""
    from fedsecure.proto.v1 import federation_pb2, keyholder_pb2

    fits = value <= serde.INT64_MAX
    hello = federation_pb2.HelloRequest()
    hello.ledger_head.seq = value
    commit = keyholder_pb2.DecryptRequest()
    commit.commit.contributions.add().manifest.total_bytes = value
    counts = federation_pb2.HelloRequest()
    counts.capabilities.sample_counts["pairs"] = value
    for msg, name in ((hello, "HelloRequest.ledger_head.seq"),
                      (commit, "DecryptRequest.commit.contributions[0].manifest.total_bytes"),
                      (counts, "HelloRequest.capabilities.sample_counts['pairs']")):
        if fits:
            serde.check_integer_ranges(msg)
        else:
            with pytest.raises(InvalidSubmission, match=re.escape(f"{name}: {value} is out of range")):
                serde.check_integer_ranges(msg)


@given(step=u64, items=items, deadline=i64)
def test_score_batch_round_trip(step, items, deadline) -> None:  # type: ignore[no-untyped-def]
    from fedsecure.proto.v1 import federation_pb2

    batch = ScoreBatch(step=step, items=items, deadline_unix_ms=deadline)
    msg = federation_pb2.ScoreSessionResponse()
    msg.ParseFromString(serde.score_batch_to_proto(batch).SerializeToString())
    assert serde.score_batch_from_proto(msg.batch) == batch


score_values = st.floats(-1e6, 1e6, allow_nan=False)  # MAX_ABS_SCORE: beyond it refused when decoded


@given(step=u64, values=st.lists(st.tuples(text, score_values), max_size=4), nonce=st.binary(max_size=16))
def test_step_scores_round_trip(step, values, nonce) -> None:  # type: ignore[no-untyped-def]
    from fedsecure.proto.v1 import federation_pb2

    env = Envelope(client_id="a", run_id="r", round=1, task_id="t", nonce=nonce, timestamp_ms=5,
                   payload_kind=PayloadKind.STEP_SCORES, payload_sha256=b"\0" * 32, signature=b"s")
    answer = StepScores(step=step, envelope=env, scores=tuple(Score(i, v) for i, v in values))
    msg = federation_pb2.ScoreSessionRequest()
    msg.ParseFromString(serde.step_scores_to_proto(answer).SerializeToString())
    assert serde.step_scores_from_proto(msg.scores) == answer


def test_step_scores_need_an_envelope() -> None:
    from fedsecure.proto.v1 import federation_pb2

    with pytest.raises(ValueError, match="no signed envelope"):
        serde.step_scores_from_proto(federation_pb2.StepScores(step=1))


@given(rpcs=st.lists(st.builds(RpcStats, method=text, calls=u64,
                               codes=st.lists(st.tuples(text, u64), max_size=3).map(tuple),
                               p50_ms=finite, p99_ms=finite, max_ms=finite), max_size=3).map(tuple),
       rss=u64, fds=st.integers(0, 2**32 - 1), uptime=u64)
def test_server_metrics_round_trip(rpcs, rss, fds, uptime) -> None:  # type: ignore[no-untyped-def]
    m = ServerMetrics(rpcs=rpcs, rss_bytes=rss, open_fds=fds, uptime_ms=uptime)
    assert serde.metrics_from_proto(serde.metrics_to_proto(m)) == m
