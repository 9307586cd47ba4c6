"""Run under ``torchrun --nproc_per_node=2`` by test_grpo_ddp.py: two CPU ranks (gloo)
train the same tiny policy on different prompts; DDP must keep them identical."""

from __future__ import annotations

import faulthandler
import gc
import json
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from fedsecure.models.policy_vlm import tiny_llama_config
from server.align.engine.devices import select_placement
from server.align.engine.grpo import GRPOConfig, GRPOEngine, per_completion
from server.align.engine.grpo_loss import GRPOLossConfig
from server.align.engine.policy import Policy, PolicySetup
from server.align.engine.prompts import Prompt
from server.align.engine.rollouts import SamplingConfig


def _train(out: Path) -> dict[str, object]:
    """Train under DDP; return plain results. Everything holding the DDP wrapper (its
    reducer) is local here and freed on return, before the process group is destroyed."""
    placement = select_placement("cpu")
    assert placement.distributed, "run me under torchrun with 2 processes"
    torch.manual_seed(0)  # the same initial weights on every rank
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=32, hidden=32, layers=1, heads=2))
    policy = Policy(model, setup=PolicySetup(adapter="full"), placement=placement, eos_id=2, pad_id=0,
                    is_vlm=False, suppressed_ids=[0, 1])
    before = [p.detach().clone() for _, p in policy.trainable()]
    config = GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-2, micro_batch_prompts=1,
                        loss=GRPOLossConfig(beta=0.04), sampling=SamplingConfig(max_new_tokens=6))
    engine = GRPOEngine(policy=policy, config=config, checkpoint_dir=out / "ckpt", checkpoint_every=2)
    pool = [Prompt(f"p{i}", "", (3 + i, 4 + i, 5)) for i in range(16)]
    picked = [p.prompt_id for p in engine.sample_prompts(pool)]
    reports = engine.train(pool, per_completion(lambda p, c: sum(int(t) < 12 for t in c.split()) / 6), steps=2)
    params = [p.detach() for _, p in policy.trainable()]
    return {"rank": placement.rank, "checksum": [float(p.double().sum()) for p in params],
            "changed": any(not torch.equal(a, b) for a, b in zip(before, params, strict=True)),
            "prompts": picked, "skipped": [r.skipped for r in reports]}


def main(out: Path) -> None:
    # A rank stuck in a collective prints every thread's stack and exits, so a hang in CI
    # shows where it was (the test's own timeout is 240 s).
    faulthandler.dump_traceback_later(180, exit=True)
    result = _train(out)
    gc.collect()
    # Why the order matters (issue 23 item 12): the DDP wrapper used to live in main()'s
    # locals and was freed only when main() returned, after destroy_process_group(); its
    # reducer's teardown then hung once in ~20 runs on a loaded machine (the stack showed
    # <module>, i.e. after main() had returned). Now it is freed first, then the ranks
    # leave together.
    (out / f"rank{result.pop('rank')}.json").write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
