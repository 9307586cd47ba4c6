"""`fedsecure bench dp` prints the JSON the issue specifies (a smoke run, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_dp_prints_json() -> None:
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "dp", "--json", "--steps", "2",
                           "--repeats", "1", "--kind", "text"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"private_step_s", "nonprivate_step_s", "overhead", "records_per_s"} <= doc.keys()
    assert doc["private_step_s"] > 0 and doc["nonprivate_step_s"] > 0
    import pytest

    # The step times are printed rounded to 5 decimals; the ratio is taken before rounding.
    assert doc["overhead"] == pytest.approx(doc["private_step_s"] / doc["nonprivate_step_s"], abs=2e-3)
    assert doc["config"]["secure_mode"] is True


def test_bench_he_reports_every_field_and_beats_the_reference_on_size() -> None:
    from benchmarks.bench_he import bench_he

    out = bench_he(n_params=5000, clients=3, repeats=1)
    for key in ("params", "clients", "client_encrypt_s", "bytes_per_param", "server_aggregate_s_per_client",
                "keyholder_decrypt_s", "plaintext_aggregate_s", "max_abs_error", "server_peak_rss_mb"):
        assert key in out and out[key] >= 0, key  # type: ignore[operator]
    ref = out["reference"]
    assert out["params"] == 5000 and out["clients"] == 3 and ref["clients"] == 2  # type: ignore[index]
    assert out["max_abs_error"] <= 1e-4 and ref["max_abs_error"] <= 1e-6  # type: ignore[index, operator]
    assert out["bytes_per_param"] < ref["bytes_per_param"] / 2  # type: ignore[index, operator]


def test_bench_mor_measures_both_paths_and_the_tax() -> None:
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "mor", "--json", "--steps", "3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in ("in_process", "remote"):
        figures = doc[path]
        assert figures["steps"] == 1 and figures["skipped"] == 0  # 3 steps, 2 warm-up
        assert figures["step_s"] > 0 and figures["rollout_s"] > 0 and figures["fusion_s"] >= 0
        # every client answered every measured step, over its channel
        assert {c: v["answered"] for c, v in figures["scoring"].items()} == {"it": 1, "img": 1, "txt": 1}
    assert doc["federation_tax"] > 0
