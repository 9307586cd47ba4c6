"""``fedsecure bench WHAT``: run one benchmark and print its JSON (see README.md here)."""

from __future__ import annotations

import argparse
import json
import warnings


def main(args: argparse.Namespace) -> int:
    """Run the named benchmark and print its JSON."""
    warnings.filterwarnings("ignore")
    if args.what == "dp":
        from benchmarks.bench_dp import bench_dp

        print(json.dumps(bench_dp(kind=args.kind, steps=args.steps, repeats=args.repeats)))
    elif args.what == "he":
        from benchmarks.bench_he import bench_he

        print(json.dumps(bench_he(n_params=args.params, clients=args.clients, repeats=args.repeats)))
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
    return 0
