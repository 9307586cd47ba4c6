"""``fedsecure bench dp`` and ``dp-utility``: the cost and the utility of DP-SGD for the
reward models (medians; private and non-private variants measured side by side,
alternating, in one run)."""

from __future__ import annotations

import statistics
import time

import torch


def bench_dp(*, kind: str, steps: int, repeats: int, mode: str | None = None, gate: bool = False,
             trainable: str = "all") -> dict[str, object]:
    """DP-SGD step vs the same step without DP on the default reward model, trained as a
    client trains it (listwise records over every answer; ``mode``: an Opacus per-sample
    gradient engine other than the default; ``gate``: with FedCola's gates in place, as a
    uni-modal client trains from round 2 on; ``trainable``: the client's trainable set,
    :data:`client_sdk.dp_training.TRAINABLE_SETS`, the same for both variants)."""
    import dataclasses

    from benchmarks.bench_collaboration import restrict
    from client_sdk.dp_training import DPSettings, DPStepper, data_loss, training_mode
    from fedsecure.data.preferences import records_from_pairs
    from fedsecure.models.encoding import encode_records
    from fedsecure.models.reward import (
        SHARED_ADAPTER,
        build_reward_model,
    )
    from tasks.easyvqa.data import answers
    from tasks.easyvqa.models import reward_config as easyvqa_reward_config
    from tasks.easyvqa.shares import client_pairs

    settings = DPSettings(trainable=trainable)  # otherwise the defaults a client runs with (secure mode on)
    if mode:
        settings = dataclasses.replace(settings, grad_sample_mode=mode)
    model, tok = build_reward_model(easyvqa_reward_config(kind=kind))
    if gate:
        from fedsecure.models.gate import attach_gates
        from fedsecure.models.slots import slot_of

        if kind == "image_text":
            raise ValueError("an image+text model holds both stacks: it has no gate")
        aux = {slot_of(n).position: torch.randn_like(p) * 0.01  # type: ignore[union-attr]
               for n, p in model.named_parameters() if f"lora_B.{SHARED_ADAPTER}" in n}
        attach_gates(model, stack=kind, adapter=SHARED_ADAPTER, aux=aux)
    data = encode_records(records_from_pairs(client_pairs(name="a", clients=["a", "b", "c"], kind=kind, limit=4096),
                                             answer_set=answers()), tok, answers=answers())
    q = settings.batch_size / len(data)
    restrict(model, trainable)  # both variants train the same set
    params = [p for p in model.parameters() if p.requires_grad]
    plain_opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)

    def nonprivate_step() -> None:
        training_mode(model)  # the modes DP training runs in (dropout off in the frozen stacks)
        idx = torch.randperm(len(data), generator=gen)[: settings.batch_size]
        plain_opt.zero_grad(set_to_none=True)
        batch = data.batch(idx)
        data_loss(data, model(batch), batch).backward()
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
    for _ in range(repeats):
        for _ in range(2):
            nonprivate_step()  # warm-up
        nonprivate_s += timed(nonprivate_step, steps)
        with DPStepper(model=model, settings=settings, noise_multiplier=1.0, learning_rate=1e-3, sample_rate=q) as st:
            st.step(data)  # warm-up
            private_s += timed(lambda: st.step(data), steps)
    p, n = statistics.median(private_s), statistics.median(nonprivate_s)
    return {"private_step_s": round(p, 5), "nonprivate_step_s": round(n, 5), "overhead": round(p / n, 3),
            "records_per_s": round(settings.batch_size / p, 1),
            "config": {"kind": kind, "batch_size": settings.batch_size, "max_grad_norm": settings.max_grad_norm,
                       "secure_mode": settings.secure_mode, "grad_sample_mode": settings.grad_sample_mode,
                       "gate": gate, "trainable": trainable,
                       "steps_per_variant": steps * repeats, "repeats": repeats, "threads": torch.get_num_threads(),
                       "trainable_params": sum(x.numel() for x in params), "records": len(data),
                       "candidates_per_record": data.candidates, "objective": "listwise"}}


