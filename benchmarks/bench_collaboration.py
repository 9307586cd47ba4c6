"""``fedsecure bench collaboration``: FedCola's module table on our task (issue 12, item 6).

Six clients — two of each kind (image+text, image-only, text-only) — on Dirichlet(0.5)
label-skewed shares, DP-SGD at the same ε for every federated row, the same data, seeds
and rounds. Rows (``ROWS``):

- ``random_backbone``: frozen random stacks, attention adapters averaged per stack (the
  system before the pretrained backbone);
- ``local_only``: the pretrained backbone, no collaboration;
- ``fedavg``: plain FedAvg — every trainable parameter (attention and MLP adapters, heads,
  fusion layer) averaged across the clients holding a parameter of that name and shape,
  weighted by pairs (the definition the alignment issue reuses);
- ``attention``: FedCola's attention-only in-modality aggregation (attention B per stack
  across every kind holding it; everything else local);
- ``compensation``: + MLP adapters averaged among same-kind clients, applied with
  FedCola's coefficient c (``w ← w + c·(mean − w)``, :mod:`server.planners.compensation`);
- ``fedcola``: + the gate: uni-modal clients train a zero-initialised gate on the other
  stack's previous attention mean and merge it (:mod:`fedsecure.models.gate`);
- ``fedcola_heads``: + heads and fusion layers among same-kind clients, with the MLPs'
  coefficient (the server's ``[training] share_heads``);
- ``central``: a reference never deployed — one non-private model per kind trained on the
  union of every client's records;
- ``central_dp``: the same union trained under DP-SGD at the clients' ε, batch, clip and
  learning rate (what pooling the data would give if privacy were kept).

Every model is measured on the task's public reward-evaluation questions (the same
number of each type) against every wrong answer the task gives each (easy-VQA: all 13
answers; a free-text task: its wrong sentences) (:mod:`server.planners.quality`), per
question type, mean over the two clients of a kind, then mean ± std over seeds. ``--task``
picks the task (easy-VQA by default). Federated rows run the clients' own DP code
(:class:`client_sdk.dp_training.DPStepper`, noise calibrated by the same accountant) and
exchange adapters through the clients' and the server's own aggregation code, with
plaintext sums standing for what the key holder would decrypt
(:mod:`benchmarks.plain_federation`; CKKS adds ~1e-6 error, tested elsewhere), so the
table isolates the algorithm.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from client_sdk.settings import ClientSettings
from fedsecure.progress import track
from fedsecure.task import Task
from server.settings import ServerSettings

log = logging.getLogger("fedsecure.bench.collaboration")

ROWS = ("random_backbone", "local_only", "fedavg", "attention", "compensation", "fedcola", "fedcola_heads", "central",
        "central_dp")
KINDS = ("image_text", "image", "text")
CLIENTS = ("it-1", "it-2", "img-1", "img-2", "txt-1", "txt-2")
KIND_OF = {"it-1": "image_text", "it-2": "image_text", "img-1": "image", "img-2": "image", "txt-1": "text",
           "txt-2": "text"}
METRICS = ("top1_all", "top1_type", "pairwise", "typed_first")


@dataclass(frozen=True)
class CollaborationConfig:
    """One ablation: rows, seeds, and the federated schedule every row shares."""

    backbone: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    rows: tuple[str, ...] = ROWS
    rounds: int = 3
    # the federation's own defaults (the server's and the clients' settings models)
    local_steps: int = ServerSettings.local_steps
    batch_size: int = ServerSettings.batch_size
    learning_rate: float = ServerSettings.learning_rate
    max_grad_norm: float = ClientSettings.clip
    epsilon: float = ClientSettings.epsilon
    delta: float = ClientSettings.delta
    pairs_per_client: int = 1500
    questions_per_type: int = 300
    central_steps: int = 1000
    alpha: float = ClientSettings.alpha
    threads: int = 2
    task: str = "easyvqa"
    trainable: str = ClientSettings.trainable   # what every model's DP training updates (every row)

    def __post_init__(self) -> None:
        unknown = set(self.rows) - set(ROWS)
        if unknown or not self.rows:
            raise ValueError(f"unknown rows {sorted(unknown)}; choose from {ROWS}")
        if not self.seeds or self.rounds < 1 or self.local_steps < 1 or self.questions_per_type < 1:
            raise ValueError("need at least one seed, round, local step and evaluation question")


@dataclass
class _Client:
    name: str
    kind: str
    model: torch.nn.Module
    train: object
    history: list[tuple[float, float, int]] = field(default_factory=list)


def _weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = math.fsum(weights)
    return sum(t * (w / total) for t, w in zip(tensors, weights, strict=True))  # type: ignore[return-value]


def _params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def _holders(clients: Sequence[_Client], select) -> dict[tuple[str, tuple[int, ...]], list[_Client]]:  # type: ignore[no-untyped-def]
    out: dict[tuple[str, tuple[int, ...]], list[_Client]] = {}
    for c in clients:
        for name, p in _params(c.model).items():
            if select(c, name, p):
                out.setdefault((name, tuple(p.shape)), []).append(c)
    return out


def _average(clients: Sequence[_Client], select) -> None:  # type: ignore[no-untyped-def]
    """FedAvg (a competitor, not our aggregation): set each selected parameter to the
    pairs-weighted mean over the clients holding it (two holders at least)."""
    for (name, _), group in _holders(clients, select).items():
        if len(group) < 2:
            continue
        mean = _weighted_mean([_params(c.model)[name].detach() for c in group], [len(c.train) for c in group])
        for c in group:
            with torch.no_grad():
                p = _params(c.model)[name]
                p.copy_(mean)


@functools.lru_cache(maxsize=4096)
def _sigma(history: tuple[tuple[float, float, int], ...], q: float, steps: int, delta: float, eps: float) -> float:
    # The calibration a client runs (seconds per call with Opacus's fractional RDP orders);
    # clients, rows and seeds with the same sampling history share it.
    from fedsecure.privacy.accountant import calibrate_noise

    return calibrate_noise(list(history), sample_rate=q, steps=steps, delta=delta, target_epsilon=eps)


def _dp_steps(model: torch.nn.Module, data: object, cfg: CollaborationConfig, *, sigma: float, steps: int) -> None:
    """``steps`` DP-SGD steps of the clients' own stepper on ``data`` at noise ``sigma``."""
    from client_sdk.dp_training import DPSettings, DPStepper

    q = cfg.batch_size / len(data)  # type: ignore[arg-type]
    with DPStepper(model=model, settings=DPSettings(max_grad_norm=cfg.max_grad_norm, batch_size=cfg.batch_size),
                   noise_multiplier=sigma, learning_rate=cfg.learning_rate, sample_rate=q) as stepper:
        for _ in range(steps):
            stepper.step(data)  # type: ignore[arg-type]


