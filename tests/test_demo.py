"""`fedsecure demo` (what `make demo` runs) completes a federation and reports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_a_federation_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "fedsecure.cli", "demo", "--rounds", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["state"], summary["rounds_closed"]) == ("finished", 2)
    assert {c["modality"] for c in summary["clients"].values()} == {"image_text", "image", "text"}
    for client in summary["clients"].values():
        assert client["completed"] == {"REPORT_LEDGER": 2} and not client["refused"]
    assert "rounds closed" in proc.stdout  # progress was shown
    for name in ("server", "keyholder", "admin"):
        assert (out / "kits" / name / "kit.sig").exists()


def test_demo_refuses_to_reuse_a_consortium(tmp_path: Path) -> None:
    (tmp_path / "kits").mkdir()
    proc = subprocess.run([sys.executable, "-m", "fedsecure.cli", "demo", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "fresh consortium" in proc.stderr
