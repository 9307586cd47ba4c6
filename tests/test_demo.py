"""`fedsecure demo` (what `make demo` runs) completes a federation and reports it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsecure.models.groups import GroupKey


@pytest.mark.timeout(900)  # seven processes on 2 cores: about 4 minutes alone, more on a loaded machine
def test_demo_runs_a_federation_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "demo", "--rounds", "2", "--out", str(out),
                           "--local-steps", "8", "--max-pairs", "1200", "--distill-steps", "3",
                           "--align-steps", "2", "--align-first-round", "1", "--grpo-eval", "32",
                           "--backbone-steps", "30"],
                          capture_output=True, text=True, timeout=840,
                          env={**os.environ, "FEDSECURE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["state"], summary["rounds_closed"]) == ("finished", 2)
    # The operator pretrained one backbone per architecture on public data; every kit sealed both.
    assert summary["backbone"]["steps"] == 30 and len(summary["backbone"]["sha256"]) == 64
    assert summary["backbone_deep"]["shape"]["layers"] == 3
    assert summary["backbone_deep"]["sha256"] != summary["backbone"]["sha256"]
    assert {c["kind"] for c in summary["clients"].values()} == {"image_text", "image", "text"}
    for client in summary["clients"].values():
        assert client["completed"] == {"TRAIN": 2, "SCORE": 2, "ALIGN": 2, "PERSONALISE": 1,
                                       "REPORT_LEDGER": 2} and not client["refused"]
        assert 0 < client["epsilon"] <= client["epsilon_budget"] == 8.0
        # Personalised after the last round, within the budget the federation left it.
        tap = client["personalisation"]["metrics"]
        assert tap["distill_steps"] == 3 and tap["epsilon"] == client["epsilon"]
        assert 0.0 <= tap["heldout_accuracy_personalised"] <= 1.0
        assert client["audit"]["ok"], client["audit"]
        assert 0.0 <= client["heldout_accuracy"] <= 1.0
        # Judged on the server's public questions, every answer scored, per question type.
        quality = client["public_questions"]
        assert quality and all(0.0 <= quality[k] <= 1.0 for k in quality if not k.startswith("count."))
        assert ("top1_all.yesno" in quality) == (client["kind"] != "image")
    # Each round the attention adapters were aggregated under CKKS: per stack, a quorum sum
    # the key holder decrypted, which every client holding that stack applied.
    # Groups are keyed by stack, backbone and block shape: three clients run the same
    # backbone and shape, so per stack one group; clinic-d (3 blocks, its own backbone) has
    # no peer of its architecture: it trained and scored alone, nothing of it was decrypted.
    key = {d["group"]: GroupKey.parse(d["group"]) for d in summary["decryptions"]}
    assert {k.backbone for k in key.values()} == {summary["backbone"]["sha256"][:12]}
    groups = {(d["round"], key[d["group"]].stack): set(d["contributors"]) for d in summary["decryptions"]}
    assert groups == {(r, g): members for r in (1, 2) for g, members in
                      (("image", {"hospital-a", "hospital-b"}), ("text", {"hospital-a", "bank-c"}))}
    applied = {name: {(r, GroupKey.parse(g).stack) for r, g, _ in c["aggregates_applied"]}
               for name, c in summary["clients"].items()}
    assert applied["hospital-a"] >= {(1, "image"), (1, "text"), (2, "image"), (2, "text")}
    assert applied["hospital-b"] >= {(1, "image"), (2, "image")}
    assert applied["bank-c"] >= {(1, "text"), (2, "text")}
    assert applied["clinic-d"] == set() and summary["clients"]["clinic-d"]["public_questions"]
    assert "rounds closed" in proc.stdout and "key holder decrypted" in proc.stdout  # progress was shown
    assert "PASS" in proc.stdout and (out / "audit.html").exists()
    assert "reward models on the server's public questions" in proc.stdout
    # The ALIGN stage (from round 1 here; the demo's default is its last round): each round,
    # GRPO steps on the fused scores every client sent over its
    # score session, the router refit and its weights logged per question type.
    alignment = summary["alignment"]
    assert alignment["steps"] == 4 and 0.0 <= alignment["end_accuracy"] <= 1.0
    rounds = alignment["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["steps"] == 2 for r in rounds)
    # each refresh, the policy answered public questions of every type itself, and the gate's
    # verdict (steps passed when no type is trusted) is part of the round's record
    assert all(set(r["policy_right"]) == {"color", "shape", "yesno"} and 0 <= r["passed"] <= 2 for r in rounds)
    assert all(r["connected"] == sorted(summary["clients"]) for r in rounds)
    assert all(r["router_fit"]["accuracy_after"] >= 0.0 and set(r["router_weights"]) == {"color", "shape", "yesno"}
               for r in rounds)
    assert "policy test accuracy" in proc.stdout and "router weights per question type" in proc.stdout
    assert "(n=" in proc.stdout.split("policy test accuracy", 1)[1]  # each type's figure with its question count
    assert "no policy at all" in proc.stdout and set(alignment["text_only_by_type"]) <= {"color", "shape", "yesno"}
    assert "personalisation (TAP" in proc.stdout and "not personalised" not in proc.stdout
    for name in ("server", "keyholder", "admin"):
        assert (out / "kits" / name / "kit.sig").exists()
    # The run report beside the audit page: every round, every client, numbers also in JSON.
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2] and set(report["clients"]) == set(summary["clients"])
    page = (out / "report.html").read_text()
    assert summary["run_report"] and "ε spent" in page and "Public questions: pairwise accuracy" in page
    assert page.count("<svg") == 3  # ε, public accuracy, the policy; held-out is not reported by uploaders
    # The parties were started from configuration files a user can start from too.
    import tomllib

    run = tomllib.loads((out / "configs" / "server.toml").read_text())
    assert run["run"]["rounds"] == 2 and run["run"]["phases"][0] == "train"
    assert {p.stem for p in (out / "configs").glob("*.toml")} == {"server", *summary["clients"]}


def test_demo_refuses_to_reuse_a_consortium(tmp_path: Path) -> None:
    (tmp_path / "kits").mkdir()
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "demo", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "fresh consortium" in proc.stderr


def test_pretrained_backbones_are_reused_by_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from apps.demo_backbones import Pretraining, pretrain
    from fedsecure.models.backbone import backbone_digest

    monkeypatch.setenv("FEDSECURE_CACHE", str(tmp_path / "cache"))
    # two architectures pretrained at the same time, each its own backbone
    first, deep = pretrain([Pretraining(tmp_path / "a", tmp_path / "a-log"),
                             Pretraining(tmp_path / "d", tmp_path / "d-log", " deep", ("--layers", "3"))], 3)
    assert first["sha256"] == backbone_digest(tmp_path / "a") != deep["sha256"] == backbone_digest(tmp_path / "d")
    (again,) = pretrain([Pretraining(tmp_path / "b", tmp_path / "b-log")], 3)
    assert "reusing the backbone" in capsys.readouterr().out
    assert again["sha256"] == first["sha256"] == backbone_digest(tmp_path / "b")
    cached = next(p for p in (tmp_path / "cache").glob("backbone-*/backbone/backbone.json")
                  if backbone_digest(p.parent) == first["sha256"])
    cached.write_text(cached.read_text() + " ")  # a changed cached file: pretrained anew, never trusted
    (third,) = pretrain([Pretraining(tmp_path / "c", tmp_path / "c-log")], 3)
    assert "reusing" not in capsys.readouterr().out and backbone_digest(tmp_path / "c") == third["sha256"]


@pytest.mark.timeout(300)
def test_a_demo_that_cannot_finish_stops_with_one_sentence_and_no_party_left(tmp_path: Path) -> None:
    """Attack review (issue 23 item 13): on a busy machine the demo died with a traceback
    (subprocess.TimeoutExpired while waiting for the clients). Out of time, it now says so
    in one sentence, shuts every party down and exits 1."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "demo", "--rounds", "1", "--out", str(out),
                           "--timeout", "1", "--backbone-steps", "0", "--align-steps", "0", "--max-pairs", "200"],
                          capture_output=True, text=True, timeout=280,
                          env={**os.environ, "FEDSECURE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "[demo] stopped: " in proc.stderr, proc.stderr
    assert "--timeout" in proc.stderr
    assert not _parties_of(out)


def _parties_of(out: Path) -> list[str]:
    """Processes (server, key holder, clients) whose command line names the demo's folder."""
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(out).encode() in cmdline.read_bytes():
                left.append(cmdline.parent.name)
        except OSError:
            continue
    return left


@pytest.mark.timeout(300)
def test_a_terminated_demo_shuts_every_party_down(tmp_path: Path) -> None:
    """A demo killed with SIGTERM (a job's time limit) left its server, key holder and
    clients running: Python ran no ``finally``. It now stops in one sentence with every
    party shut down."""
    out = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "demo", "--rounds", "1", "--out", str(out),
                             "--backbone-steps", "0", "--align-steps", "0", "--max-pairs", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FEDSECURE_CACHE": str(tmp_path / "cache")})
    try:
        deadline = time.monotonic() + 240
        while not (out / "server.port").exists():  # the parties are up
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr and "[demo] stopped: terminated by signal" in stderr, stderr
    assert not _parties_of(out)
