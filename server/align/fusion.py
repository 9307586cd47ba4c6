"""Mixture of rewards, the arithmetic: per-client score normalisation, capability masks,
and the per-prompt weighted fusion that GRPO trains on (docs/design.md §5, "Router";
"Replacing Parameters with Preferences", arXiv 2602.00485).

Pure tensor functions, checkable by hand. Shapes: ``C`` clients, ``N`` scored items
(completions), each item belonging to one prompt; ``P`` prompts. ``answered[c, n]`` is
True where client ``c`` returned a valid score for item ``n`` this step (a client that
missed the step's deadline, or whose scores were refused, answered nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedsecure.types import Modality

NORMALISE_EPS = 1e-6


def capability_mask(modalities: Sequence[Sequence[Modality]], *, has_image: Sequence[bool],
                    has_question: Sequence[bool]) -> torch.Tensor:
    """(C, P) bool: client ``c`` can judge prompt ``p`` when the prompt carries every input
    its declared kind reads — an image for image clients, a question for text clients,
    both for image+text clients. A client is never asked, and never weighted, for a prompt
    it cannot see (docs/design.md §4: "only the modalities it declared")."""
    if len(has_image) != len(has_question):
        raise ValueError("has_image and has_question must describe the same prompts")
    rows = []
    for mods in modalities:
        mods = set(mods)
        if not mods:
            raise ValueError("a client declared no modality")
        needs_image = bool(mods & {Modality.IMAGE, Modality.IMAGE_TEXT})
        needs_question = bool(mods & {Modality.TEXT, Modality.IMAGE_TEXT})
        rows.append([(img or not needs_image) and (q or not needs_question)
                     for img, q in zip(has_image, has_question, strict=True)])
    return torch.tensor(rows, dtype=torch.bool).reshape(len(rows), len(has_image))


def normalise_scores(scores: torch.Tensor, answered: torch.Tensor) -> torch.Tensor:
    """(C, N) → (C, N): each client's answered scores standardised to mean 0 and unit
    (population) standard deviation over this batch, so that a client whose raw scale is
    ten times larger does not get ten times the say; entries not answered are 0. A client
    with constant scores (std 0) carries no ranking information: all its entries become 0.

    Known answer: scores (1, 2, 3) → (−1.2247, 0, 1.2247)."""
    if scores.shape != answered.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and answered {tuple(answered.shape)} must both be (C, N)")
    answered = answered.bool()
    # A refused value may be NaN/Inf; it must not reach the statistics (0 * NaN = NaN).
    x = torch.where(answered, scores.double(), 0.0)
    n = answered.sum(1, keepdim=True).clamp(min=1)
    mean = x.sum(1, keepdim=True) / n
    centred = torch.where(answered, x - mean, 0.0)
    std = (centred.pow(2).sum(1, keepdim=True) / n).sqrt()
    z = torch.where(std > NORMALISE_EPS, centred / std.clamp(min=NORMALISE_EPS), 0.0)
    return z.float()


def renormalise(weights: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """(N, C) weights restricted to the available clients of each row and rescaled to sum
    to 1 there; a row with no available client (or zero weight on all of them) is all 0.
    Always finite and non-negative."""
    if weights.shape != available.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and available {tuple(available.shape)} differ")
    w = torch.where(available.bool() & torch.isfinite(weights), weights.clamp(min=0), 0.0)
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / total.clamp(min=1e-30), 0.0)


def cap_weights(weights: torch.Tensor, available: torch.Tensor, max_weight: float) -> torch.Tensor:
    """(R, C) rows that sum to 1 over their available entries → the same rows with no entry
    above ``max(max_weight, 1/n)`` (n: the row's available entries), the excess handed to
    the others in proportion to their weight (evenly if they all have none). Rows of all
    zeros stay so. Differentiable (the router is fit under the cap).

    Why: no single client may own the fusion (issue 23 item 1: a client that gamed the
    router's fit earned weight 0.92 and steered GRPO alone). Known answer, cap 0.5:
    (0.9, 0.08, 0.02) → (0.5, 0.4, 0.1)."""
    if not 0.0 < max_weight <= 1.0:
        raise ValueError(f"max_weight must be in (0, 1], got {max_weight}")
    if max_weight >= 1.0 or weights.numel() == 0:
        return weights
    avail = available.bool()
    n = avail.sum(-1, keepdim=True).clamp(min=1).to(weights.dtype)
    cap = torch.clamp(1.0 / n, min=max_weight)
    w = torch.where(avail, weights, 0.0)
    for _ in range(weights.shape[-1]):  # each pass caps at least one more entry, or changes nothing
        excess = (w - cap).clamp(min=0).sum(-1, keepdim=True)
        w = torch.minimum(w, cap)
        free = avail & (w < cap - 1e-9)
        free_mass = torch.where(free, w, 0.0).sum(-1, keepdim=True)
        even = free.to(w.dtype) / free.sum(-1, keepdim=True).clamp(min=1)
        share = torch.where(free_mass > 0, torch.where(free, w, 0.0) / free_mass.clamp(min=1e-30), even)
        w = w + excess * share
    return w


def fuse(normalised: torch.Tensor, weights: torch.Tensor, answered: torch.Tensor,
         max_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused reward per item: ``Σ_c w[n, c] · z[c, n]`` with ``w`` renormalised over the
    clients that answered item ``n``. Returns (rewards (N,), covered (N,) bool); an item no
    client answered (or only clients of weight 0 did) has reward 0 and ``covered`` False.

    ``normalised``: (C, N) from :func:`normalise_scores`; ``weights``: (N, C), e.g. a
    router's per-prompt weights repeated over the prompt's completions. ``max_weight``:
    no client's share of an item above it (:func:`cap_weights`)."""
    if normalised.dim() != 2 or weights.shape != (normalised.shape[1], normalised.shape[0]):
        raise ValueError(f"weights must be (N, C) = {(normalised.shape[1], normalised.shape[0])}, "
                         f"got {tuple(weights.shape)}")
    available = answered.bool().T
    w = cap_weights(renormalise(weights, available), available, max_weight)
    rewards = (w * torch.where(available, normalised.T, 0.0)).sum(-1)
    return rewards, w.sum(-1) > 0  # an answering client with zero weight does not cover an item


def expand_to_items(per_prompt: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P, ...) → (P·G, ...): a prompt's row repeated for each of its G completions."""
    if group_size < 1:
        raise ValueError("group_size must be >= 1")
    return per_prompt.repeat_interleave(group_size, 0)
