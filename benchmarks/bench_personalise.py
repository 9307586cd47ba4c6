"""``fedsecure bench personalise``: TAP's two stages on our federation (issue 14).

Six clients — two per kind — on Dirichlet(0.5) easy-VQA shares, each split into its own
held-out part (20 %, by image, never trained on), a validation part (15 % of the rest,
for the replacement decisions only) and training pairs. Per seed:

- ``local_only``: each client alone, DP-SGD over the same rounds × steps, calibrated to
  its whole ε = 8 (it needs no reserve);
- the FedCola federation (attention per stack across kinds, MLPs within a kind with
  compensation, gates) at ε = 8 less the personalisation reserve (the clients' own DP
  code, bench_collaboration's loop); ``personal`` is each client's model as it left the
  last round's training; ``global`` the same model with every shared component at the
  federation's version (the last round's published means: TAP's teacher);
- ``replaced``: stage 1 (replacement by margin on the validation split, DP decisions);
- ``personalised``: stage 1 + stage 2 (DP distillation of the teacher, kept only when a
  last DP decision finds it more accurate than stage 1 on the validation split; the share kept
  is reported).

Stages 1 and 2 run the client's own code (client_sdk.personalisation) with a real signed
ledger per client (a throwaway consortium), so ε per stage is read from the ledger and
the ledger is audited. Every variant is measured on the client's held-out split (pairwise
accuracy) and on the server's public questions against all answers
(server.planners.quality), mean over a kind's two clients, then mean ± std over seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.easyvqa.data import answers
from tasks.easyvqa import TASK as EASYVQA
from fedsecure.progress import track

log = logging.getLogger("fedsecure.bench.personalise")

VARIANTS = ("local_only", "global", "personal", "replaced", "personalised")
KINDS = ("image_text", "image", "text")


@dataclass(frozen=True)
class PersonaliseBenchConfig:
    """The federation every variant shares, and TAP's knobs."""

    backbone: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 3
    local_steps: int = 30
    batch_size: int = 64
    learning_rate: float = 0.03
    max_grad_norm: float = 0.1
    epsilon: float = 8.0
    delta: float = 1e-5
    reserve: float = 0.1
    pairs_per_client: int = 1500
    holdout_fraction: float = 0.2
    validation_fraction: float = 0.15
    eval_questions: int = 150
    margin: float = 0.01
    distill_steps: int = 30
    distill_weight: float = 1.0
    temperature: float = 1.0
    distill_learning_rate: float = 0.003
    resolution: float = 0.05      # the clients' default: at least 120 validation pairs per decision
    threads: int = 2

    def __post_init__(self) -> None:
        if not self.seeds or self.rounds < 1 or self.local_steps < 1:
            raise ValueError("need at least one seed, round and local step")


def _split(cfg: PersonaliseBenchConfig, name: str, kind: str, seed: int, clients: Sequence[str]):  # type: ignore[no-untyped-def]
    from fedsecure.data.preferences import holdout
    from tasks.easyvqa.shares import client_pairs

    pairs = client_pairs(name=name, clients=list(clients), kind=kind, seed=seed, limit=cfg.pairs_per_client)
    rest, held = holdout(pairs, fraction=cfg.holdout_fraction, seed=seed)
    train, validation = holdout(rest, fraction=cfg.validation_fraction, seed=seed + 1)
    return train, validation, held


def _federation_aggregates(personal: dict[str, torch.nn.Module], sizes: dict[str, int]) -> dict[str, dict[str, object]]:
    """Per client, the published means of the groups it holds, as the key holder would
    decrypt them (plaintext, through :func:`benchmarks.plain_federation.publish`: attention
    per stack across every client holding it, MLPs among the same kind, never a group of
    one client)."""
    from benchmarks.plain_federation import Participant, publish
    from client_sdk.adapter_exchange import adapter_groups
    from fedsecure.models.groups import ATTENTION_FAMILY, mlp_family

    participants = [Participant(n, m.config.kind, m, sizes[n]) for n, m in personal.items()]  # type: ignore[union-attr]
    published = publish(participants, mlp=True)
    held = {p.name: {g for f in (ATTENTION_FAMILY, mlp_family(p.kind)) for g in adapter_groups(p.model, f)}  # type: ignore[arg-type]
            for p in participants}
    return {name: {g: a for g, a in published.items() if g in held[name]} for name in personal}


