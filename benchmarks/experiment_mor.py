"""``fedsecure experiment mor``: does routing the clients' rewards align the policy better
than its competitors? (issue 13, item 6.)

Per seed, one federation of six clients (two per kind, Dirichlet(0.5) shares, DP-SGD at
the same ε, FedCola's collaboration: :func:`benchmarks.bench_collaboration.federated_clients`)
produces the client reward models; the same federation with plain FedAvg produces the
FedAvg'd reward model (its image+text client); the server trains a reward model of its own
on its public preference set alone. Every method then starts from the same base policy
(vision tower pretrained on public images, SFT on the seed set), the same prompts and
seeds, and runs ``steps`` GRPO steps in process with its reward (and, as the demo's ALIGN
stage does, the task's label-free answer-form check: a completion out of form ranks last):

- ``start``: no GRPO; ``text_only``: no policy at all, the most common training answer
  for the question text (what never looking at the image reaches); ``oracle``: exact match against the pool's answers (upper bound);
  ``supervised``: no GRPO, the same pool answers taught directly (SFT): what the policy can
  represent from the labels the oracle rewards, the reference the oracle's gain is read against;
- ``routed``: the router (fit on the public preference set) over the six clients;
- ``uniform``, ``min``, ``max``, ``expert`` (FedGRPO-style competence), ``table``
  (per-question-type weights fit on the same preference set; handed the type);
- ``single:<client>``: each client alone; ``fedavg``: the FedAvg'd model alone;
  ``server_only``: the server's own model alone;
- ``routed/gated``, ``uniform/gated``: the same fusion, but GRPO only on the question
  types where the fused reward, measured by the server on its labelled router questions
  before any step (top-1 over all answers), beats the starting policy's own accuracy on
  them — a judge worse than the student on a type is not learned from;
- ``…/unscaled``: the same reward, GRPO advantages not divided by the group's reward std
  (Dr. GRPO): a judge unsure between two answers makes a small update, not a full one;
- ``…/plain``: the same reward, plain GRPO — without the likelihood of each group's best
  completion in the loss (``best_nll`` 0; :class:`~server.align.engine.grpo_loss.GRPOLossConfig`):
  what the term adds, on the same base (run when named in ``--methods``, not by default);
- robustness: ``routed+random``, ``uniform+random``, ``routed+inverted``,
  ``uniform+inverted`` — the six clients plus one that returns random (inverted) scores.

Methods that use no client reward model (``start``, ``text_only``, ``oracle``,
``supervised``) run without the federations: ``--methods start,oracle,supervised``
measures the policy's ceiling alone, in minutes.

Labels: the pool's answers are used only by the oracle, the supervised reference and for evaluation; the router,
expert selection and table learn only from client scores on the public preference set.
Simplification (stated in the results): the clients' final reward models are used for the
whole alignment, rather than each round's (the replay the issue allows).

Reported per method, mean ± std over seeds: exact match on ``eval_questions`` fixed
easy-VQA test questions (paired across methods), per question type and type-averaged (the
headline: three quarters of the questions are yes/no, answerable without the image); reward
quality before GRPO (top-1 of the fused score over all 13 answers, top-1 within the right
type, and the right type first, on ``quality_per_type`` held-out public questions per type);
GRPO scores the same (image, question, completion) many times across methods: each frozen
client model's score is memoised (a pure function of the triple), which changes no figure; router
weights per question type; ε per client (the accountant the audit uses). Writes JSON, a
Markdown table and an SVG plot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.easyvqa.models import reward_config_on_backbone as easyvqa_on_backbone
from fedsecure.progress import track
from server.align.engine.recipe import GRPO_RECIPE
from tasks.easyvqa import TASK as EASYVQA

log = logging.getLogger("fedsecure.experiment.mor")

BASE_METHODS = ("start", "text_only", "oracle", "supervised", "routed", "uniform", "min", "max", "expert", "table", "fedavg", "server_only")
GATED = ("routed/gated", "uniform/gated")
UNSCALED = ("oracle/unscaled", "routed/unscaled", "uniform/unscaled")
# run when named (--methods): the full comparison already fills the 90 minutes it is allowed
PLAIN = ("oracle/plain", "routed/plain")
ROBUSTNESS = ("routed+random", "uniform+random", "routed+inverted", "uniform+inverted")
TYPES = ("color", "shape", "yesno")
NO_FEDERATION = ("start", "text_only", "oracle", "supervised")  # methods that need no client reward model


@dataclass(frozen=True)
class MorExperimentConfig:
    """The experiment's scale (defaults: the policy schedule of issue 24 — 64 prompts per
    step; 80 steps is where the exact-match oracle's reward levels off)."""

    backbone: Path
    out: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ()  # empty: every method
    steps: int = 80
    prompts_per_step: int = GRPO_RECIPE.prompts_per_step
    group_size: int = GRPO_RECIPE.group_size
    learning_rate: float = GRPO_RECIPE.learning_rate
    best_nll: float = GRPO_RECIPE.best_nll  # GRPOLossConfig.best_nll (0: plain GRPO)
    eval_questions: int = 2000
    pool_size: int = 1500  # GRPO's public prompts (and the supervised reference's), balanced by type
    quality_per_type: int = 300
    router_per_type: int = 100
    rounds: int = 3
    local_steps: int = 100
    pairs_per_client: int = 1500
    epsilon: float = 8.0
    server_steps: int = 300
    # the supervised reference: epochs of SFT over the GRPO pool's labelled questions, at a
    # learning rate a third of the warm start's (measured: on 1,500 pool questions, 4 epochs
    # at 3e-4 reach 0.82 type-averaged, seed 0; more epochs move it by a few points either way)
    supervised_epochs: int = 4
    supervised_learning_rate: float = 3e-4
    # the warm start's questions for these groups instead of the alignment job's per-type
    # default (server.align.engine.job.AlignmentSettings.seed_per_group)
    seed_per_group: tuple[tuple[str, int], ...] = ()
    device: str = "cpu"
    threads: int = 2

    def __post_init__(self) -> None:
        if self.steps < 0 or self.pool_size < 3 or self.supervised_epochs < 1 or not self.supervised_learning_rate > 0:
            raise ValueError("need steps >= 0, pool_size >= 3 (one per type), supervised_epochs >= 1 and a "
                             "positive supervised_learning_rate")