def _dp_round(client: _Client, cfg: CollaborationConfig, round_: int) -> None:
    q = cfg.batch_size / len(client.train)  # type: ignore[arg-type]
    rounds_left = cfg.rounds - round_ + 1
    sigma = _sigma(tuple(client.history), q, cfg.local_steps * rounds_left, cfg.delta, cfg.epsilon)
    client.history.append((sigma, q, cfg.local_steps))
    _dp_steps(client.model, client.train, cfg, sigma=sigma, steps=cfg.local_steps)


def _central_dp(model: torch.nn.Module, data: object, cfg: CollaborationConfig) -> float:
    """Train ``model`` on ``data`` under DP-SGD at the clients' ε and schedule; the σ used."""
    sigma = _sigma((), cfg.batch_size / len(data), cfg.central_steps, cfg.delta, cfg.epsilon)  # type: ignore[arg-type]
    _dp_steps(model, data, cfg, sigma=sigma, steps=cfg.central_steps)
    return sigma


def _federated(row: str, clients: list[_Client], cfg: CollaborationConfig,
               on_trained: Callable[[int, list[_Client]], None] | None = None) -> dict[str, float]:
    """The rounds of one federated row. Our rows exchange adapters through the code that
    ships (:mod:`benchmarks.plain_federation`); FedAvg, a competitor, averages every
    trainable parameter here."""
    from benchmarks.plain_federation import Participant, apply, aux_for, publish
    from fedsecure.models.gate import attach_gates, merge_gates
    from fedsecure.models.reward import SHARED_ADAPTER
    from server.planners.compensation import stacks_of_kinds

    stacks = stacks_of_kinds(closed_answer_set=_task(cfg).answer_set is not None)
    participants = [Participant(c.name, c.kind, c.model, len(c.train)) for c in clients]  # type: ignore[arg-type]
    published: dict[str, object] = {}
    gates: list[float] = []
    for round_ in range(1, cfg.rounds + 1):
        for c, p in zip(clients, participants, strict=True):
            # a gate only on a uni-modal model (on a free-text task the image kind reads text too)
            other = {"image": "text", "text": "image"}.get(c.kind) if len(stacks[c.kind]) == 1 else None
            gated = row in ("fedcola", "fedcola_heads")
            aux = aux_for(p, published, other_stack=other) if gated and other else None  # type: ignore[arg-type]
            if aux is not None:
                attach_gates(c.model, stack=c.kind, adapter=SHARED_ADAPTER, aux=aux)
            _dp_round(c, cfg, round_)
            if aux is not None:
                gates += merge_gates(c.model).values()
        if on_trained is not None:  # each client's own model, before this round's aggregation
            on_trained(round_, clients)
        if row in ("attention", "compensation", "fedcola", "fedcola_heads", "random_backbone"):
            published = publish(participants, mlp=row != "attention" and row != "random_backbone",
                                heads=row == "fedcola_heads", round_=round_)
            apply(published, participants, stacks_of=stacks)  # type: ignore[arg-type]
        if row == "fedavg":
            _average(clients, lambda c, n, p: p.requires_grad)
    return {"gate_mean_abs": statistics.fmean(abs(g) for g in gates)} if gates else {}


