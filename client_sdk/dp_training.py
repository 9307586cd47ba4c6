"""Differentially private reward training (DP-SGD with Opacus): a listwise loss over each
record's candidate answers (Bradley–Terry on pairs, for distillation and baselines),
Poisson sampling, per-record clipping, Gaussian noise calibrated to the client's remaining
budget over the planned rounds, one accountant per client spanning all rounds (its
ledger), and a loud failure if training leaves the trainable parameters unchanged.

The privacy unit is the record (or the pair): its K candidate answers run through the text
layers as K rows of one stacked batch whose gradients are summed into one gradient per
record before clipping (:mod:`client_sdk.record_grad_sample`, then :func:`fold_rows`), so a
record is clipped as a whole.

Deliberate choices (issue 24, measured with ``fedsecure bench reward-sweep``):
- dropout is off during training: only modules that own trainable parameters are in
  training mode (Opacus captures activations only there); the frozen pretrained stacks stay
  in evaluation mode as ``from_pretrained`` loads them. Dropout in a frozen stack only adds
  noise on top of DP's, and switched on in some rounds and not others;
- each round starts a fresh optimiser (AdamW, no state carried): the federation replaces
  the shared adapters between rounds, so moment estimates of the previous round describe
  parameters that no longer exist;
- what a round trains is the client's choice (``DPSettings.trainable``, :data:`TRAINABLE_SETS`):
  every adapter, the head and the fusion layer by default, or the head and fusion layer
  alone — fewer coordinates to add noise to. On a built-in free-text task the head alone
  kept what the pretrained stacks know and judged far better under DP than adapters that
  DP noise moved (type-averaged top-1 0.52 ± 0.06 → 0.65 ± 0.02 on one client, 3 seeds,
  `fedsecure bench reward-sweep`, benchmarks/README.md, issue 25); on the built-in
  closed-answer task they tie.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus.grad_sample.utils import get_gsm_class
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from client_sdk.record_grad_sample import RecordGradSampleModule
from fedsecure.progress import progress
from fedsecure.errors import PrivacyBudgetExceeded
from fedsecure.models.encoding import EncodedPairs, EncodedRecords
from fedsecure.models.modes import evaluation_mode
from fedsecure.models.reward import HEAD_PREFIXES, LOCAL_ADAPTER, PAIRED_ROWS, RewardModel
from fedsecure.privacy.accountant import calibrate_noise, epsilon
from fedsecure.privacy.ledger import Ledger
from fedsecure.privacy.noise import poisson_batch, secure_gaussian_like


TRAINABLE_SETS = ("all", "no_image_stack", "no_mlp", "head")
"""What a round of DP training may update, of the model's own trainable parameters: all
of them (attention and MLP adapters, head, fusion layer), all but the image stack's
adapters, all but the MLP adapters, or the head and fusion layer only."""


def in_trainable_set(name: str, trainable: str) -> bool:
    """Whether DP training restricted to ``trainable`` updates parameter ``name``."""
    if trainable not in TRAINABLE_SETS:
        raise ValueError(f"trainable must be one of {TRAINABLE_SETS}, got {trainable!r}")
    if trainable == "no_image_stack":
        return not name.startswith("image.")
    if trainable == "no_mlp":
        return f".{LOCAL_ADAPTER}." not in name
    if trainable == "head":
        return name.startswith(HEAD_PREFIXES)
    return True


@contextmanager
def restricted_to(model: torch.nn.Module, trainable: str) -> Iterator[None]:
    """Freeze, while open, the trainable parameters ``trainable`` leaves out (what is
    saved, shared and personalised afterwards is untouched: they train again after)."""
    frozen = [p for n, p in model.named_parameters() if p.requires_grad and not in_trainable_set(n, trainable)]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


@dataclass(frozen=True)
class DPSettings:
    """Mechanism settings; ``secure_mode`` is on unless explicitly turned off."""

    max_grad_norm: float = 0.1    # chosen with lr 0.01 by `fedsecure bench reward-sweep` (issue 24)
    batch_size: int = 128         # expected batch size (records) under Poisson sampling
    secure_mode: bool = True
    grad_sample_mode: str = "hooks"  # Opacus per-sample gradient engine: hooks, functorch, ew
    trainable: str = "all"        # what a federated round trains (TRAINABLE_SETS)

    def __post_init__(self) -> None:
        if self.max_grad_norm <= 0 or self.batch_size < 1:
            raise ValueError("max_grad_norm must be positive and batch_size >= 1")
        if self.trainable not in TRAINABLE_SETS:
            raise ValueError(f"trainable must be one of {TRAINABLE_SETS}, got {self.trainable!r}")
        if not self.secure_mode:
            warnings.warn("DP secure_mode is OFF: noise and sampling use a seedable PRNG. "
                          "Acceptable for tests and benchmarks only, never in production.", stacklevel=2)


@dataclass(frozen=True)
class TrainResult:
    """What one round of local DP training did."""

    steps: int
    noise_multiplier: float
    sample_rate: float
    epsilon_after: float
    ledger_seq: int
    loss_first: float
    loss_last: float
    parameters_changed: int


class _SecureNoiseDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer with noise from the OS CSPRNG (see fedsecure.privacy.noise)."""

    def add_noise(self) -> None:
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = secure_gaussian_like(p.summed_grad, self.noise_multiplier * self.max_grad_norm)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