def _method_rank(method: str) -> tuple[int, str]:
    """Where ``method`` stands in :func:`all_methods`' order (single clients by name)."""
    fixed = (*BASE_METHODS, *GATED, *UNSCALED, *PLAIN)
    if method in fixed:
        return fixed.index(method), ""
    if method.startswith("single:"):
        return len(fixed), method
    return len(fixed) + 1 + (ROBUSTNESS.index(method) if method in ROBUSTNESS else len(ROBUSTNESS)), method


def all_methods(clients: Sequence[str]) -> tuple[str, ...]:
    """Every method of the comparison, single clients included (not the ``/plain``
    variants: they run when named)."""
    return (*BASE_METHODS, *GATED, *UNSCALED, *(f"single:{c}" for c in clients), *ROBUSTNESS)


def needs_federation(method: str) -> bool:
    """Whether ``method`` uses the clients' reward models: the start, the text-only prior,
    the exact-match oracle and the supervised reference (the policy's ceiling, measured
    alone with ``--methods start,oracle,supervised``) do not, and then neither federation
    is run."""
    return method.split("/")[0] not in NO_FEDERATION


def uses_clients(methods: Sequence[str]) -> bool:
    """Whether a run of ``methods`` (empty: every method) trains the client reward models,
    and so needs a backbone."""
    return not methods or any(needs_federation(m) for m in methods)


def _modalities(kind: str) -> tuple:  # type: ignore[type-arg]
    from fedsecure.types import Modality

    return {"image_text": (Modality.IMAGE_TEXT,), "image": (Modality.IMAGE,), "text": (Modality.TEXT,)}[kind]


def _channel(model: object, tokenizer: object, memo: dict[tuple[bytes, str, str], float]):  # type: ignore[no-untyped-def]
    """A client answering with its (frozen, eval-mode) model; ``memo`` holds the scores of
    triples it has already scored, keyed by the image's digest, the question and the
    completion (item and prompt ids are random per exchange, so they cannot be the key)."""
    import hashlib

    from fedsecure.models.scoring import score_items
    from fedsecure.types import Score

    def score(exchange, items, timeout):  # type: ignore[no-untyped-def]
        keys = [(hashlib.blake2b(i.image_png, digest_size=16).digest(), i.question, i.completion) for i in items]
        todo = {k: i for k, i in zip(keys, items, strict=True) if k not in memo}
        if todo:
            memo.update(zip(todo, score_items(model, tokenizer, list(todo.values())), strict=True))  # type: ignore[arg-type]
        return [Score(i.item_id, memo[k]) for i, k in zip(items, keys, strict=True)]
    return score


