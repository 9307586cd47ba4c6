"""`fedsecure bench dp` prints the JSON the issue specifies (a smoke run, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_dp_prints_json() -> None:
    proc = subprocess.run([sys.executable, "-m", "fedsecure.cli", "bench", "dp", "--json", "--steps", "2",
                           "--repeats", "1", "--kind", "text"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"private_step_s", "nonprivate_step_s", "overhead", "pairs_per_s"} <= doc.keys()
    assert doc["private_step_s"] > 0 and doc["nonprivate_step_s"] > 0
    import pytest

    # The step times are printed rounded to 5 decimals; the ratio is taken before rounding.
    assert doc["overhead"] == pytest.approx(doc["private_step_s"] / doc["nonprivate_step_s"], abs=2e-3)
    assert doc["config"]["secure_mode"] is True