TrainingData = EncodedPairs | EncodedRecords
"""What DP training steps over: records (listwise) or pairs (Bradley–Terry)."""


def bt_loss(margins: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry negative log-likelihood of preferring the chosen answer."""
    return -F.logsigmoid(margins).mean()


def listwise_loss(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over records of −log softmax(rewards)[chosen] over each record's candidates
    (the Plackett–Luce top-1 / ListNet likelihood; with two candidates it is exactly the
    Bradley–Terry loss). ``rewards`` (B, K) with the chosen answer in column 0, ``mask``
    (B, K) marks real candidates; a mean of per-record terms, so each record's gradient
    stays its own."""
    masked = rewards.masked_fill(~mask, float("-inf"))
    return -torch.log_softmax(masked, dim=-1)[:, 0].mean()


def data_loss(data: TrainingData, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of a forward pass over ``data``'s batch."""
    return listwise_loss(out, batch["candidate_mask"]) if isinstance(data, EncodedRecords) else bt_loss(out)


def rows_per_unit(data: TrainingData) -> int:
    """How many rows a privacy unit is in the text layers: K candidates, or 2 per pair."""
    return data.candidates if isinstance(data, EncodedRecords) else PAIRED_ROWS


def training_mode(model: torch.nn.Module) -> None:
    """Training mode only on modules that own a trainable parameter, evaluation mode
    everywhere else (dropout off in the frozen stacks; see the module docstring)."""
    model.eval()
    for module in model.modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            module.training = True


@torch.no_grad()
def record_accuracy(model: RewardModel, data: EncodedRecords, *, batch_size: int = 128) -> float:
    """Share of records whose chosen answer scores strictly above every other candidate,
    in evaluation mode (the model's modes are restored afterwards)."""
    hits = 0
    with evaluation_mode(model):
        for s in range(0, len(data), batch_size):
            batch = data.batch(torch.arange(s, min(s + batch_size, len(data))))
            r = model(batch).masked_fill(~batch["candidate_mask"], float("-inf"))
            hits += int((r[:, 1:] < r[:, :1]).all(dim=1).sum())
    return hits / len(data)


@torch.no_grad()
def margins(model: RewardModel, data: EncodedPairs, *, batch_size: int = 256) -> torch.Tensor:
    """Bradley–Terry margins of every pair in evaluation mode, shape (n,); the model's
    training mode is restored afterwards."""
    with evaluation_mode(model):
        out = [model(data.batch(torch.arange(s, min(s + batch_size, len(data)))))
               for s in range(0, len(data), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def pairwise_accuracy(model: RewardModel, data: EncodedPairs, *, batch_size: int = 256) -> float:
    """Share of pairs whose chosen answer gets the higher reward (a tie counts half)."""
    m = margins(model, data, batch_size=batch_size)
    return (float((m > 0).sum()) + 0.5 * float((m == 0).sum())) / len(data)


def trainable_parameters(model: RewardModel) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of everything DP training updates."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def check_changed(model: RewardModel, before: dict[str, torch.Tensor]) -> int:
    """How many trainable parameters differ from ``before``; raises if none did."""
    changed = sum(int(not torch.equal(before[n], p.detach())) for n, p in trainable_parameters(model))
    if changed == 0:
        # Known Opacus+peft failure (opacus#820, peft#3409): ε is spent, weights never move.
        raise RuntimeError("training spent privacy budget but changed no trainable parameter")
    return changed


def train_private(*, model: RewardModel, data: TrainingData, ledger: Ledger, settings: DPSettings, steps: int,
                  learning_rate: float, rounds_left: int, run_id: str, round_: int) -> TrainResult:
    """One round of local DP training. Refuses (PrivacyBudgetExceeded) before touching
    data if the planned steps would overspend; records the release in the ledger first."""
    n = len(data)
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if n < settings.batch_size:
        raise ValueError(f"local dataset has {n} records, fewer than one batch of {settings.batch_size}")
    q = settings.batch_size / n
    history = ledger.history()
    budget = ledger.budget
    # Calibrate for every planned step still to come, so later rounds are not starved.
    sigma = calibrate_noise(history, sample_rate=q, steps=steps * max(1, rounds_left), delta=budget.delta,
                            target_epsilon=budget.federation_epsilon, kind=ledger.accountant)
    eps_after = epsilon([*history, (sigma, q, steps)], delta=budget.delta, kind=ledger.accountant)
    if eps_after > budget.federation_epsilon:
        # The personalisation reserve is not federated training's to spend (PrivacyBudget).
        raise PrivacyBudgetExceeded(f"ε would reach {eps_after:.3f} > {budget.federation_epsilon:g} "
                                    f"(budget {budget.epsilon:g} less its personalisation reserve)")
    entry = ledger.record(run_id=run_id, round_=round_, step=(sigma, q, steps), epsilon_after=eps_after,
                          data_digest=data.digest)

    losses: list[float] = []
    with restricted_to(model, settings.trainable):
        before = {name: p.detach().clone() for name, p in trainable_parameters(model)}
        with DPStepper(model=model, settings=settings, noise_multiplier=sigma, learning_rate=learning_rate,
                       sample_rate=q) as stepper, progress(total=steps, desc=f"round {round_} DP training") as bar:
            for _ in range(steps):
                loss = stepper.step(data)
                if loss is not None:
                    losses.append(loss)
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                bar.update(1)
        changed = check_changed(model, before)
    return TrainResult(steps=steps, noise_multiplier=sigma, sample_rate=q, epsilon_after=eps_after,
                       ledger_seq=entry.seq, loss_first=losses[0] if losses else math.nan,
                       loss_last=losses[-1] if losses else math.nan, parameters_changed=changed)


PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(the model's output on a batch, the batch's indices) -> mean loss over the batch."""


class DPStepper:
    """One DP-SGD step at a time: Poisson batch, per-record gradients (Opacus), clipping,
    noise, optimizer step. Used by training and by ``fedsecure bench dp``. The model is in
    :func:`training_mode` while the stepper is open and in evaluation mode after."""

    def __init__(self, *, model: RewardModel, settings: DPSettings, noise_multiplier: float, learning_rate: float,
                 sample_rate: float) -> None:
        self.settings, self.sigma, self.q = settings, noise_multiplier, sample_rate
        self.model = model
        self.params = trainable_parameters(model)
        training_mode(model)
        # The hooks engine computes one gradient per record where a record is several rows
        # (client_sdk.record_grad_sample); the other engines give one per row, folded below.
        gsm_class = RecordGradSampleModule if settings.grad_sample_mode == "hooks" else get_gsm_class(
            settings.grad_sample_mode)
        self.gsm = gsm_class(model, batch_first=True, loss_reduction="mean")
        inner = torch.optim.AdamW([p for _, p in self.params], lr=learning_rate, weight_decay=0.0)
        opt_cls = _SecureNoiseDPOptimizer if settings.secure_mode else DPOptimizer
        self.optimizer = opt_cls(inner, noise_multiplier=noise_multiplier, max_grad_norm=settings.max_grad_norm,
                                 expected_batch_size=settings.batch_size)
        self.rng = None if settings.secure_mode else np.random.default_rng(secrets.randbits(64))

    def step(self, data: TrainingData, loss_fn: PairLoss | None = None) -> float | None:
        """One step; returns the batch loss (None for an empty Poisson batch).
        ``loss_fn(output, indices)`` replaces the data's own loss (distillation); it must be
        a mean of per-unit terms, so each record's (pair's) gradient stays its own."""
        idx = poisson_batch(len(data), self.q, secure=self.settings.secure_mode, rng=self.rng)
        self.optimizer.zero_grad(set_to_none=True)
        if len(idx) == 0:
            _noise_only_step(self.optimizer, self.params, self.sigma, self.settings)
            return None
        with warnings.catch_warnings():
            # Opacus's hooks sit on modules whose inputs need no gradient (frozen base): expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            indices = torch.from_numpy(idx)
            batch = data.batch(indices)
            if isinstance(self.gsm, RecordGradSampleModule):
                self.gsm.expect(units=len(idx), rows=rows_per_unit(data))
            out = self.gsm(batch)
            loss = data_loss(data, out, batch) if loss_fn is None else loss_fn(out, indices)
            loss.backward()
        fold_rows(self.params, len(idx), rows_per_unit(data))
        self.optimizer.step()
        return float(loss.detach())

    def close(self) -> None:
        """Remove Opacus's hooks: the model is an ordinary module again (in evaluation mode)."""
        self.gsm._close()
        self.model.eval()

    def __enter__(self) -> DPStepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fold_rows(params: list[tuple[str, torch.nn.Parameter]], units: int, rows: int) -> None:
    """Make every per-sample gradient a per-*unit* (record or pair) gradient before clipping.

    Layers that saw a unit as ``rows`` rows (candidate-major: row j·units + i is candidate j
    of unit i) got one gradient per row, each scaled by Opacus's mean-reduction factor
    rows·units instead of units; the unit's gradient is their sum divided by ``rows``.
    Layers that saw one row per unit are untouched. Clipping per unit keeps the record (the
    pair) the privacy unit (docs/design.md §2).
    """
    for name, p in params:
        gs = p.grad_sample
        if isinstance(gs, list):
            raise RuntimeError(f"{name}: several forward passes per step; expected one stacked pass")
        if rows > 1 and gs.shape[0] == rows * units:
            p.grad_sample = gs.view(rows, units, *gs.shape[1:]).sum(0) / rows
        elif gs.shape[0] != units:
            raise RuntimeError(f"{name}: {gs.shape[0]} per-sample gradients for {units} records")


def _noise_only_step(optimizer: DPOptimizer, params: list[tuple[str, torch.nn.Parameter]], sigma: float,
                     settings: DPSettings) -> None:
    # An empty Poisson batch still releases noise (skipping would leak that it was empty).
    std = sigma * settings.max_grad_norm
    for _, p in params:
        noise = secure_gaussian_like(p, std) if settings.secure_mode else torch.randn_like(p) * std
        p.grad = noise / settings.batch_size
    optimizer.original_optimizer.step()


def train_nonprivate(*, model: RewardModel, data: TrainingData, steps: int, learning_rate: float,
                     batch_size: int, seed: int = 0) -> list[float]:
    """The same loop without DP (baselines and benchmarks only); returns the losses. The
    model is left in evaluation mode."""
    params = [p for _, p in trainable_parameters(model)]
    training_mode(model)
    before = {name: p.detach().clone() for name, p in trainable_parameters(model)}
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(data), size=min(batch_size, len(data)), replace=False))
        optimizer.zero_grad(set_to_none=True)
        batch = data.batch(idx)
        loss = data_loss(data, model(batch), batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    check_changed(model, before)
    return losses