def _adversary(kind: str, honest, seed: int):  # type: ignore[no-untyped-def]
    """A client that answers with random scores, or with an honest model's scores negated."""
    from fedsecure.types import Score

    rng = random.Random(seed)

    def score(exchange, items, timeout):  # type: ignore[no-untyped-def]
        if kind == "random":
            return [Score(i.item_id, rng.gauss(0.0, 1.0)) for i in items]
        return [Score(s.item_id, -s.value) for s in honest(exchange, items, timeout)]
    return score


def _server_model(cfg: MorExperimentConfig, seed: int, tokenizer: object) -> object:
    """The server's own image+text reward model, trained on its public preference set only."""
    from client_sdk.dp_training import train_nonprivate
    from fedsecure.data.preferences import records_from_pairs
    from fedsecure.models.encoding import encode_records
    from fedsecure.models.reward import build_reward_model
    from tasks.easyvqa.data import answers
    from tasks.easyvqa.pairs import build_pairs

    torch.manual_seed(seed)
    model, _ = build_reward_model(easyvqa_on_backbone("image_text", cfg.backbone, federation_seed=seed))
    pairs = build_pairs(_router_records(cfg), seed=seed)
    train_nonprivate(model=model, data=encode_records(records_from_pairs(pairs, answer_set=answers()), tokenizer, answers=answers()),
                     steps=cfg.server_steps, learning_rate=3e-3, batch_size=64, seed=seed)
    return model


def _router_records(cfg: MorExperimentConfig) -> list[object]:
    """The server's public router questions, the same number of each type."""
    from fedsecure.task import balanced_by_group
    from tasks.easyvqa.shares import server_part

    return balanced_by_group(server_part("router"), cfg.router_per_type)  # type: ignore[return-value]


def _fused_top1(reward, prompts) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Reward quality per question type: top-1 of the fused score over all answers, top-1
    among the answers of the question's type, and how often the top answer has the right
    type (what an image-only or text-only model can know, issue 24 item 4)."""
    from server.align.combiners import StepScores
    from server.align.fusion import normalise_scores
    from tasks.easyvqa.data import answer_type, answers

    vocab = answers()
    expanded = [p for p in prompts for _ in vocab]
    # Every client to the deadline: a measurement of the fusion, not a step (the grace once
    # cut the slower image clients here and the first method's figures were the text clients').
    unique, prompt_of, raw, answered, _ = reward.collect(expanded, list(vocab) * len(prompts), grace=False)
    groups = tuple(reward.group_of(p) for p in unique) if reward.group_of is not None else ()
    fused, covered = reward.combiner(StepScores(z=normalise_scores(raw, answered), answered=answered,
                                                prompt_of=torch.tensor(prompt_of),
                                                features=reward.prompt_features(unique), groups=groups))
    fused = torch.where(covered, fused, float("-inf")).reshape(len(prompts), len(vocab))
    types = [answer_type(a) for a in vocab]
    within_type = {t: torch.tensor([ty == t for ty in types]) for t in set(types)}
    hits: dict[str, dict[str, list[float]]] = {"top1_all": {}, "top1_type": {}, "type_first": {}}
    for p, row in zip(prompts, fused, strict=True):
        t = answer_type(p.answer)
        top = int(row.argmax())
        within = within_type[t]
        hits["top1_all"].setdefault(t, []).append(float(vocab[top] == p.answer))
        hits["top1_type"].setdefault(t, []).append(
            float(vocab[int(torch.where(within, row, float("-inf")).argmax())] == p.answer))
        hits["type_first"].setdefault(t, []).append(float(types[top] == t))
    out = {f"{m}.{t}": statistics.fmean(v) for m, by in hits.items() for t, v in by.items()}
    for m, by in hits.items():
        out[m] = statistics.fmean(statistics.fmean(v) for v in by.values())  # type-averaged
    out["questions_per_type"] = min(len(v) for v in hits["top1_all"].values())
    return out


def _judged_pool(reward, router, prefs, pool, policy, processor, cfg: MorExperimentConfig, seed: int,
                 out: dict[str, object]):  # type: ignore[no-untyped-def]
    """The pool restricted to the question types where the fused reward's top-1 on the
    labelled router questions beats the starting policy's greedy accuracy on them."""
    from server.align.engine.prompts import vqa_prompts
    from server.align.engine.vqa_eval import evaluate_policy
    from server.align.router import fit_router
    from server.align.preferences import score_preferences
    from tasks.easyvqa.data import answer_type

    if router is not None:  # fit as the stage's first step would, so the judge measured is the one used
        fit_router(router, score_preferences(reward, prefs), seed=seed)
    questions = vqa_prompts(_router_records(cfg), processor=processor)
    judge = _fused_top1(reward, questions)
    student = evaluate_policy(policy, questions).by_type
    kept = sorted(t for t in student if judge.get(f"top1_all.{t}", 0.0) > student[t])
    out["gate"] = {"judge": {t: round(judge.get(f"top1_all.{t}", float("nan")), 3) for t in student},
                   "student": {t: round(v, 3) for t, v in student.items()}, "kept": kept}
    log.info("judge gate: judge %s, student %s -> GRPO on %s", out["gate"]["judge"], out["gate"]["student"], kept)
    return [p for p in pool if answer_type(p.answer) in kept]