def _task(cfg: CollaborationConfig) -> Task:
    from tasks import get_task

    return get_task(cfg.task)


def reward_config(task: Task, kind: str, backbone: Path | None, **overrides: object) -> object:
    """What a client of ``kind`` builds from a kit sealed for ``task`` (no backbone: random stacks)."""
    from fedsecure.models.reward import RewardModelConfig, config_on_backbone

    sealed = {"answers": tuple(task.answer_set or ()), "vocabulary": tuple(task.vocabulary())}
    if backbone is None:
        return RewardModelConfig(kind=kind, **sealed, **overrides)  # type: ignore[arg-type]
    return config_on_backbone(kind, backbone, **sealed, **overrides)


def restrict(model: torch.nn.Module, trainable: str) -> None:
    """Freeze what the clients' trainable set ``trainable`` leaves out, for the whole run
    (:func:`client_sdk.dp_training.in_trainable_set`)."""
    from client_sdk.dp_training import in_trainable_set

    for name, p in model.named_parameters():
        if not in_trainable_set(name, trainable):
            p.requires_grad_(False)


def eval_batches(kind: str, questions: Sequence[object], tokenizer: object, task: Task,
                 per_batch: int = 20) -> list[tuple[list[object], dict[str, torch.Tensor]]]:
    """The public questions a kind can judge (an image-only model: none of the task's
    question-dependent groups), each with its right answer and every wrong one, as model
    inputs (built once, scored by every model of that kind)."""
    from fedsecure.data.images import load_image
    from fedsecure.models.encoding import encode_items
    from fedsecure.task import wrong_answers

    usable = [q for q in questions if not (kind == "image" and q.group in task.question_groups)]  # type: ignore[attr-defined]
    out = []
    for start in range(0, len(usable), per_batch):
        chunk = usable[start:start + per_batch]
        candidates = [(q.answer, *wrong_answers(task, q)) for q in chunk]  # type: ignore[arg-type, attr-defined]
        images = ([load_image(q.image) for q, c in zip(chunk, candidates, strict=True) for _ in c]  # type: ignore[attr-defined]
                  if kind != "text" else [])
        batch = encode_items(images, [q.question for q, c in zip(chunk, candidates, strict=True) for _ in c],  # type: ignore[attr-defined]
                             [a for c in candidates for a in c], tokenizer, answers=task.answer_set or ())
        out.append((list(chunk), batch))
    return out


