"""``fedsecure bench``: reproducible measurements printed as JSON (medians; variants
measured side by side, alternating, in one run)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch


def bench_dp(*, kind: str, steps: int, repeats: int) -> dict[str, object]:
    """DP-SGD step vs the same step without DP on the default reward model."""
    from client_sdk.dp_training import DPSettings, DPStepper, bt_loss
    from fedsecure.data.shares import client_pairs
    from fedsecure.models.encoding import encode_pairs
    from fedsecure.models.reward import RewardModelConfig, build_reward_model

    settings = DPSettings()  # the defaults a client runs with (secure mode on)
    model, tok = build_reward_model(RewardModelConfig(kind=kind))
    data = encode_pairs(client_pairs(name="a", clients=["a", "b", "c"], kind=kind, limit=4096), tok)
    q = settings.batch_size / len(data)
    params = [p for p in model.parameters() if p.requires_grad]
    plain_opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)

    def nonprivate_step() -> None:
        idx = torch.randperm(len(data), generator=gen)[: settings.batch_size]
        plain_opt.zero_grad(set_to_none=True)
        bt_loss(model(data.batch(idx))).backward()
        plain_opt.step()

    def timed(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    private_s: list[float] = []
    nonprivate_s: list[float] = []
    batch_sizes: list[int] = []
    for _ in range(repeats):
        for _ in range(2):
            nonprivate_step()  # warm-up
        nonprivate_s += timed(nonprivate_step, steps)
        with DPStepper(model=model, settings=settings, noise_multiplier=1.0, learning_rate=1e-3, sample_rate=q) as st:
            st.step(data)  # warm-up
            private_s += timed(lambda: st.step(data), steps)
    batch_sizes.append(settings.batch_size)
    p, n = statistics.median(private_s), statistics.median(nonprivate_s)
    return {"private_step_s": round(p, 5), "nonprivate_step_s": round(n, 5), "overhead": round(p / n, 3),
            "pairs_per_s": round(settings.batch_size / p, 1),
            "config": {"kind": kind, "batch_size": settings.batch_size, "max_grad_norm": settings.max_grad_norm,
                       "secure_mode": settings.secure_mode, "grad_sample_mode": settings.grad_sample_mode,
                       "steps_per_variant": steps * repeats, "repeats": repeats, "threads": torch.get_num_threads(),
                       "trainable_params": sum(x.numel() for x in params), "pairs": len(data)}}


def main(args: argparse.Namespace) -> int:
    """Run the named benchmark and print its JSON."""
    warnings.filterwarnings("ignore")
    if args.what == "dp":
        print(json.dumps(bench_dp(kind=args.kind, steps=args.steps, repeats=args.repeats)))
    return 0
