"""GRPO under torchrun with DDP (two CPU processes, gloo): ranks draw different prompts,
gradients are averaged, so every rank ends with the same, changed, weights; rank 0 alone
writes checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def test_two_ranks_stay_identical_and_train(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Own session: on a timeout the whole group (torchrun and both ranks) is killed, none
    # is left behind; the ranks dump their stacks first (faulthandler in ddp_worker.py).
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node=2",
                             str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun timed out; where the ranks were:\n{out}\n{err[-6000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["prompts"] != r1["prompts"]  # each rank trains on its own share
    assert r0["changed"] and r1["changed"]
    assert r0["checksum"] == r1["checksum"]  # DDP averaged the gradients: same weights everywhere
    assert r0["skipped"] == r1["skipped"] == [None, None]
    assert json.loads((tmp_path / "ckpt" / "latest.json").read_text())["step"] == 2
