"""FedCola's compensation coefficients (arXiv 2404.12467; docs/design.md §1), the rule the
TRAIN planner will send in ``TrainSpec.compensation``.

For a target client kind m and a parameter p, over the sampled clients S_m that share a
modality with m:

    c_i(p) = n_i · 1[eligible_i(p)] / Σ_{j ∈ S_m} n_j,      w_m ← w_m + Σ_i c_i(p) (w_i − w_m)

Attention parameters of a stack are eligible for every client in S_m holding that stack
(they are aggregated across modalities); other layers (MLPs; the head and fusion layer,
when the server shares them) only for clients of m's own kind. So a same-kind update is
the same-kind average scaled by the same-kind share of S_m: collaborated and
non-collaborated layers move by consistent amounts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedsecure.models.groups import GroupKey, head_kind, mlp_kind

STACKS_OF = {"image_text": frozenset({"image", "text"}), "image": frozenset({"image"}), "text": frozenset({"text"})}
# On a free-text task the image kind reads the response through a text stack as well
# (fedsecure.models.reward): it holds both stacks, like the image+text kind.
FREE_TEXT_STACKS_OF = {**STACKS_OF, "image": frozenset({"image", "text"})}


def stacks_of_kinds(*, closed_answer_set: bool) -> Mapping[str, frozenset[str]]:
    """The stacks each client kind's model holds on a task with or without a closed answer set."""
    return STACKS_OF if closed_answer_set else FREE_TEXT_STACKS_OF


@dataclass(frozen=True)
class Member:
    """A sampled client: its name, kind and number of training pairs."""

    name: str
    kind: str
    samples: int

    def __post_init__(self) -> None:
        if self.kind not in STACKS_OF or self.samples < 0:
            raise ValueError(f"unknown kind {self.kind!r} or negative sample count")


def coefficients(*, target_kind: str, members: Sequence[Member], role: str, stack: str,
                 stacks_of: Mapping[str, frozenset[str]] = STACKS_OF) -> dict[str, float]:
    """c_i(p) for every member, for a parameter of ``role`` ("attention" or "mlp") in
    ``stack`` ("image" or "text") of the target kind's model, or of the role "head" (the
    head and fusion layer, which sit above the stacks: ``stack`` is not checked)
    (``stacks_of``: the stacks of each kind's model, :func:`stacks_of_kinds`)."""
    if target_kind not in stacks_of or (role != "head" and stack not in stacks_of[target_kind]):
        raise ValueError(f"a {target_kind} model has no {stack} stack")
    if role not in ("attention", "mlp", "head"):
        raise ValueError(f"role must be attention, mlp or head, got {role!r}")
    sharing = [m for m in members if stacks_of[m.kind] & stacks_of[target_kind]]
    total = sum(m.samples for m in sharing)
    if total <= 0:
        raise ValueError("no sampled client shares a modality with the target kind")

    def eligible(m: Member) -> bool:
        return stack in stacks_of[m.kind] if role == "attention" else m.kind == target_kind

    return {m.name: (m.samples / total if m in sharing and eligible(m) else 0.0) for m in members}


def check_coefficients(coeffs: Mapping[str, float]) -> None:
    """Refuse coefficients a client must not apply: each in [0, 1], their sum at most 1
    (a finite convex step towards the others' weights). Raises ValueError."""
    for name, c in coeffs.items():
        if not (math.isfinite(c) and 0.0 <= c <= 1.0):
            raise ValueError(f"compensation coefficient of {name!r} is {c}, outside [0, 1]")
    if math.fsum(coeffs.values()) > 1.0 + 1e-9:
        raise ValueError(f"compensation coefficients sum to {math.fsum(coeffs.values())} > 1")


def same_kind_group_coefficient(*, group: GroupKey, members: Sequence[Member],
                                stacks_of: Mapping[str, frozenset[str]] = STACKS_OF) -> float:
    """The one coefficient a client applies to an MLP or head group's published mean: the
    summed c_i of ``members`` (those who uploaded to it) for the group's kind (and stack).
    Checked here, so no caller can send one outside [0, 1] (fail closed)."""
    kind, role = mlp_kind(group.family), "mlp"
    if kind is None:
        kind, role = head_kind(group.family), "head"
    if kind is None:
        raise ValueError(f"{group.name} is not an MLP or head group")
    c = math.fsum(coefficients(target_kind=kind, members=members, role=role, stack=group.stack,
                               stacks_of=stacks_of).values())
    check_coefficients({group.name: c})
    return c