def evaluate_model(model: torch.nn.Module, batches: Sequence[tuple[list[object], dict[str, torch.Tensor]]],
                   task: Task) -> dict[str, float]:
    """:func:`server.planners.quality.reward_quality` of ``model`` on :func:`eval_batches` of
    ``task``, in evaluation mode (where it is left: training puts it back in its own mode)."""
    from fedsecure.task import group_of_answer, wrong_answers
    from server.planners.quality import JudgedQuestion, reward_quality

    judged = []
    model.eval()
    with torch.no_grad():
        for chunk, batch in batches:
            scores = model.score(batch).tolist()  # type: ignore[operator]
            at = 0
            for q in chunk:
                candidates = (q.answer, *wrong_answers(task, q))  # type: ignore[arg-type, attr-defined]
                row, at = scores[at:at + len(candidates)], at + len(candidates)
                judged.append(JudgedQuestion(q.answer, dict(zip(candidates, row, strict=True)), group=q.group,  # type: ignore[attr-defined]
                                             groups={a: group_of_answer(task, q, a) for a in candidates}))  # type: ignore[arg-type]
    return reward_quality(judged)


def federated_clients(cfg: CollaborationConfig, row: str, seed: int, encoded: dict[str, object],
                      on_trained: Callable[[int, list[_Client]], None] | None = None,
                      ) -> tuple[list[_Client], dict[str, float]]:
    """The six clients' reward models after ``row``'s federation on seed ``seed`` (their
    encoded pairs in ``encoded``), and the row's extra figures (e.g. the spent ε);
    ``on_trained(round, clients)`` sees each round's local models before aggregation."""
    from fedsecure.models.reward import (
        build_reward_model,
    )

    clients = []
    for i, name in enumerate(CLIENTS):
        torch.manual_seed(seed * 100 + i)
        kind = KIND_OF[name]
        config = reward_config(_task(cfg), kind, None if row == "random_backbone" else cfg.backbone,
                                federation_seed=seed)
        model, _ = build_reward_model(config)
        restrict(model, cfg.trainable)
        clients.append(_Client(name, kind, model, encoded[name]))
    return clients, _federated(row, clients, cfg, on_trained)


