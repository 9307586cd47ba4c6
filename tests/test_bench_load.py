"""`fedsecure bench load` end to end, small: real server and key holder processes, mTLS
clients doing every kind of call; the JSON carries server-side latencies, memory samples
and the targets with whether each held."""

from __future__ import annotations

from benchmarks.bench_load import LoadConfig, bench_load


def test_bench_load_small_run_answers_every_task_kind_without_errors() -> None:
    result = bench_load(LoadConfig(clients=3, seconds=12, rss_at_s=4, sample_every_s=2, uploaders=0.7,
                                   phase_deadline_s=10), progress=lambda m: None)
    assert result["client_errors"] == {}
    answered = result["answered"]
    assert answered.get("TRAIN", 0) >= 3 and answered.get("SCORE", 0) >= 1, answered  # type: ignore[union-attr]
    server = result["server"]
    for method in ("Hello", "PullTask", "Heartbeat", "UploadUpdate", "SubmitScores"):
        stats = server[method]  # type: ignore[index]
        assert stats["calls"] >= 1 and stats["errors"] == 0 and 0 < stats["p50_ms"] <= stats["p99_ms"], method
    assert result["rounds_closed"] >= 1  # the uploads were summed and decrypted through the key holder
    assert len(result["samples"]) >= 3 and all(s["rss_mib"] > 0 for s in result["samples"])  # type: ignore[union-attr]
    assert result["targets"]["errors"]["met"] is True  # type: ignore[index]
