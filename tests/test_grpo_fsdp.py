"""GRPO with FSDP under torchrun (two CPU processes, gloo), full fine-tuning and LoRA:
each rank holds about half of the parameters, gradients are averaged, both ranks end with
the same changed weights, and a checkpoint written under FSDP resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_torchrun


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_two_sharded_ranks_train_identically_and_resume(tmp_path: Path, adapter: str) -> None:
    run_torchrun("fsdp_worker.py", str(tmp_path), adapter)
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["changed"] and r1["changed"] and r0["skipped"] == r1["skipped"] == [None, None]
    assert r0["checksum"] == r1["checksum"]  # the same full weights on both ranks
    assert 0.4 < r0["local_fraction"] < 0.6 and 0.4 < r1["local_fraction"] < 0.6  # each holds about half
    assert r0["resumed_step"] == r1["resumed_step"] == 2 and r0["resumed_equal"] and r1["resumed_equal"]
    assert r0["optimizer_steps"] == [2]  # the optimiser state came back too
    assert json.loads((tmp_path / "ckpt" / "latest.json").read_text())["step"] == 2


def test_the_alignment_job_under_fsdp_trains_exports_and_evaluates(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`fedsecure align --parallel fsdp` under torchrun: the job trains, gathers the sharded
    weights to export one loadable policy, and `fedsecure eval` reads it."""
    from apps.cli import main

    run_torchrun("fsdp_job_worker.py", str(tmp_path), timeout=400)
    r0, r1 = (json.loads((tmp_path / f"job-rank{i}.json").read_text()) for i in (0, 1))
    assert r0["steps"] == r1["steps"] == 2 and r0["end"] == r1["end"]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "policy"), "--limit", "8"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 8
