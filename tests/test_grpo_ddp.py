"""GRPO under torchrun with DDP (two CPU processes, gloo): ranks draw different prompts,
gradients are averaged, so every rank ends with the same, changed, weights; rank 0 alone
writes checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_torchrun


def test_two_ranks_stay_identical_and_train(tmp_path: Path) -> None:
    # The ranks dump their stacks before the timeout (faulthandler in ddp_worker.py).
    run_torchrun("ddp_worker.py", str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["prompts"] != r1["prompts"]  # each rank trains on its own share
    assert r0["changed"] and r1["changed"]
    assert r0["checksum"] == r1["checksum"]  # DDP averaged the gradients: same weights everywhere
    assert r0["skipped"] == r1["skipped"] == [None, None]
    assert json.loads((tmp_path / "ckpt" / "latest.json").read_text())["step"] == 2
