"""``fedsecure align`` (run or resume an alignment job) and ``fedsecure eval`` (accuracy of
any policy checkpoint on the task's test split)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsecure.task import Task


def add_align_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure align``."""
    from server.align.engine.job import AlignmentSettings

    d = AlignmentSettings(out=Path("."))
    p.add_argument("--out", type=Path, required=True, help="job directory (rerun to resume)")
    p.add_argument("--policy", type=Path, help="local vision-language checkpoint (default: the built-in tiny one)")
    p.add_argument("--adapter", choices=["lora", "full"], default=d.adapter)
    p.add_argument("--sft-epochs", type=int, default=d.sft_epochs, help="warm start on the seed set (0: none)")
    p.add_argument("--vision-pretrain-steps", type=int, default=d.vision_pretrain_steps,
                   help="public pretraining of the built-in policy's vision tower (0: none)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--prompts-per-step", type=int, default=d.prompts_per_step)
    p.add_argument("--group-size", type=int, default=d.group_size)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--beta", type=float, default=d.beta)
    p.add_argument("--eval-limit", type=int, default=d.eval_limit, help="test questions (seeded subset)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    p.add_argument("--parallel", choices=["ddp", "fsdp"], default=d.parallel,
                   help="under torchrun: ddp (each rank a full copy) or fsdp (parameters, gradients and optimiser "
                        "state sharded over the ranks, for policies that do not fit one GPU)")


def align_main(args: argparse.Namespace, *, task: Task) -> int:
    """Run the job on ``task``; print its result as JSON."""
    from server.align.engine.job import AlignmentSettings, run_alignment

    settings = AlignmentSettings(out=args.out, policy_path=args.policy, adapter=args.adapter,
                                 sft_epochs=args.sft_epochs, vision_pretrain_steps=args.vision_pretrain_steps, steps=args.steps, prompts_per_step=args.prompts_per_step,
                                 group_size=args.group_size, learning_rate=args.lr, beta=args.beta,
                                 eval_limit=args.eval_limit, seed=args.seed, device=args.device,
                                 parallel=args.parallel)
    result = run_alignment(settings, task=task)
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}))
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun: leave together, or a late rank's collective aborts
        import gc

        gc.collect()  # the DDP/FSDP wrappers go before their process group (a reducer freed after it hung)
        dist.barrier()
        dist.destroy_process_group()
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure eval``."""
    p.add_argument("--checkpoint", type=Path, required=True, help="a vision-language policy checkpoint directory")
    p.add_argument("--limit", type=int, help="a seeded subset of the test split (default: all of it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def eval_main(args: argparse.Namespace, *, task: Task) -> int:
    """Print the checkpoint's accuracy on ``task``'s test split as JSON."""
    from server.align.engine.vqa_eval import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, task=task, limit=args.limit, seed=args.seed, device=args.device)
    print(json.dumps({"checkpoint": str(args.checkpoint), **dataclasses.asdict(result)}))
    return 0