def _run_method(method: str, *, cfg: MorExperimentConfig, seed: int, base: Path, roster_models, fedavg_model,
                server_model, tokenizer, test, quality, prompt_pool, text_only,
                work: Path, memos: dict[str, dict]) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from fedsecure.models.policy_vlm import encode_answer, load_policy
    from server.align.engine.devices import select_placement
    from server.align.engine.grpo import GRPOConfig, GRPOEngine
    from server.align.engine.grpo_loss import GRPOLossConfig
    from server.align.engine.policy import Policy, PolicySetup
    from server.align.engine.rollouts import SamplingConfig
    from server.align.engine.sft import SFTConfig, sft_warm_start
    from server.align.engine.vqa_eval import (
        evaluate_policy,
        evaluate_text_only,
        exact_match_reward,
        task_answer_form,
    )
    from server.align.combiners import (
        ExpertSelection,
        Extreme,
        LookupTable,
        Routed,
        Uniform,
    )
    from server.align.features import reference_features
    from server.align.reward import MixtureReward, ScoringClient
    from server.align.router import Router
    from server.align.preferences import PreferenceSet, score_preferences
    from server.align.stage import AlignStage, AlignStageConfig

    started = time.monotonic()
    model, processor = load_policy(base)
    name, *flags = method.split("/")
    if set(flags) - {"gated", "unscaled", "plain"}:
        raise ValueError(f"unknown variant in {method!r}: /gated, /unscaled and /plain exist")
    if method == "text_only":
        ev = evaluate_text_only(test(processor), text_only)
        return {"accuracy": ev.accuracy, "by_type": ev.by_type, "seconds": round(time.monotonic() - started, 1)}
    policy = Policy.for_vlm(model, processor, setup=PolicySetup(adapter="full", freeze_vision_tower=True),
                            placement=select_placement(cfg.device))
    test_prompts, pool = test(processor), prompt_pool(processor)
    if method == "supervised":
        # Labels as targets instead of rewards: one cross-entropy step per answer, where GRPO
        # learns only from groups whose sampled answers differ in reward. Tower frozen (above).
        losses = sft_warm_start(model, prompts=pool, targets=[encode_answer(processor, p.answer or "") for p in pool],
                                pad_id=processor.tokenizer.pad_token_id,
                                config=SFTConfig(epochs=cfg.supervised_epochs, learning_rate=cfg.supervised_learning_rate,
                                                 seed=seed))
        ev = evaluate_policy(policy, test_prompts)
        return {"accuracy": ev.accuracy, "by_type": ev.by_type, "sft_loss": [round(x, 4) for x in losses],
                "seconds": round(time.monotonic() - started, 1)}
    if method == "start":
        ev = evaluate_policy(policy, test_prompts)
        return {"accuracy": ev.accuracy, "by_type": ev.by_type, "seconds": round(time.monotonic() - started, 1)}
    shutil.rmtree(work, ignore_errors=True)
    engine = GRPOEngine(policy=policy, config=GRPOConfig(
        group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step, learning_rate=cfg.learning_rate, seed=seed,
        loss=GRPOLossConfig(beta=0.0, scale_rewards="unscaled" not in flags,
                            best_nll=0.0 if "plain" in flags else cfg.best_nll), sampling=SamplingConfig(temperature=1.0, max_new_tokens=4)),
        # every method with the task's label-free format check, as the demo's ALIGN stage has it
        checkpoint_dir=work, checkpoint_every=1, answer_form=task_answer_form(EASYVQA))
    out: dict[str, object] = {}
    if name == "oracle":
        for _ in range(cfg.steps):
            engine.step(engine.sample_prompts(pool), exact_match_reward)
        out["reward_quality"] = {"top1_all": 1.0}
    else:
        gated = "gated" in flags
        base_method, _, extra = name.partition("+")
        if base_method.startswith("single:"):
            name = base_method.split(":", 1)[1]
            roster = [ScoringClient(name, _modalities(roster_models[name][0]),
                                    _channel(*roster_models[name][1:], memos.setdefault(name, {})))]
        elif base_method == "fedavg":
            roster = [ScoringClient("fedavg", _modalities("image_text"),
                                    _channel(fedavg_model, tokenizer, memos.setdefault("fedavg", {})))]
        elif base_method == "server_only":
            roster = [ScoringClient("server", _modalities("image_text"),
                                    _channel(server_model, tokenizer, memos.setdefault("server", {})))]
        else:
            roster = [ScoringClient(n, _modalities(k), _channel(m, t, memos.setdefault(n, {})))
                      for n, (k, m, t) in roster_models.items()]
        if extra:
            honest = roster[0].scorer
            roster.append(ScoringClient(extra, _modalities("image_text"), _adversary(extra, honest, seed)))
        features = reference_features(policy)
        router = Router(feature_dim=int(features(pool[:1]).shape[1]), clients=len(roster)) \
            if base_method == "routed" else None
        combiner = {"routed": lambda: Routed(router), "min": lambda: Extreme("min"),
                    "max": lambda: Extreme("max")}.get(base_method, Uniform)()
        reward = MixtureReward(clients=roster, combiner=combiner, features=features, deadline_s=600.0,
                               group_of=lambda p: p.group or "other")
        prefs = PreferenceSet.from_records(_router_records(cfg), processor=processor, task=EASYVQA)
        if base_method in ("expert", "table"):
            data = score_preferences(reward, prefs)
            reward.combiner = (ExpertSelection.fit(data) if base_method == "expert"
                               else LookupTable.fit(data, prefs.groups))
        if gated:
            pool = _judged_pool(reward, router, prefs, pool, policy, processor, cfg, seed, out)
        if pool:  # a gate that trusts the judge on no type leaves the start as it is
            stage = AlignStage(engine=engine, reward=reward, pool=pool, monitor=[], router=router,
                               preferences=prefs if router is not None else None,
                               config=AlignStageConfig(steps_per_round=cfg.steps, max_skipped_steps=cfg.steps))
            result = stage.run_round(0)  # the router (if any) is fit first, on the preference set
            if router is not None:
                out["router_fit"], out["router_weights"] = result.router_fit, result.router_weights
            out["skipped"], out["left_out"] = result.skipped, result.left_out
        # Reward quality of this method's fused score: the client models, the router and the
        # (frozen) prompt features did not change during GRPO, so this is the reward GRPO used.
        out["reward_quality"] = _fused_top1(reward, quality(processor))
        reward.close()
    ev = evaluate_policy(policy, test_prompts)
    shutil.rmtree(work, ignore_errors=True)
    return {"accuracy": ev.accuracy, "by_type": ev.by_type, **out, "seconds": round(time.monotonic() - started, 1)}


