"""GRPO under torchrun with DDP (two CPU processes, gloo): ranks draw different prompts,
gradients are averaged, so every rank ends with the same, changed, weights; rank 0 alone
writes checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_two_ranks_stay_identical_and_train(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2",
                               str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path)],
                              capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired as exc:  # show where the ranks were, not just "timed out"
        raise AssertionError(f"torchrun timed out:\n{exc.stdout!s}\n{exc.stderr!s}") from exc
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["prompts"] != r1["prompts"]  # each rank trains on its own share
    assert r0["changed"] and r1["changed"]
    assert r0["checksum"] == r1["checksum"]  # DDP averaged the gradients: same weights everywhere
    assert r0["skipped"] == r1["skipped"] == [None, None]
    assert json.loads((tmp_path / "ckpt" / "latest.json").read_text())["step"] == 2
