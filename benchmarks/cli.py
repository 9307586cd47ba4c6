"""``fedsecure bench WHAT``: run one benchmark and print its JSON (see README.md here)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.seed_processes import SeedProcess


def main(args: argparse.Namespace) -> int:
    """Run the named benchmark and print its JSON."""
    warnings.filterwarnings("ignore")
    if args.what == "dp":
        from benchmarks.bench_dp import bench_dp

        print(json.dumps(bench_dp(kind=args.kind, steps=args.steps, repeats=args.repeats, mode=args.mode,
                                  gate=args.gate, trainable=args.trainable)))
    elif args.what == "he":
        from benchmarks.bench_he import bench_he

        print(json.dumps(bench_he(n_params=args.params, clients=args.clients or 8, repeats=args.repeats)))
    elif args.what == "flood":
        from benchmarks.bench_flood import bench_flood

        print(json.dumps(bench_flood(window_s=args.seconds), indent=2))
    elif args.what == "load":
        from benchmarks.bench_load import LoadConfig, bench_load

        print(json.dumps(bench_load(LoadConfig(clients=args.clients or 100, seconds=args.seconds,
                                               rss_at_s=args.rss_at))))
    elif args.what == "grpo":
        from benchmarks.bench_grpo import BenchConfig, bench_grpo

        heads = max(4, args.hidden // 64)
        config = BenchConfig(hidden=args.hidden, intermediate=4 * args.hidden, layers=args.layers, heads=heads,
                             device=args.device, threads=args.threads)
        print(json.dumps(bench_grpo(config=config, steps=args.steps, repeats=args.repeats)))
    elif args.what == "dp-utility":
        from benchmarks.bench_dp import bench_dp_utility

        kinds = ["image_text", "image", "text"] if args.kind == "all" else [args.kind]
        print(json.dumps(bench_dp_utility(kinds=kinds, steps=args.steps)))
    elif args.what == "collaboration":
        _collaboration(args)
    elif args.what == "reward-sweep":
        _reward_sweep(args)
    elif args.what == "personalise":
        _personalise(args)
    elif args.what == "mor":
        from benchmarks.bench_mor import MorBenchConfig, bench_mor

        print(json.dumps(bench_mor(MorBenchConfig(steps=args.steps, threads=args.threads))))
    return 0


def experiment(args: argparse.Namespace) -> int:
    """``fedsecure experiment mor``: run the comparison, write JSON/Markdown/SVG, print the summary."""
    import logging

    from benchmarks.experiment_mor import merge_seeds, run_experiment, write_outputs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    warnings.filterwarnings("ignore")
    if args.merge:
        result = merge_seeds([json.loads(Path(f).read_text()) for f in args.merge.split(",")])
    else:
        from benchmarks.experiment_mor import uses_clients

        started = time.monotonic()
        seeds = [int(s) for s in args.seeds.split(",")]
        jobs = len(seeds) if args.jobs is None else args.jobs
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        # no client reward model (--methods start,oracle: the policy's ceiling): no backbone either
        federated = uses_clients(args.methods.split(",") if args.methods else ())
        backbone = _backbone(args) if federated else None
        if jobs > 1 and len(seeds) > 1:
            from benchmarks.seed_processes import run_side_by_side

            files = run_side_by_side(seed_processes(args, backbone=backbone, seeds=seeds, jobs=jobs), jobs=jobs)
            result = merge_seeds([json.loads(f.read_text()) for f in files])
            # the user waited from the start (the backbone's pretraining too), not the longest seed
            result["wall_s"] = round(time.monotonic() - started, 1)
        else:
            result = run_experiment(experiment_config(args, backbone=backbone or args.out / "backbone"))
    paths = write_outputs(result, args.out)
    print(json.dumps({"summary": result["summary"], "gains": result["gains"], "outputs": [str(p) for p in paths],
                      "wall_s": result["wall_s"]}))
    return 0


# the experiment's scale options, each a MorExperimentConfig field of the same name
_SCALE_KEYS = ("steps", "prompts_per_step", "learning_rate", "best_nll", "eval_questions", "quality_per_type",
               "rounds", "local_steps")


def experiment_config(args: argparse.Namespace, *, backbone: Path):  # type: ignore[no-untyped-def]
    """The experiment's configuration from its command line: a scale option left unset
    keeps ``MorExperimentConfig``'s default, the one place it is written."""
    from benchmarks.experiment_mor import MorExperimentConfig

    scale = {key: getattr(args, key) for key in _SCALE_KEYS if getattr(args, key) is not None}
    if getattr(args, "seed_per_group", None):
        scale["seed_per_group"] = parse_group_counts(args.seed_per_group)
    return MorExperimentConfig(backbone=backbone, out=args.out, seeds=tuple(int(s) for s in args.seeds.split(",")),
                               methods=tuple(args.methods.split(",")) if args.methods else (), device=args.device,
                               threads=args.threads, **scale)