def _one_seed(cfg: CollaborationConfig, seed: int, questions: Sequence[object]) -> dict[str, dict[str, dict[str, float]]]:
    """row -> kind -> metric -> value (mean over the kind's two clients)."""
    from client_sdk.dp_training import train_nonprivate
    from fedsecure.data.preferences import records_from_pairs
    from fedsecure.models.encoding import encode_records
    from fedsecure.models.reward import build_reward_model, tokenizer_for

    task = _task(cfg)

    def client_pairs(name: str, kind: str) -> list[object]:
        return list(task.simulated_pairs(client=name, clients=list(CLIENTS), kind=kind, alpha=cfg.alpha,
                                         seed=seed))[:cfg.pairs_per_client]

    pairs = {c: client_pairs(c, KIND_OF[c]) for c in CLIENTS}
    inputs: dict[Path | None, tuple[Callable[[list[object]], object], dict[str, object], dict[str, object]]] = {}

    def inputs_for(backbone: Path | None):  # type: ignore[no-untyped-def]
        """(encode, the clients' encoded records, evaluation batches per kind) for models on
        ``backbone``, read with that backbone's own tokenizer (None: random stacks, the
        task's word tokenizer)."""
        if backbone not in inputs:
            tok = tokenizer_for(reward_config(task, "image_text", backbone))  # type: ignore[arg-type]

            def encode(records):  # type: ignore[no-untyped-def]  # listwise records of the clients' pairs
                return encode_records(records_from_pairs(records, answer_set=task.answer_set), tok,
                                      answers=task.answer_set or ())
            inputs[backbone] = (encode, {c: encode(p) for c, p in pairs.items()},
                                {kind: eval_batches(kind, questions, tok, task) for kind in KINDS})
        return inputs[backbone]

    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in track(cfg.rows, desc=f"seed {seed}", unit="row"):
        started = time.monotonic()
        per_kind: dict[str, list[dict[str, float]]] = {}
        extra: dict[str, float] = {}
        backbone = None if row == "random_backbone" else cfg.backbone
        encode, encoded, batches = inputs_for(backbone)
        if row in ("central", "central_dp"):
            for kind in KINDS:
                torch.manual_seed(seed)
                model, _ = build_reward_model(reward_config(task, kind, backbone, federation_seed=seed))
                restrict(model, cfg.trainable)
                union = encode([p for c in CLIENTS for p in client_pairs(c, kind)])
                if row == "central":
                    train_nonprivate(model=model, data=union, steps=cfg.central_steps,
                                     learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, seed=seed)
                else:
                    extra[f"sigma.{kind}"] = _central_dp(model, union, cfg)
                per_kind[kind] = [evaluate_model(model, batches[kind], task)]  # type: ignore[index]
        else:
            clients, extra = federated_clients(cfg, row, seed, encoded)
            for c in clients:
                per_kind.setdefault(c.kind, []).append(evaluate_model(c.model, batches[c.kind], task))  # type: ignore[index]
        out[row] = {kind: {k: statistics.fmean(m[k] for m in ms) for k in ms[0]} for kind, ms in per_kind.items()}
        out[row]["_"] = {"seconds": round(time.monotonic() - started, 1), **extra}
        log.info("seed %d, %s: %.0f s; %s", seed, row, out[row]["_"]["seconds"],
                 {k: round(v.get("top1_all.color", math.nan), 2) for k, v in out[row].items() if k != "_"})
    return out


def bench_collaboration(cfg: CollaborationConfig) -> dict[str, object]:
    """Run every row for every seed; mean ± std per row, kind and metric."""
    from fedsecure.task import balanced_by_group

    torch.set_num_threads(cfg.threads)
    started = time.monotonic()
    task = _task(cfg)
    questions = balanced_by_group(task.server_part("reward_eval"), cfg.questions_per_type)
    groups = sorted({q.group for q in questions})
    runs = {seed: _one_seed(cfg, seed, questions) for seed in track(cfg.seeds, desc="seeds", unit="seed")}
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
            "clients": {c: KIND_OF[c] for c in CLIENTS}, "eval_questions": len(questions),
            "questions_per_type": {t: sum(q.group == t for q in questions) for t in groups},
            "question_groups": sorted(task.question_groups),
            "summary": _summary(runs, cfg.rows), "per_seed": {str(s): r for s, r in runs.items()},
            "wall_s": round(time.monotonic() - started, 1)}