def bench_dp_utility(*, kinds: list[str], steps: int, epsilon: float = 8.0, delta: float = 1e-5,
                     pairs: int = 4000) -> dict[str, object]:
    """Per client kind, same data and steps: held-out pairwise accuracy with DP (ε budget)
    and without, membership-inference AUC of both models, and the auditor's independent
    ε against the ledger's."""
    import tempfile
    from pathlib import Path

    from client_sdk.dp_training import (
        DPSettings,
        pairwise_accuracy,
        train_nonprivate,
        train_private,
    )
    from fedsecure.crypto import ckks
    from fedsecure.data.preferences import holdout
    from fedsecure.kit import load_kit
    from fedsecure.models.encoding import encode_pairs
    from fedsecure.models.reward import build_reward_model
    from tasks.easyvqa.data import answers
    from tasks.easyvqa.models import reward_config as easyvqa_reward_config
    from fedsecure.privacy.audit import audit_ledger
    from fedsecure.privacy.budget import PrivacyBudget
    from fedsecure.privacy.ledger import Ledger
    from fedsecure.privacy.membership import membership_auc
    from tasks.easyvqa import TASK as EASYVQA
    from fedsecure.provision import provision
    from tasks.easyvqa.shares import client_pairs

    settings = DPSettings()
    # Each variant at its own tuned learning rate (best against best): DP with a small
    # clip wants larger steps; without DP the smaller rate did best on this data.
    lr_private, lr_plain = 0.03, 3e-3
    out: dict[str, object] = {"config": {"steps": steps, "epsilon_budget": epsilon, "delta": delta,
                                         "batch_size": settings.batch_size, "max_grad_norm": settings.max_grad_norm,
                                         "learning_rate_private": lr_private, "learning_rate_nonprivate": lr_plain,
                                         "pairs": pairs, "secure_mode": settings.secure_mode}}
    with tempfile.TemporaryDirectory() as tmp:
        public = ckks.public_context_bytes(ckks.create_secret_context())  # kits need one; nothing is encrypted here
        kits = provision(out=Path(tmp) / "kits", clients=["a"], keyholder_public_context=public, task=EASYVQA)
        kit = load_kit(kits.clients["a"])
        for kind in kinds:
            train, held = holdout(client_pairs(name="a", clients=["a", "b", "c"], kind=kind, limit=pairs),
                                  fraction=0.2, seed=0)
            torch.manual_seed(0)
            plain, tok = build_reward_model(easyvqa_reward_config(kind=kind))
            dtrain, dheld = encode_pairs(train, tok, answers=answers()), encode_pairs(held, tok, answers=answers())
            train_nonprivate(model=plain, data=dtrain, steps=steps, learning_rate=lr_plain,
                             batch_size=settings.batch_size)
            torch.manual_seed(0)
            private, _ = build_reward_model(easyvqa_reward_config(kind=kind))
            ledger = Ledger(Path(tmp) / f"{kind}.jsonl", kit=kit, budget=PrivacyBudget(epsilon, delta))
            res = train_private(model=private, data=dtrain, ledger=ledger, settings=settings, steps=steps,
                                learning_rate=lr_private, rounds_left=1, run_id="bench", round_=1)
            audit = audit_ledger(ledger.path, ca_cert=kit.ca_cert)
            rel = audit.releases[-1]
            acc_p, acc_n = pairwise_accuracy(private, dheld), pairwise_accuracy(plain, dheld)
            out[kind] = {"train_pairs": len(dtrain), "heldout_pairs": len(dheld),
                         "accuracy_private": round(acc_p, 4), "accuracy_nonprivate": round(acc_n, 4),
                         "gap_points": round(100 * (acc_n - acc_p), 2), "epsilon_ledger": round(rel.epsilon_ledger, 4),
                         "epsilon_audit": round(rel.epsilon_recomputed, 4),
                         "audit_relative_diff": round(abs(rel.epsilon_recomputed - rel.epsilon_ledger)
                                                      / rel.epsilon_ledger, 5),
                         "audit_accountant": audit.independent_accountant,
                         "noise_multiplier": round(res.noise_multiplier, 4),
                         "membership_auc_private": round(membership_auc(private, dtrain, dheld), 4),
                         "membership_auc_nonprivate": round(membership_auc(plain, dtrain, dheld), 4)}
    return out