def _public(model: torch.nn.Module, batches) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Public-question quality: top-1 over all answers and pairwise, over every type."""
    from benchmarks.bench_collaboration import evaluate_model

    q = evaluate_model(model, batches, EASYVQA)
    counts = {k[6:]: v for k, v in q.items() if k.startswith("count.")}
    n = sum(counts.values()) or 1.0
    return {"public_top1": sum(q[f"top1_all.{t}"] * c for t, c in counts.items()) / n,
            "public_pairwise": sum(q[f"pairwise.{t}"] * c for t, c in counts.items()) / n}


def _one_seed(cfg: PersonaliseBenchConfig, seed: int, questions, consortium, work: Path) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from benchmarks.bench_collaboration import (
        CLIENTS,
        KIND_OF,
        CollaborationConfig,
        eval_batches,
        federated_clients,
    )
    from client_sdk.dp_training import DPSettings, pairwise_accuracy
    from client_sdk.personalisation.plan import PersonalisationSettings
    from client_sdk.personalisation.runner import Personaliser
    from client_sdk.personalisation.stages import components, federation_model
    from fedsecure.errors import PersonalisationRefused
    from fedsecure.kit import load_kit
    from fedsecure.models.encoding import encode_pairs
    from benchmarks.bench_collaboration import reward_config
    from fedsecure.models.reward import tokenizer_for
    from fedsecure.privacy.accountant import epsilon
    from fedsecure.privacy.audit import audit_ledger
    from fedsecure.privacy.budget import PrivacyBudget
    from fedsecure.privacy.ledger import Ledger

    # the backbone's own tokenizer: the models below are built on it (ids are its)
    tok = tokenizer_for(reward_config(EASYVQA, "image_text", cfg.backbone))  # type: ignore[arg-type]
    splits = {c: _split(cfg, c, KIND_OF[c], seed, CLIENTS) for c in CLIENTS}
    enc = {c: tuple(encode_pairs(part, tok, answers=answers()) for part in splits[c]) for c in CLIENTS}
    batches = {kind: eval_batches(kind, questions, tok, EASYVQA) for kind in KINDS}
    common = dict(backbone=cfg.backbone, seeds=(seed,), rounds=cfg.rounds, local_steps=cfg.local_steps,
                  batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, max_grad_norm=cfg.max_grad_norm,
                  delta=cfg.delta)
    out: dict[str, dict[str, dict[str, float]]] = {c: {} for c in CLIENTS}
    started = time.monotonic()
    local, _ = federated_clients(CollaborationConfig(**common, epsilon=cfg.epsilon, rows=("local_only",)),  # type: ignore[arg-type]
                                 "local_only", seed, {c: enc[c][0] for c in CLIENTS})
    for c in local:
        out[c.name]["local_only"] = {"heldout": pairwise_accuracy(c.model, enc[c.name][2]),
                                     **_public(c.model, batches[c.kind])}
    log.info("seed %d: local-only in %.0f s", seed, time.monotonic() - started)
    budget = PrivacyBudget(cfg.epsilon, cfg.delta, personalisation_reserve=cfg.reserve)
    snapshots: dict[str, torch.nn.Module] = {}

    def keep_personal(round_: int, clients) -> None:  # type: ignore[no-untyped-def]
        if round_ == cfg.rounds:
            snapshots.update({c.name: copy.deepcopy(c.model) for c in clients})
    started = time.monotonic()
    fed, _ = federated_clients(CollaborationConfig(**common, epsilon=budget.federation_epsilon, rows=("fedcola",)),  # type: ignore[arg-type]
                               "fedcola", seed, {c: enc[c][0] for c in CLIENTS}, on_trained=keep_personal)
    log.info("seed %d: federation in %.0f s", seed, time.monotonic() - started)
    aggregates = _federation_aggregates(snapshots, {c: len(enc[c][0]) for c in CLIENTS})
    ledgers: dict[str, dict[str, float]] = {}
    settings = PersonalisationSettings(margin=cfg.margin, distill_steps=cfg.distill_steps,
                                       distill_weight=cfg.distill_weight, temperature=cfg.temperature,
                                       learning_rate=cfg.distill_learning_rate, batch_size=cfg.batch_size,
                                       resolution=cfg.resolution)
    dp = DPSettings(max_grad_norm=cfg.max_grad_norm, batch_size=cfg.batch_size)
    for client in fed:
        name, kind = client.name, client.kind
        train, validation, held = enc[name]
        state = work / f"seed{seed}" / name
        ledger = Ledger(state / "ledger.jsonl", kit=load_kit(consortium.clients[name]), budget=budget)
        for i, step in enumerate(client.history):  # the federation's releases, as train_private records them
            ledger.record(run_id=f"bench-seed{seed}", round_=i + 1, step=step,
                          epsilon_after=epsilon(client.history[: i + 1], delta=cfg.delta), data_digest=train.digest)
        personal = snapshots[name]
        teacher = federation_model(personal, aggregates[name])  # type: ignore[arg-type]
        parts = components(personal, list(aggregates[name]))  # type: ignore[arg-type]
        started = time.monotonic()
        try:
            result = Personaliser(state_dir=state, ledger=ledger, tokenizer=tok, settings=settings, dp=dp).run(
                personal=personal, teacher=teacher, parts=parts, train=train, validation=validation, heldout=held,
                run_id=f"bench-seed{seed}", round_=cfg.rounds)
        except PersonalisationRefused as exc:
            # What the product does: the client declines and keeps its own model, so its
            # "replaced" and "personalised" rows are that model (counted in "refused").
            log.warning("seed %d %s: personalisation refused: %s", seed, name, exc)
            refused, models = 1.0, (("global", teacher), ("personal", personal), ("replaced", personal),
                                    ("personalised", personal))
            m = {}
        else:
            refused, m = 0.0, result.metrics
            models = (("global", teacher), ("personal", personal), ("replaced", result.replaced),
                      ("personalised", result.model))
        for variant, model in models:
            heldout = m.get(f"heldout_accuracy_{variant}")
            if heldout is None:
                heldout = pairwise_accuracy(model, held)  # type: ignore[arg-type]
            out[name][variant] = {"heldout": heldout, **_public(model, batches[kind])}
        by_purpose = {e.purpose or "federation": e.epsilon_after for e in ledger.entries[1:]}
        audit = audit_ledger(ledger.path, ca_cert=ledger.kit.ca_cert)
        ledgers[name] = {"epsilon_federation": by_purpose["federation"],
                         "epsilon_after_replace": by_purpose.get("personalise:replace", by_purpose["federation"]),
                         "epsilon_after_distill": by_purpose.get("personalise:distill", math.nan),
                         "components": m.get("components", 0.0), "replaced": m.get("replaced", 0.0),
                         "distillation_kept": m.get("distillation_kept", 0.0),
                         "heldout_distilled": m.get("heldout_accuracy_distilled", math.nan),
                         "refused": refused, "audit_ok": float(audit.ok),
                         "validation_pairs": float(len(validation)), "heldout_pairs": float(len(held)),
                         "seconds": round(time.monotonic() - started, 1)}
        log.info("seed %d %s: %s; ε %s", seed, name, {v: round(out[name][v]["heldout"], 3) for v in out[name]},
                 {k: round(v, 3) for k, v in ledgers[name].items() if k.startswith("epsilon")})
    return {"clients": out, "ledgers": ledgers}


def bench_personalise(cfg: PersonaliseBenchConfig) -> dict[str, object]:
    """Every variant for every seed; per kind mean ± std over seeds (of the kind's mean)."""
    from benchmarks.bench_collaboration import CLIENTS, KIND_OF
    from fedsecure.provision import provision
    from keyholder.keys import generate_keys
    from tasks.easyvqa.shares import server_part

    torch.set_num_threads(cfg.threads)
    started = time.monotonic()
    questions = server_part("reward_eval")[: cfg.eval_questions]
    with tempfile.TemporaryDirectory(prefix="fedsecure-bench-personalise-") as tmp:
        work = Path(tmp)
        public = generate_keys(keys_dir=work / "keyholder")
        consortium = provision(out=work / "consortium", clients=list(CLIENTS), keyholder_public_context=public.read_bytes(), task=EASYVQA)
        runs = {seed: _one_seed(cfg, seed, questions, consortium, work)
                for seed in track(cfg.seeds, desc="seeds", unit="seed")}
    summary: dict[str, dict[str, dict[str, list[float]]]] = {}
    for kind in KINDS:
        names = [c for c in CLIENTS if KIND_OF[c] == kind]
        for variant in VARIANTS:
            for metric in ("heldout", "public_top1", "public_pairwise"):
                per_seed = [statistics.fmean(runs[s]["clients"][n][variant][metric] for n in names)  # type: ignore[index]
                            for s in cfg.seeds]
                summary.setdefault(kind, {}).setdefault(variant, {})[metric] = _ms(per_seed)
        for key in ("epsilon_federation", "epsilon_after_replace", "epsilon_after_distill", "replaced", "components",
                    "refused", "distillation_kept", "heldout_distilled"):
            per_seed = [_nanmean([runs[s]["ledgers"][n][key] for n in names]) for s in cfg.seeds]  # type: ignore[index]
            summary[kind].setdefault("ledger", {})[key] = _ms(per_seed)
        best_other = max(summary[kind]["local_only"]["heldout"][0], summary[kind]["global"]["heldout"][0])
        summary[kind]["target"] = {"personalised_minus_best": [round(summary[kind]["personalised"]["heldout"][0]
                                                                     - best_other, 4), 0.0]}
    audits = [runs[s]["ledgers"][n]["audit_ok"] for s in cfg.seeds for n in CLIENTS]  # type: ignore[index]
    eps_max = max(runs[s]["ledgers"][n][k] for s in cfg.seeds for n in CLIENTS  # type: ignore[index]
                  for k in ("epsilon_federation", "epsilon_after_replace", "epsilon_after_distill")
                  if not math.isnan(runs[s]["ledgers"][n][k]))  # type: ignore[index]
    refusals = int(sum(runs[s]["ledgers"][n]["refused"] for s in cfg.seeds for n in CLIENTS))  # type: ignore[index]
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
            "summary": summary, "per_seed": {str(s): r for s, r in runs.items()},
            "audits_passed": int(sum(audits)), "audits": len(audits), "epsilon_max": round(eps_max, 4),
            "refusals": refusals,
            "wall_s": round(time.monotonic() - started, 1)}


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def _ms(values: Sequence[float]) -> list[float]:
    return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]


