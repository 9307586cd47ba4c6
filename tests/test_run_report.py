"""The run report from a server's metrics log: the numbers per round and client, the HTML's
structure (headings, tables, one inline SVG chart per curve with a line per series), no
scripts, and every number in the JSON."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from apps.cli import main
from server.report import read_metrics, summarise, write_report

RUN = "run-x"


def _records() -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{"run_id": "run-old", "round": 1, "phase": "train", "client": "z",
                                                             "metrics": {"epsilon": 9.0}}]
    for rnd in (1, 2, 3):
        out.append({"run_id": RUN, "round": rnd, "phase": "train_plan", "upload.a": "attn"})
        for client, acc in (("a", 0.5 + 0.1 * rnd), ("b", 0.55)):
            out.append({"run_id": RUN, "round": rnd, "phase": "train", "client": client, "uploaded": 1.0, "weight": 0.5})
            out.append({"run_id": RUN, "round": rnd, "phase": "train", "client": client, "metrics": {
                "heldout_accuracy": acc, "epsilon": 2.0 * rnd, "epsilon_budget": 8.0, "loss_first": 0.69,
                "loss_last": 0.6}})
            out.append({"run_id": RUN, "round": rnd, "phase": "score", "client": client, "ranking_accuracy": 0.4 + 0.05 * rnd,
                        "count.color": 10, "top1_all.color": 0.2, "count.shape": 30, "top1_all.shape": 0.4})
            out.append({"run_id": RUN, "round": rnd, "phase": "ledger", "client": client, "seq": rnd,
                        "epsilon": 2.0 * rnd, "epsilon_budget": 8.0})
        out.append({"run_id": RUN, "round": rnd, "phase": "aggregate", "contributors.attn.image@x": 2.0})
        out.append({"run_id": RUN, "round": rnd, "phase": "align", "steps": 4, "skipped": 0,
                    "monitor_accuracy": 0.3 + 0.02 * rnd, "router_weights": {"color": {"a": 0.7, "b": 0.3}},
                    "start_by_type": {"color": 0.3, "shape": 0.4, "yesno": 0.8},
                    "monitor_by_type": {"color": 0.3 + 0.1 * rnd, "shape": 0.4, "yesno": 0.8},
                    "promoted": rnd == 2, "best_round": 1 if rnd >= 2 else -1})
    out.append({"run_id": RUN, "round": 3, "phase": "personalise", "client": "a",
                "metrics": {"heldout_accuracy_personalised": 0.8, "epsilon": 7.9}})
    return out


class _Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1


def test_summary_html_and_json(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in _records()) + "\n")
    summary = write_report(metrics=metrics, out=tmp_path / "report.html", json_out=tmp_path / "report.json")
    assert summary["run_id"] == RUN  # the newest run, not run-old
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert summary["rounds"][0]["trained"] == ["a", "b"] and summary["rounds"][0]["uploaded"] == ["a", "b"]
    assert summary["rounds"][2]["aggregated"] == {"attn.image@x": 2}
    assert summary["clients"]["a"]["3"] == {"heldout_accuracy": pytest.approx(0.8), "epsilon": 6.0,
                                            "epsilon_budget": 8.0, "loss_first": 0.69, "loss_last": 0.6,
                                            "public_pairwise": pytest.approx(0.55), "public_top1": pytest.approx(0.35)}
    assert summary["rounds"][2]["personalised"]["a"]["heldout_accuracy_personalised"] == 0.8
    assert json.loads((tmp_path / "report.json").read_text())["clients"]["b"]["2"]["epsilon"] == 4.0

    page = (tmp_path / "report.html").read_text()
    parsed = _Structure()
    parsed.feed(page)
    assert parsed.tags.get("svg") == 4 and parsed.tags.get("table") == 4 and parsed.tags.get("h1") == 1
    # ε, held-out, public: a and b; the policy: each type and the type mean, from the start
    assert parsed.tags.get("path") == 2 + 2 + 2 + 4
    assert "color 0.30 → 0.50" in page and "exported: round 2&#x27;s" in page
    assert "the start (alignment has not helped)" in page
    assert "<script" not in page and "run-old" not in page
    assert "Router weights per question type" in page and "Personalisation (TAP)" in page


def test_bad_logs_are_refused_with_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"run_id": "r", "round": 1}\n{oops\n')
    with pytest.raises(ValueError, match="m.jsonl:2: not JSON"):
        read_metrics(bad)
    with pytest.raises(ValueError, match="no run"):
        summarise([{"round": 1}])
    with pytest.raises(ValueError, match="nothing of run 'nope'"):
        summarise([{"run_id": "r", "round": 1}], run_id="nope")
    assert main(["report", "--metrics", str(bad), "--out", str(tmp_path / "r.html")]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_a_clients_metric_names_cannot_overwrite_the_servers_fields(tmp_path: Path) -> None:
    """Attack review (issue 23 item 9): a client's report named `phase`, `round`, `run_id`
    and `uploaded`; merged into the server's record, it replaced them, its record vanished
    from the run report, and a client that uploaded nothing was listed as an uploader."""
    from server.planners.metrics import MetricsLog, client_metrics

    hostile = (("phase", 1.0), ("round", 99.0), ("run_id", 5.0), ("uploaded", 1.0), ("client", 3.0),
               ("heldout_accuracy", 0.7), ("epsilon", float("nan")), ("steps", True))
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"run_id": RUN, "round": 1, "phase": "train", "client": "m", **client_metrics(hostile)})
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert (record["run_id"], record["round"], record["phase"], record["client"]) == (RUN, 1, "train", "m")
    assert record["metrics"] == {"heldout_accuracy": 0.7} and record["metrics_dropped"] == 7
    summary = summarise([record])
    assert summary["rounds"][0]["trained"] == ["m"] and summary["rounds"][0]["uploaded"] == []
    assert summary["clients"]["m"]["1"] == {"heldout_accuracy": 0.7}