def _one_seed(cfg: MorExperimentConfig, seed: int) -> dict[str, object]:
    from benchmarks.bench_collaboration import (
        CLIENTS,
        KIND_OF,
        CollaborationConfig,
        federated_clients,
    )
    from fedsecure.data.preferences import records_from_pairs
    from fedsecure.models.encoding import encode_records
    from benchmarks.bench_collaboration import reward_config
    from fedsecure.models.reward import tokenizer_for
    from fedsecure.privacy.accountant import epsilon
    from fedsecure.task import balanced_by_group
    from server.align.engine.job import AlignmentSettings, prepare_base
    from server.align.engine.job import prompt_pool as balanced_pool
    from server.align.engine.prompts import vqa_prompts
    from server.align.engine.vqa_eval import eval_prompts, text_only_answers
    from tasks.easyvqa.data import answers, load_records
    from tasks.easyvqa.shares import client_pairs, server_part

    started = time.monotonic()
    collab = CollaborationConfig(backbone=cfg.backbone, seeds=(seed,), rounds=cfg.rounds, local_steps=cfg.local_steps,
                                 pairs_per_client=cfg.pairs_per_client, epsilon=cfg.epsilon, threads=cfg.threads)
    methods = cfg.methods or all_methods(CLIENTS)
    clients, eps, tok = [], {}, None
    if uses_clients(methods):
        # the backbone's own tokenizer: the models below are built on it (ids are its)
        tok = tokenizer_for(reward_config(EASYVQA, "image_text", cfg.backbone))  # type: ignore[arg-type]
        encoded = {c: encode_records(records_from_pairs(client_pairs(name=c, clients=list(CLIENTS), kind=KIND_OF[c],
                                                                     alpha=collab.alpha, seed=seed,
                                                                     limit=cfg.pairs_per_client), answer_set=answers()),
                                     tok, answers=answers()) for c in CLIENTS}
        clients, _ = federated_clients(collab, "fedcola", seed, encoded)
        eps = {c.name: round(epsilon(c.history, delta=collab.delta), 4) for c in clients}
        log.info("seed %d: FedCola federation done in %.0f s, ε %s", seed, time.monotonic() - started, eps)
    fedavg_model = None
    if "fedavg" in methods:
        fedavg_model = next(c.model for c in federated_clients(collab, "fedavg", seed, encoded)[0]
                            if c.kind == "image_text")
    server_model = _server_model(cfg, seed, tok) if "server_only" in methods else None
    base = prepare_base(AlignmentSettings(out=cfg.out / f"seed-{seed}", seed=seed, device=cfg.device,
                                          seed_per_group=cfg.seed_per_group), task=EASYVQA)
    roster_models = {c.name: (c.kind, c.model, tok) for c in clients}

    cache: dict[str, list[object]] = {}  # every method loads the same base: one encoding per seed

    def cached(key: str, make):  # type: ignore[no-untyped-def]
        def get(processor):  # type: ignore[no-untyped-def]
            if key not in cache:
                cache[key] = make(processor)
            return cache[key]
        return get

    test = cached("test", lambda p: eval_prompts(p, task=EASYVQA, limit=cfg.eval_questions, seed=0))  # the same for all: paired
    quality = cached("quality", lambda p: vqa_prompts(balanced_by_group(server_part("reward_eval"), cfg.quality_per_type),
                                                      processor=p))
    prompt_pool = cached("pool", lambda p: vqa_prompts(balanced_pool(EASYVQA, cfg.pool_size), processor=p))

    memos: dict[str, dict] = {}  # per scorer: the same frozen model scores a triple once per seed
    text_only = text_only_answers(load_records("train"))  # the whole train split, as the published figures
    rows: dict[str, object] = {}
    for method in track(methods, desc=f"seed {seed}", unit="method"):
        rows[method] = _run_method(method, cfg=cfg, seed=seed, base=base, roster_models=roster_models,
                                   fedavg_model=fedavg_model, server_model=server_model, tokenizer=tok, test=test,
                                   quality=quality, prompt_pool=prompt_pool, text_only=text_only,
                                   work=cfg.out / f"seed-{seed}" / "grpo", memos=memos)
        log.info("seed %d, %s: accuracy %.3f %s (%.0f s)", seed, method, rows[method]["accuracy"],  # type: ignore[index]
                 {k: round(v, 2) for k, v in rows[method]["by_type"].items()}, rows[method]["seconds"])  # type: ignore[index, union-attr]
    return {"methods": rows, "epsilon": eps, "seconds": round(time.monotonic() - started, 1)}