def markdown_table(result: dict[str, object]) -> str:
    """Per kind and variant: held-out and public figures, mean ± std; ε per stage."""
    s, cfg = result["summary"], result["config"]  # type: ignore[index]
    lines = [f"Held-out = pairwise accuracy on each client's own held-out split (disjoint from its validation "
             f"split); public = the server's {cfg['eval_questions']} public questions against all answers. "  # type: ignore[index]
             f"Seeds {cfg['seeds']}, mean ± std over seeds of the kind's two clients' mean; ε = {cfg['epsilon']} "  # type: ignore[index]
             f"with {cfg['reserve']:.0%} reserved for personalisation; wall {result['wall_s']} s.", "",  # type: ignore[index]
             "| kind | variant | held-out | public top-1 | public pairwise |", "|---|---|---|---|---|"]
    for kind in KINDS:
        for variant in VARIANTS:
            cells = [f"{m:.3f} ± {d:.3f}" for m, d in (s[kind][variant][k] for k in  # type: ignore[index]
                                                        ("heldout", "public_top1", "public_pairwise"))]
            lines.append(f"| {kind} | {variant} | " + " | ".join(cells) + " |")
    lines += ["", "| kind | ε after federation | after replacement | after distillation | components replaced "
              "| distilled model kept (its held-out) | personalised − max(local-only, global) held-out | target |",
              "|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        led = s[kind]["ledger"]  # type: ignore[index]
        gap = s[kind]["target"]["personalised_minus_best"][0]  # type: ignore[index]
        lines.append(f"| {kind} | {led['epsilon_federation'][0]:.3f} | {led['epsilon_after_replace'][0]:.3f} | "
                     f"{led['epsilon_after_distill'][0]:.3f} | {led['replaced'][0]:.2f} of {led['components'][0]:.1f} | "
                     f"{led['distillation_kept'][0]:.2f} ({led['heldout_distilled'][0]:.3f}) | "
                     f"{gap:+.3f} | {'met' if gap >= 0 else 'missed'} |")
    lines += ["", f"Audits passed: {result['audits_passed']} of {result['audits']}; largest ε: {result['epsilon_max']}; "
              f"personalisations refused (validation split below the minimum; the client keeps its own model): "
              f"{result['refusals']}."]
    return "\n".join(lines)


def write_outputs(result: dict[str, object], out: Path) -> list[Path]:
    """JSON, Markdown and an SVG of held-out accuracy per kind and variant."""
    from benchmarks.svg_bars import grouped_bars

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "personalise.json", out / "personalise.md", out / "personalise.svg"]
    paths[0].write_text(json.dumps(result, indent=2, sort_keys=True))
    paths[1].write_text(markdown_table(result) + "\n")
    s = result["summary"]  # type: ignore[index]
    panels = [(f"{m}", list(KINDS), {v: [tuple(s[k][v][m]) for k in KINDS] for v in VARIANTS})  # type: ignore[index]
              for m in ("heldout", "public_pairwise")]
    paths[2].write_text(grouped_bars(panels))  # type: ignore[arg-type]
    return paths
