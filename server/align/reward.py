"""The mixture-of-rewards reward function GRPO calls each step: send each client the
completions it can judge, collect its scores within the step's deadline, refuse bad
answers, normalise per client, combine (routed or a competitor), return one reward per
completion (docs/design.md §4, ALIGN stage).

Faults never poison a step (issue 13, "Bad input and faults"): a client that misses the
deadline, raises, or returns NaN/Inf, a wrong count, or scores for items it was not sent
is left out of this step's fusion (counted per client; a repeat offender is reported) and
the weights are renormalised over those who answered. If no client answers, the step is
refused (``RewardRejected``: GRPO skips it without touching the policy).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import random
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedsecure.data.images import encode_png
from fedsecure.errors import RewardRejected
from fedsecure.types import MAX_ABS_SCORE, Modality, Score, ScoreItem
from server.align.engine.prompts import Prompt
from server.align.combiners import Combiner, StepScores
from server.align.fusion import capability_mask, normalise_scores

log = logging.getLogger(__name__)

Scorer = Callable[[int, Sequence[ScoreItem], float], Sequence[Score]]
"""One client's scoring channel: ``scorer(exchange, items, timeout_s)`` returns its scores
or raises (a timeout included); it is called from a worker thread. ``exchange`` numbers
the requests of a stage (the "step" a signed answer is bound to on the wire)."""

FeatureFn = Callable[[Sequence[Prompt]], torch.Tensor]
"""Prompt features (P, D) for the router and expert selection."""

MixedScores = Callable[[torch.Tensor, torch.Tensor], None]
"""Receives the raw scores (C, M) and answered (C, M) of items mixed into a step."""

_SHUFFLE = random.SystemRandom()  # item order must not be predictable by a client
LATENCY_WINDOW = 5  # answers per client whose median sets how long it is waited for


@dataclass(frozen=True)
class MixIn:
    """Items the server mixes into the next step's batch (e.g. the router's preference
    items), and where their scores go. On the wire they look like the step's own items:
    random ids, random order, per-exchange prompt ids (issue 23 item 1)."""

    prompts: tuple[Prompt, ...]
    completions: tuple[str, ...]
    on_scores: MixedScores


@dataclass(frozen=True)
class ScoringClient:
    """A client taking part in the ALIGN stage: its name, declared modalities, channel."""

    name: str
    modalities: tuple[Modality, ...]
    scorer: Scorer


@dataclass
class StepLog:
    """What one reward call did: who answered, who was left out and why, timings."""

    step: int
    exchange: int = 0
    answered: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    scoring_s: dict[str, float] = field(default_factory=dict)
    fusion_s: float = 0.0
    covered_prompts: int = 0
    prompts: int = 0
    raw_mean: dict[str, float] = field(default_factory=dict)


def check_answer(scores: Sequence[Score], sent: Sequence[ScoreItem]) -> list[float]:
    """The values of a client's answer in the order sent, or ValueError saying what is
    wrong: a wrong count, an item not sent (or sent twice), a NaN/Inf value."""
    if len(scores) != len(sent):
        raise ValueError(f"{len(scores)} scores for {len(sent)} items")
    by_id = {}
    for s in scores:
        if s.item_id in by_id:
            raise ValueError(f"item {s.item_id!r} scored twice")
        if not isinstance(s.value, float | int) or not math.isfinite(s.value) or abs(s.value) > MAX_ABS_SCORE:
            raise ValueError(f"score for item {s.item_id!r} is {s.value!r}, not a finite number of magnitude "
                             f"at most {MAX_ABS_SCORE:g}")
        by_id[s.item_id] = float(s.value)
    missing = [i.item_id for i in sent if i.item_id not in by_id]
    if missing:
        raise ValueError(f"scores for items not sent, and none for {missing[0]!r}")
    return [by_id[i.item_id] for i in sent]


class MixtureReward:
    """A GRPO ``RewardFn`` fusing the clients' scores with ``combiner``. Set ``step`` before
    each call (it binds the items; a client's answer must be for that step)."""

    def __init__(self, *, clients: Sequence[ScoringClient], combiner: Combiner, features: FeatureFn,
                 deadline_s: float = 30.0, group_of: Callable[[Prompt], str] | None = None,
                 offender_threshold: int = 3, skip_after_misses: int = 2, min_grace_s: float = 0.5,
                 latency_patience: float = 1.5) -> None:
        if not clients:
            raise ValueError("the mixture needs at least one client")
        if len({c.name for c in clients}) != len(clients):
            raise ValueError("client names must be unique")
        if not deadline_s > 0 or offender_threshold < 1 or skip_after_misses < 1 or min_grace_s < 0 \
                or latency_patience < 1:
            raise ValueError("deadline_s must be > 0, offender_threshold and skip_after_misses >= 1, "
                             "min_grace_s >= 0, latency_patience >= 1")
        self.clients, self.combiner, self.features = list(clients), combiner, features
        self.deadline_s, self.group_of, self.offender_threshold = deadline_s, group_of, offender_threshold
        self.step = 0
        self.mix_in: MixIn | None = None  # consumed by the next call
        # Every exchange with the clients (a GRPO step's batch, the router's preference
        # batch) gets its own number on the wire, so an answer to one can never be taken
        # for the answer to another (the router's refresh and a round's first step share
        # a GRPO step).
        self.exchanges = 0
        self.logs: list[StepLog] = []
        self.faults: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()           # steps each client did not answer in time
        self.missed_in_a_row: Counter[str] = Counter()  # this round; reset by new_round()
        self.skip_after_misses, self.min_grace_s, self.latency_patience = skip_after_misses, min_grace_s, latency_patience
        self._busy: dict[str, concurrent.futures.Future[Sequence[Score]]] = {}
        # Seconds each client took for its last few answers, late ones included (recorded
        # by the scoring thread when the answer arrives, used or not).
        self._latency: dict[str, collections.deque[float]] = {c.name: collections.deque(maxlen=LATENCY_WINDOW)
                                                              for c in clients}
        self._png: dict[str, bytes] = {}
        self._feature_cache: dict[str, torch.Tensor] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="score")

    def close(self) -> None:
        """Stop the scoring threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def offenders(self) -> dict[str, int]:
        """Clients left out of at least ``offender_threshold`` steps for bad answers."""
        return {c: n for c, n in self.faults.items() if n >= self.offender_threshold}

    # -- the reward function ----------------------------------------------------------------
    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        """One reward per (prompt, completion); prompts come grouped as GRPO expands them.
        Items set in ``mix_in`` travel in the same batch; their scores are handed over
        (before this step's fusion) and never rewarded."""
        mix, self.mix_in = self.mix_in, None
        n = len(prompts)
        if mix is not None:
            own = {p.prompt_id for p in prompts}
            if any(p.prompt_id in own for p in mix.prompts):
                raise ValueError("mixed-in prompts must not share ids with the step's own prompts")
            prompts, completions = [*prompts, *mix.prompts], [*completions, *mix.completions]
        # The step that carries the router's preference items waits for every client to
        # the deadline, no grace: the router learns whom to trust only from the clients
        # that answered those items, and the grace cut the slower image clients there, so the
        # router was fit on the fast text clients alone and never moved (measured: loss
        # before = after in every round of the demo and of `experiment mor`). Bounded: one
        # step per round can be held to the deadline, never every step (issue 23 item 8).
        unique, prompt_of, raw, answered, entry = self.collect(prompts, completions, grace=mix is None)
        if mix is not None:
            mix.on_scores(raw[:, n:], answered[:, n:])
            k = len({prompt_of[i] for i in range(n)})  # the step's own prompts come first
            unique, prompt_of, raw, answered = unique[:k], prompt_of[:n], raw[:, :n], answered[:, :n]
            entry.raw_mean = {c.name: float(raw[ci][answered[ci]].mean()) for ci, c in enumerate(self.clients)
                              if bool(answered[ci].any())}
            entry.prompts = k
        started = time.perf_counter()
        z = normalise_scores(raw, answered)
        features = self._prompt_features(unique)
        groups = tuple(self.group_of(p) for p in unique) if self.group_of is not None else ()
        rewards, covered = self.combiner(StepScores(z=z, answered=answered, prompt_of=torch.tensor(prompt_of),
                                                    features=features, groups=groups))
        entry.fusion_s = time.perf_counter() - started
        entry.covered_prompts = len({k for k, ok in zip(prompt_of, covered.tolist(), strict=True) if ok})
        self.logs.append(entry)
        if not entry.answered:
            raise RewardRejected(f"step {self.step}: no client answered ({entry.left_out})")
        if not bool(torch.isfinite(rewards).all()):  # a combiner bug must not reach the policy
            raise RewardRejected(f"step {self.step}: the fused reward is not finite")
        return [float(r) for r in rewards]

    def collect(self, prompts: Sequence[Prompt], completions: Sequence[str], *, grace: bool = True
                ) -> tuple[list[Prompt], list[int], torch.Tensor, torch.Tensor, StepLog]:
        """Ask every client for the items it can judge; returns (distinct prompts, prompt
        index of each item, raw scores (C, N), answered (C, N), the log entry).

        What a client sees tells it nothing the server keeps to itself: item ids are random,
        prompt ids are random per exchange, and each client's batch is in a random order
        (issue 23 item 1: ids and positions once told the router's items apart)."""
        unique: list[Prompt] = []
        index: dict[str, int] = {}
        prompt_of = []
        for p in prompts:
            if p.prompt_id not in index:
                index[p.prompt_id] = len(unique)
                unique.append(p)
            prompt_of.append(index[p.prompt_id])
        self.exchanges += 1
        entry = StepLog(step=self.step, prompts=len(unique), exchange=self.exchanges)
        capable = capability_mask([c.modalities for c in self.clients],
                                  has_image=[p.image is not None for p in unique],
                                  has_question=[bool(p.question) for p in unique])  # (C, P)
        wire_prompt = [secrets.token_hex(8) for _ in unique]
        items = [ScoreItem(item_id=secrets.token_hex(12), prompt_id=wire_prompt[k],
                           image_png=self._image(p), question=p.question, completion=c)
                 for p, c, k in zip(prompts, completions, prompt_of, strict=True)]
        sent = [[it for it, k in zip(items, prompt_of, strict=True) if capable[ci, k]]
                for ci in range(len(self.clients))]
        for mine in sent:
            _SHUFFLE.shuffle(mine)
        raw, answered = self._collect(sent, items, entry, grace=grace)
        for ci, client in enumerate(self.clients):
            if bool(answered[ci].any()):
                entry.raw_mean[client.name] = float(raw[ci][answered[ci]].mean())
        return unique, prompt_of, raw, answered, entry

    def prompt_features(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """(P, D) features of ``prompts`` (cached by prompt id: the feature model is frozen)."""
        return self._prompt_features(prompts)

    def _image(self, p: Prompt) -> bytes:
        if p.image is None:
            return b""
        if p.prompt_id not in self._png:
            self._png[p.prompt_id] = encode_png(p.image)
        return self._png[p.prompt_id]

    def _prompt_features(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        todo = [p for p in prompts if p.prompt_id not in self._feature_cache]
        if todo:
            for p, f in zip(todo, self.features(todo), strict=True):
                self._feature_cache[p.prompt_id] = f.detach().float().cpu()
        return torch.stack([self._feature_cache[p.prompt_id] for p in prompts])

    def new_round(self) -> None:
        """A round of the stage starts: every client is asked again, whatever it missed."""
        self.missed_in_a_row.clear()

    def _collect(self, sent: Sequence[Sequence[ScoreItem]], items: Sequence[ScoreItem],
                 entry: StepLog, *, grace: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Ask, then wait for the answers until the step's deadline, or — once the answers
        in hand cover every item someone was asked for — a grace as long again as that
        took (at least ``min_grace_s``), longer for a client whose recent answers took
        longer (:meth:`_cutoff`): one silent client once held every step to its deadline
        (issue 23 item 8). A client still answering an earlier step is not asked
        again yet. Every miss is counted; only a miss of the whole deadline counts toward
        ``skip_after_misses`` in a row, after which the client is not waited for again this
        round (a slower honest client cut off by the grace keeps being asked). Without
        ``grace`` every client asked is waited for until the deadline."""
        position = {it.item_id: n for n, it in enumerate(items)}
        raw = torch.zeros(len(self.clients), len(items), dtype=torch.float64)
        answered = torch.zeros(len(self.clients), len(items), dtype=torch.bool)
        needed = torch.zeros(len(items), dtype=torch.bool)
        begun = time.monotonic()
        deadline = begun + self.deadline_s
        pending: dict[concurrent.futures.Future[Sequence[Score]], tuple[int, float]] = {}
        for ci, (client, mine) in enumerate(zip(self.clients, sent, strict=True)):
            if not mine:
                continue
            if self.missed_in_a_row[client.name] >= self.skip_after_misses:
                entry.left_out[client.name] = (f"not asked: missed {self.missed_in_a_row[client.name]} steps in a "
                                               "row this round")
                continue
            busy = self._busy.get(client.name)
            if busy is not None and not busy.done():
                self._missed(client.name, entry, "still answering an earlier step", in_a_row=False)
                continue
            future = self._pool.submit(self._timed, client, entry.exchange, mine)
            self._busy[client.name] = future
            pending[future] = (ci, time.perf_counter())
            needed[[position[it.item_id] for it in mine]] = True
        covered_at: float | None = None
        while pending:
            now = time.monotonic()
            if grace and covered_at is None and bool(answered.any(0)[needed].all()):
                covered_at = now  # every item has an answer: the stragglers get a grace, not the deadline
            cutoff = {f: self._cutoff(self.clients[ci].name, begun, covered_at, deadline)
                      for f, (ci, _) in pending.items()}
            for future in [f for f, c in cutoff.items() if c <= now]:
                ci, _ = pending.pop(future)
                future.cancel()  # a running answer still finishes and its time is recorded
                if covered_at is not None and cutoff[future] < deadline:
                    self._missed(self.clients[ci].name, entry, "missed the step's grace (the others had answered "
                                 "every item)", in_a_row=False)
                else:
                    self._missed(self.clients[ci].name, entry, "missed the step's deadline")
            if not pending:
                break
            done, _ = concurrent.futures.wait(pending, timeout=min(cutoff[f] for f in pending) - now,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                ci, started = pending.pop(future)
                self._take(ci, future, sent[ci], position, raw, answered, entry, started)
        return raw, answered

    def _timed(self, client: ScoringClient, exchange: int, items: Sequence[ScoreItem]) -> Sequence[Score]:
        """Run ``client``'s scorer and record how long a successful answer took."""
        started = time.perf_counter()
        scores = client.scorer(exchange, items, self.deadline_s)
        self._latency[client.name].append(time.perf_counter() - started)
        return scores

    def _cutoff(self, name: str, begun: float, covered_at: float | None, deadline: float) -> float:
        """When to stop waiting for client ``name`` this step. Before every item has an
        answer: the deadline. After: a grace as long again as covering took (at least
        ``min_grace_s``) — or, for a client with answers on record, ``latency_patience`` ×
        its median answer time, if longer. A silent client has no record, so it cannot
        hold a step (issue 23 item 8); a slower honest client is waited for as long as it
        usually takes: cut by the grace alone, the image clients, slower than the text
        ones, were left out of nearly every step and GRPO trained on the text clients'
        fusion (issue 24)."""
        if covered_at is None:
            return deadline
        wait_until = covered_at + max(self.min_grace_s, covered_at - begun)
        record = list(self._latency[name])
        if record:
            wait_until = max(wait_until, begun + self.latency_patience * statistics.median(record))
        return min(deadline, wait_until)

    def _missed(self, name: str, entry: StepLog, why: str, *, in_a_row: bool = True) -> None:
        entry.left_out[name] = why
        self.misses[name] += 1
        if in_a_row:
            self.missed_in_a_row[name] += 1

    def _take(self, ci: int, future: concurrent.futures.Future[Sequence[Score]], mine: Sequence[ScoreItem],
              position: Mapping[str, int], raw: torch.Tensor, answered: torch.Tensor, entry: StepLog,
              started: float) -> None:
        name = self.clients[ci].name
        try:
            values = check_answer(future.result(), mine)
        except TimeoutError:  # the channel's own deadline (a session that did not answer)
            self._missed(name, entry, "missed the step's deadline")
            return
        except ValueError as exc:  # a bad answer: the client's fault, counted
            self.faults[name] += 1
            entry.left_out[name] = f"answer refused: {exc}"
            if self.faults[name] == self.offender_threshold:
                log.warning("client %s: %d answers refused in this stage (repeat offender)", name, self.faults[name])
            return
        except Exception as exc:  # noqa: BLE001 - a failed channel leaves the client out of this step only
            entry.left_out[name] = f"scoring failed: {type(exc).__name__}: {exc}"
            return
        self.missed_in_a_row[name] = 0
        entry.scoring_s[name] = time.perf_counter() - started
        entry.answered.append(name)
        cols = torch.tensor([position[it.item_id] for it in mine])
        raw[ci, cols] = torch.tensor(values, dtype=torch.float64)
        answered[ci, cols] = True


def group_by(prompts: Sequence[Prompt], key: Callable[[Prompt], str]) -> Mapping[str, list[int]]:
    """Indices of ``prompts`` per ``key`` (for logs by question type)."""
    out: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        out.setdefault(key(p), []).append(i)
    return out