def _summary(runs: dict[int, dict[str, dict[str, dict[str, float]]]],
             rows: Sequence[str]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per row, kind and metric: [mean, std] over the seeds."""
    summary: dict[str, dict[str, dict[str, list[float]]]] = {}
    for row in rows:
        for kind in (*KINDS, "_"):
            keys = sorted(set().union(*(runs[s][row].get(kind, {}).keys() for s in runs)))
            for key in keys:
                values = [runs[s][row][kind][key] for s in runs if key in runs[s][row].get(kind, {})]
                summary.setdefault(row, {}).setdefault(kind, {})[key] = [
                    round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]
    return summary


def merge_seeds(results: Sequence[dict[str, object]]) -> dict[str, object]:
    """One result from runs of the same configuration on different seeds (each seed run
    on its own, so that a long ablation keeps what it finished); refused if anything but
    the seeds (and the threads) differs, or a seed repeats. The wall time is the sum of the
    runs'."""
    if not results:
        raise ValueError("nothing to merge")
    def same(r: dict[str, object]) -> dict[str, object]:
        # the CPU threads a run used change its speed, not the experiment
        return {k: v for k, v in r["config"].items() if k not in ("seeds", "threads")}  # type: ignore[attr-defined]
    first = results[0]
    if any(same(r) != same(first) or r["questions_per_type"] != first["questions_per_type"] for r in results):
        raise ValueError("the runs differ in more than their seeds")
    runs = {int(s): r for res in results for s, r in res["per_seed"].items()}  # type: ignore[attr-defined]
    if len(runs) != sum(len(res["per_seed"]) for res in results):  # type: ignore[arg-type]
        raise ValueError("a seed was run twice")
    config = {**first["config"], "seeds": sorted(runs)}  # type: ignore[dict-item]
    return {**first, "config": config, "summary": _summary(runs, config["rows"]),
            "per_seed": {str(s): runs[s] for s in sorted(runs)},
            "wall_s": round(sum(float(r["wall_s"]) for r in results), 1)}  # type: ignore[arg-type]


def _types(result: dict[str, object], kind: str) -> list[str]:
    """The question groups a kind is judged on in ``result``."""
    blind = set(result.get("question_groups", ["yesno"]))  # type: ignore[arg-type]
    return [t for t in result["questions_per_type"] if not (kind == "image" and t in blind)]  # type: ignore[attr-defined]


def markdown_table(result: dict[str, object]) -> str:
    """Per kind: rows × (type metric) as mean ± std."""
    summary = result["summary"]  # type: ignore[index]
    cfg = result["config"]  # type: ignore[index]
    per_type = ", ".join(f"{n} {t}" for t, n in result["questions_per_type"].items())  # type: ignore[attr-defined]
    blind = ", ".join(result.get("question_groups", ["yesno"]))  # type: ignore[union-attr]
    lines = [f"Task {cfg.get('task', 'easyvqa')}: public reward-evaluation questions ({per_type}; image-only: no "
             f"{blind}), the right answer and every wrong one scored; "
             f"ε = {cfg['epsilon']}, {cfg['rounds']} rounds × {cfg['local_steps']} DP steps, "
             f"seeds {cfg['seeds']}, mean ± std over seeds; wall {result['wall_s']} s.", ""]
    for kind in KINDS:
        types = _types(result, kind)
        cols = [f"top1_all.{t}" for t in types] + [f"top1_type.{t}" for t in types] + [f"pairwise.{t}" for t in types]
        lines += [f"**{kind}**", "", "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for row in summary:  # type: ignore[union-attr]
            cells = []
            for col in cols:
                mean, std = summary[row].get(kind, {}).get(col, [math.nan, math.nan])  # type: ignore[index]
                cells.append(f"{mean:.2f} ± {std:.2f}")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_outputs(result: dict[str, object], out: Path) -> list[Path]:
    """JSON, Markdown table and an SVG plot of top-1 over all answers per kind and type."""
    from benchmarks.svg_bars import grouped_bars

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "collaboration.json", out / "collaboration.md", out / "collaboration.svg"]
    paths[0].write_text(json.dumps(result, indent=2, sort_keys=True))
    paths[1].write_text(markdown_table(result))
    summary = result["summary"]  # type: ignore[index]
    panels = []
    for kind in KINDS:
        types = _types(result, kind)
        bars = {row: [tuple(summary[row].get(kind, {}).get(f"top1_all.{t}", [0.0, 0.0])) for t in types]  # type: ignore[index]
                for row in summary}  # type: ignore[union-attr]
        panels.append((f"{kind}: top-1 over all answers", types, bars))
    paths[2].write_text(grouped_bars(panels))
    return paths