def seed_processes(args: argparse.Namespace, *, backbone: Path | None, seeds: Sequence[int],
                   jobs: int) -> list[SeedProcess]:
    """One ``fedsecure experiment mor`` child per seed, with the parent's options, the
    shared backbone, ``--threads`` split among the ``jobs`` running at once, and a folder
    of its own under ``--out``."""
    from benchmarks.seed_processes import SeedProcess

    threads = max(1, args.threads // min(jobs, len(seeds)))
    common = ["--threads", str(threads), "--jobs", "1", "--device", args.device]
    if backbone is not None:
        common += ["--backbone", str(backbone)]
    for key in (*_SCALE_KEYS, "methods", "seed_per_group"):
        if getattr(args, key, None) is not None:
            common += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    runs = []
    for seed in seeds:
        folder = args.out / "seeds" / f"seed-{seed}"
        command = (sys.executable, "-m", "apps.cli", "experiment", "mor", "--seeds", str(seed), *common,
                   "--out", str(folder))
        runs.append(SeedProcess(seed=seed, command=command, folder=folder, threads=threads))
    return runs


def parse_group_counts(text: str) -> tuple[tuple[str, int], ...]:
    """``"yesno=400,shape=100"`` → ``(("yesno", 400), ("shape", 100))``; a clear error
    for anything else (a group named twice, a count that is not a whole number >= 0)."""
    out: dict[str, int] = {}
    for item in text.split(","):
        group, sep, count = item.partition("=")
        if not sep or not group.strip() or not count.strip().isdigit() or group.strip() in out:
            raise ValueError(f"expected GROUP=N,... with distinct groups and whole N >= 0, got {text!r}")
        out[group.strip()] = int(count)
    return tuple(out.items())


def _backbone(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The federation's backbone: the one given, or one pretrained (once) under ``--out``."""
    if args.backbone is not None:
        return args.backbone
    from server.backbone.pretrain import PretrainSettings, pretrain_backbone
    from tasks import get_task

    backbone = args.out / "backbone"
    if not (backbone / "backbone.json").exists():
        pretrain_backbone(PretrainSettings(out=backbone, steps=args.backbone_steps, threads=args.threads),
                          task=get_task(getattr(args, "task", "easyvqa")))
    return backbone


def _personalise(args: argparse.Namespace) -> None:
    import logging

    from benchmarks.bench_personalise import PersonaliseBenchConfig, bench_personalise, markdown_table, write_outputs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out = args.out or Path("bench-personalise")
    cfg = PersonaliseBenchConfig(backbone=_backbone(args), seeds=tuple(int(s) for s in args.seeds.split(",")),
                                 rounds=args.rounds, local_steps=args.local_steps, pairs_per_client=args.pairs,
                                 eval_questions=args.questions, distill_steps=args.distill_steps, margin=args.margin,
                                 reserve=args.reserve, threads=args.threads)
    result = bench_personalise(cfg)
    paths = write_outputs(result, args.out)
    print(markdown_table(result), file=sys.stderr)
    print(json.dumps({"summary": result["summary"], "audits_passed": result["audits_passed"],
                      "audits": result["audits"], "epsilon_max": result["epsilon_max"],
                      "outputs": [str(p) for p in paths], "wall_s": result["wall_s"]}))


def _collaboration(args: argparse.Namespace) -> None:
    import logging

    from benchmarks.bench_collaboration import ROWS, CollaborationConfig, bench_collaboration, write_outputs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out = args.out or Path("bench-collaboration")
    backbone = _backbone(args)
    cfg = CollaborationConfig(backbone=backbone, seeds=tuple(int(s) for s in args.seeds.split(",")),
                              rows=tuple(args.rows.split(",")) if args.rows else ROWS, rounds=args.rounds,
                              local_steps=args.local_steps, pairs_per_client=args.pairs,
                              questions_per_type=args.questions, central_steps=args.central_steps, threads=args.threads,
                              task=args.task, trainable=args.trainable)
    result = bench_collaboration(cfg)
    paths = write_outputs(result, args.out)
    result["outputs"] = [str(p) for p in paths]
    print(json.dumps(result["summary"] | {"outputs": result["outputs"], "wall_s": result["wall_s"]}))


def _reward_sweep(args: argparse.Namespace) -> None:
    import logging

    from benchmarks.bench_reward_sweep import SweepConfig, bench_reward_sweep, markdown_table, points_from, write_outputs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out = args.out or Path("bench-reward-sweep")
    kind = "image_text" if args.kind == "all" else args.kind
    client = args.client or {"image_text": "it-1", "image": "img-1", "text": "txt-1"}[kind]
    cfg = SweepConfig(backbone=_backbone(args), kind=kind, client=client, records=args.pairs,
                      per_type=args.questions, seeds=tuple(int(s) for s in args.seeds.split(",")),
                      points=points_from(args.grid, overrides=args.point or ()), threads=args.threads,
                      task=args.task)
    result = bench_reward_sweep(cfg)
    prefix = "reward_sweep" if args.task == "easyvqa" else f"reward_sweep_{args.task}"
    paths = write_outputs(result, args.out, name=f"{prefix}_{kind}_{client}_{args.pairs}")
    print(markdown_table(result), file=sys.stderr)
    print(json.dumps(result["summary"] | {"outputs": [str(p) for p in paths], "wall_s": result["wall_s"]}))