def run_experiment(cfg: MorExperimentConfig) -> dict[str, object]:
    """Every seed, then means ± std and paired differences against ``routed``."""
    torch.set_num_threads(cfg.threads)
    started = time.monotonic()
    per_seed = {}
    for s in cfg.seeds:
        per_seed[s] = _one_seed(cfg, s)
        cfg.out.mkdir(parents=True, exist_ok=True)  # a long run leaves each finished seed behind
        (cfg.out / f"seed-{s}.json").write_text(json.dumps(per_seed[s], indent=1, sort_keys=True))
    config = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    if not uses_clients(cfg.methods):
        config["backbone"] = None  # unused: no client reward model was trained (runs in any folder merge)
    return summarise(config, per_seed, wall_s=round(time.monotonic() - started, 1))


def merge_seeds(results: Sequence[dict[str, object]]) -> dict[str, object]:
    """One result from runs of the same configuration on different seeds — one process
    per seed, so that the seeds of a long experiment run side by side on the cores, each
    with one thread, and a run keeps what it finished. Refused if anything but the seeds,
    the threads and the output folder differs, or if a seed repeats. ``wall_s`` is the
    longest run's (they are meant to run at once); ``runs_wall_s`` lists each."""
    if not results:
        raise ValueError("nothing to merge")

    def same(r: dict[str, object]) -> dict[str, object]:
        # threads change a run's speed and out its folder, never its figures
        return {k: v for k, v in r["config"].items() if k not in ("seeds", "threads", "out")}  # type: ignore[attr-defined]
    if any(same(r) != same(results[0]) for r in results):
        raise ValueError("the runs differ in more than their seeds")
    per_seed = {int(s): r for res in results for s, r in res["per_seed"].items()}  # type: ignore[attr-defined]
    if len(per_seed) != sum(len(res["per_seed"]) for res in results):  # type: ignore[arg-type]
        raise ValueError("a seed was run twice")
    if len({tuple(r["methods"]) for r in per_seed.values()}) != 1:  # type: ignore[index]
        raise ValueError("the runs differ in their methods")
    walls = [float(r["wall_s"]) for r in results]  # type: ignore[arg-type]
    merged = summarise({**results[0]["config"], "seeds": sorted(per_seed)},  # type: ignore[dict-item]
                       {s: per_seed[s] for s in sorted(per_seed)}, wall_s=max(walls))
    return {**merged, "runs_wall_s": walls}


