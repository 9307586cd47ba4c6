"""Run under ``torchrun --nproc_per_node=2`` by test_grpo_fsdp.py: two CPU ranks (gloo)
train one tiny policy sharded with FSDP; each rank holds half of every block, both end
with the same changed weights, and a new engine resumes the checkpoint exactly."""

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
from server.align.engine.sharding import full_tensor


def _engine(out: Path, adapter: str) -> GRPOEngine:
    torch.manual_seed(0)  # the same initial weights on every rank
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=32, hidden=32, layers=2, heads=2))
    policy = Policy(model, setup=PolicySetup(adapter=adapter), placement=select_placement("cpu"), eos_id=2, pad_id=0,
                    is_vlm=False, suppressed_ids=[0, 1])
    config = GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-2, micro_batch_prompts=1,
                        loss=GRPOLossConfig(beta=0.04), sampling=SamplingConfig(max_new_tokens=6))
    return GRPOEngine(policy=policy, config=config, checkpoint_dir=out / "ckpt", checkpoint_every=2, parallel="fsdp")


def _full(engine: GRPOEngine) -> list[torch.Tensor]:
    return [full_tensor(p.detach()).clone() for _, p in engine.policy.trainable()]


def _train(out: Path, adapter: str) -> dict[str, object]:
    """Train, resume, compare; return plain results (the FSDP engines are freed on return,
    before the process group is destroyed: see ddp_worker.py)."""
    engine = _engine(out, adapter)
    rank = engine.policy.placement.rank
    before = _full(engine)
    local = sum(p.to_local().numel() for _, p in engine.policy.model.named_parameters())
    total = sum(p.numel() for _, p in engine.policy.model.named_parameters())
    pool = [Prompt(f"p{i}", "", (3 + i, 4 + i, 5)) for i in range(16)]
    reward = per_completion(lambda p, c: sum(int(t) < 12 for t in c.split()) / 6)
    reports = engine.train(pool, reward, steps=2)
    after = _full(engine)
    torch.distributed.barrier()  # rank 0 has written the step-2 checkpoint
    resumed = _engine(out, adapter)
    step = resumed.resume()
    again = _full(resumed)
    return {
        "rank": rank,
        "checksum": [float(p.double().sum()) for p in after],
        "changed": any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)),
        "local_fraction": local / total,
        "skipped": [r.skipped for r in reports],
        "resumed_step": step,
        "resumed_equal": all(torch.equal(a, b) for a, b in zip(after, again, strict=True)),
        "optimizer_steps": sorted({int(s["step"]) for s in resumed.optimizer.state.values() if "step" in s}),
    }


def main(out: Path, adapter: str) -> None:
    faulthandler.dump_traceback_later(180, exit=True)
    result = _train(out, adapter)
    gc.collect()
    (out / f"rank{result.pop('rank')}.json").write_text(json.dumps(result))
    # Both ranks leave together: a rank that tears its process group down while the other
    # is still inside a collective aborts the other ("terminate called ..."), seen once in CI.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
