"""Run under ``torchrun --nproc_per_node=2`` by test_grpo_fsdp.py: the standalone
alignment job (`fedsecure align --parallel fsdp`) on the built-in tiny VLM, two CPU ranks."""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import sys
from pathlib import Path

import torch

from server.align.engine.job import AlignmentSettings, run_alignment
from tasks.easyvqa import TASK as EASYVQA


def main(out: Path) -> None:
    faulthandler.dump_traceback_later(400, exit=True)
    settings = AlignmentSettings(out=out, adapter="lora", sft_epochs=0, vision_pretrain_steps=0, steps=2,
                                 prompts_per_step=2, group_size=4, eval_limit=8, checkpoint_every=1, device="cpu",
                                 parallel="fsdp")
    result = run_alignment(settings, task=EASYVQA)
    (out / f"job-rank{os.environ['RANK']}.json").write_text(json.dumps(
        {"steps": result.steps, "end": result.end.accuracy, "start": result.start.accuracy}))
    gc.collect()  # the job's FSDP wrappers are freed before their process group (see ddp_worker.py)
    torch.distributed.barrier()  # leave together (see fsdp_worker.py)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