def summarise(config: dict[str, object], per_seed: dict[int, dict[str, object]], *,
              wall_s: float) -> dict[str, object]:
    """Means ± std over ``per_seed`` (seed → that seed's methods), paired differences
    against ``routed`` with a verdict, and the oracle's and routed's gains over the start."""
    seeds = list(per_seed)
    # The order the methods were asked for, else the comparison's own (a result read back
    # from JSON has its keys sorted).
    present = list(per_seed[seeds[0]]["methods"])  # type: ignore[call-overload]
    asked = list(config.get("methods") or ())  # type: ignore[call-overload]
    methods = asked if sorted(asked) == sorted(present) else sorted(present, key=_method_rank)

    def stat(values: list[float]) -> list[float]:
        return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]

    def tmean(row: dict) -> float:  # type: ignore[type-arg]
        return statistics.fmean(row["by_type"].get(t, math.nan) for t in TYPES)

    summary: dict[str, dict[str, object]] = {}
    for m in methods:
        rows = [per_seed[s]["methods"][m] for s in seeds]  # type: ignore[index]
        entry: dict[str, object] = {"accuracy": stat([r["accuracy"] for r in rows]),
                                    "type_mean": stat([tmean(r) for r in rows])}
        for t in TYPES:
            entry[t] = stat([r["by_type"].get(t, math.nan) for r in rows])
        if all("reward_quality" in r for r in rows):
            for q in ("top1_all", "top1_type", "type_first"):
                if all(q in r["reward_quality"] for r in rows):
                    entry[f"reward_{q}"] = stat([r["reward_quality"][q] for r in rows])
        if "routed" in methods and m != "routed":
            # Paired over seeds on the same test questions; the headline is type-averaged.
            diffs = [tmean(per_seed[s]["methods"]["routed"]) - tmean(per_seed[s]["methods"][m])  # type: ignore[index]
                     for s in seeds]
            mean, std = stat(diffs)
            entry["routed_minus"] = [mean, std]
            # One seed gives one difference and no spread: no verdict can be drawn from it.
            entry["verdict"] = ("one seed" if len(seeds) < 2 else
                                "routed beats" if mean > std and mean > 0 else
                                "routed loses" if -mean > std and mean < 0 else "tie")
        summary[m] = entry
    gains: dict[str, object] = {}
    if "oracle" in summary and "start" in summary:
        against = [m for m in ("oracle", "supervised", "routed") if m in summary]
        for key in ("type_mean", *TYPES, "accuracy"):
            start = summary["start"][key][0]  # type: ignore[index]
            gains[key] = {m: round(summary[m][key][0] - start, 4) for m in against}  # type: ignore[index]
        per_seed_oracle = {s: {t: per_seed[s]["methods"]["oracle"]["by_type"][t]  # type: ignore[index]
                               - per_seed[s]["methods"]["start"]["by_type"][t] for t in TYPES}  # type: ignore[index]
                           for s in seeds}
        gains["oracle_per_seed"] = {str(s): {t: round(v, 4) for t, v in g.items()} for s, g in per_seed_oracle.items()}

        def share(of: str, over: str) -> float | None:
            whole = gains["type_mean"][over]  # type: ignore[index]
            return round(gains["type_mean"][of] / whole, 3) if whole > 0 else None  # type: ignore[index]
        if "routed" in summary:
            gains["routed_share_of_oracle_gain"] = share("routed", "oracle")
        if "supervised" in summary:
            # how much of what the labels can teach this policy GRPO's exact-match reward reaches
            gains["oracle_share_of_supervised_gain"] = share("oracle", "supervised")
    return {"config": config, "summary": summary, "gains": gains,
            "per_seed": {str(s): r for s, r in per_seed.items()}, "wall_s": wall_s}


def markdown_table(result: dict[str, object]) -> str:
    """Methods × (test accuracy, per type, reward quality, routed − method, verdict)."""
    cfg, summary = result["config"], result["summary"]  # type: ignore[index]
    f = lambda ms: "n/a" if ms is None else f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731
    lines = [f"Exact match on {cfg['eval_questions']} fixed easy-VQA test questions after {cfg['steps']} GRPO "  # type: ignore[index]
             f"steps ({cfg['prompts_per_step']} prompts × {cfg['group_size']}); seeds {cfg['seeds']}, mean ± std; "  # type: ignore[index]
             "type mean = mean of colour, shape and yes/no (the headline; routed − method and the verdict are "
             "on it, paired over seeds); reward quality, before GRPO, on "
             f"{cfg['quality_per_type']} held-out public questions per type: top-1 of the fused score over all "  # type: ignore[index]
             f"13 answers / within the right type / right type first (type-averaged); wall {result['wall_s']} s.", "",
             "| method | type mean | accuracy | colour | shape | yes/no | reward top-1 all / type / type first "
             "| routed − method | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]

    def quality(e: dict) -> str:  # type: ignore[type-arg]
        got = [e.get(f"reward_{q}") for q in ("top1_all", "top1_type", "type_first")]
        return " / ".join(f"{v[0]:.2f}" for v in got if v is not None) or "n/a"
    for m, e in summary.items():  # type: ignore[union-attr]
        lines.append(f"| {m} | {f(e['type_mean'])} | {f(e['accuracy'])} | {f(e['color'])} | {f(e['shape'])} | "
                     f"{f(e['yesno'])} | {quality(e)} | {f(e.get('routed_minus'))} | {e.get('verdict', '')} |")
    gains = result.get("gains") or {}
    if gains:
        g = gains  # type: ignore[assignment]
        lines += ["", "Gain over the start (means over seeds): " + "; ".join(
            f"{k} " + ", ".join(f"{m} {v:+.3f}" for m, v in g[k].items())  # type: ignore[index, union-attr]
            for k in ("type_mean", *TYPES, "accuracy")) + "." + "".join(
            f" {label}: {g[key]}." for key, label in (  # type: ignore[index]
                ("routed_share_of_oracle_gain", "Routed's share of the oracle's type-averaged gain"),
                ("oracle_share_of_supervised_gain", "The oracle's share of the supervised reference's gain"))
            if key in g)]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, object], out: Path) -> list[Path]:
    """mor.json, mor.md and mor.svg (accuracy per question type, per method)."""
    from benchmarks.svg_bars import grouped_bars

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "mor.json", out / "mor.md", out / "mor.svg"]
    paths[0].write_text(json.dumps(result, indent=2, sort_keys=True))
    paths[1].write_text(markdown_table(result))
    summary = result["summary"]  # type: ignore[index]
    groups = ["type mean", "all", *TYPES]
    series = {m: [tuple(e["type_mean"]), tuple(e["accuracy"]), *(tuple(e[t]) for t in TYPES)]  # type: ignore[union-attr]
              for m, e in summary.items()  # type: ignore[union-attr]
              if not m.startswith("single:")}
    paths[2].write_text(grouped_bars([("test exact match (mean ± std over seeds)", groups, series)],
                                     panel_width=900))
    return paths
