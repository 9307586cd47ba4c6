"""A client's share of secure aggregation (docs/design.md §5): adapters go out encrypted,
one group per family, modality stack, backbone and block shape
(``attn.image@<backbone>-<shape>``, :mod:`fedsecure.models.groups`), pre-weighted by the
client's share of the round's pairs; published means come back.

Families (FedCola's rule):
- ``attn``: the attention adapters' B matrices, aggregated across every client holding
  the stack; the mean replaces the client's own;
- ``mlp_<kind>``: the MLP adapters (A and B), aggregated only among clients of the same
  kind; the client moves towards the mean by the server's compensation coefficient c
  (``w ← w + c·(mean − w)``), so collaborated and non-collaborated layers move
  consistently;
- ``head_<kind>`` (only where the server asks, ``[training] share_heads``): the score
  head and fusion layer, among clients of the same kind, applied like the MLP family with
  the server's coefficient (their models start from the same head: the federation seed);
- a uni-modal client also downloads the *other* stack's attention mean as aux adapters
  for its gate (:mod:`fedsecure.models.gate`).
Gates never leave the client, nor do heads unless the server asks for them.
"""

from __future__ import annotations

import numpy as np
import torch

from fedsecure.crypto.ckks_encryptor import Encryptor
from fedsecure.crypto.packing import TensorLayout, encoding_for, parse_plain_encoding
from fedsecure.errors import CkksError, InvalidTaskSpec
from fedsecure.models.groups import ATTENTION_FAMILY, GroupKey, head_family, mlp_family
from fedsecure.models.reward import SHARED_ADAPTER, RewardModel
from fedsecure.models.slots import attention_module, slot_of

MLP = "mlp"  # in an upload request ("attn+mlp"): "this client's own kind's MLP family"
HEAD = "head"  # in an upload request ("attn+mlp+head"): "this client's own kind's head family"


def upload_families(model: RewardModel, upload_group: str) -> list[str]:
    """The families a TrainSpec's ``upload_group`` asks for ("attn", "attn+mlp",
    "attn+mlp+head")."""
    families = []
    for token in upload_group.split("+"):
        if token == ATTENTION_FAMILY:
            families.append(ATTENTION_FAMILY)
        elif token == MLP:
            families.append(mlp_family(model.config.kind))
        elif token == HEAD:
            families.append(head_family(model.config.kind))
        else:
            raise InvalidTaskSpec(f"upload group {upload_group!r}: unknown family {token!r}")
    if len(set(families)) != len(families):
        raise InvalidTaskSpec(f"upload group {upload_group!r} names a family twice")
    return families


def family_parameters(model: RewardModel, family: str) -> list[str]:
    """The parameters a family shares ([] for another kind's MLP or head family)."""
    if family == ATTENTION_FAMILY:
        return model.attention_adapter_names()
    if family == mlp_family(model.config.kind):
        return model.mlp_adapter_names()
    if family == head_family(model.config.kind):
        return model.head_names()
    return []

from client_sdk.outcomes import Aggregate, Update


def group_of(model: RewardModel, family: str, parameter: str) -> str:
    """The aggregation group of an adapter parameter: family, its stack, this model's
    backbone and block shape (``attn.text@64c6b60ccd0c-h64l2a4m128``)."""
    return GroupKey.of(family=family, stack=parameter.split(".", 1)[0], backbone_sha256=model.config.backbone_sha256,
                       shape=model.block_shape).name


def adapter_groups(model: RewardModel, family: str) -> dict[str, dict[str, np.ndarray]]:
    """Group -> {parameter name: values} of a family's adapters."""
    params = dict(model.named_parameters())
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in family_parameters(model, family):
        out.setdefault(group_of(model, family, name), {})[name] = params[name].detach().cpu().double().numpy()
    return out


def clip_shared_adapters(model: RewardModel, *, bound: float, families: list[str] | None = None) -> int:
    """Clamp the shared adapters' values into the federation's CKKS bound, in the model
    itself (so what is kept and what is shared agree); returns how many were clamped.

    Why: every weighted sum must stay inside ``value_bound`` to decrypt correctly, so a
    value outside it is refused by the encryptor, and a client whose B matrices grew past
    it (long local training) could never contribute again. Clamping is post-processing of
    the DP-trained model: it costs no privacy budget."""
    params = dict(model.named_parameters())
    clamped = 0
    with torch.no_grad():
        for name in (n for family in (families or [ATTENTION_FAMILY]) for n in family_parameters(model, family)):
            p = params[name]
            clamped += int((p.abs() > bound).sum())
            p.clamp_(-bound, bound)
    return clamped


def encrypt_adapters(model: RewardModel, *, encryptor: Encryptor, families: list[str], weight: float) -> Update:
    """The encrypted update of this client's adapters of ``families`` (one section per group)."""
    groups = {g: t for family in families for g, t in adapter_groups(model, family).items()}
    if not groups:
        raise CkksError("the model has no adapters to share")
    layouts = {g: TensorLayout.of(t) for g, t in groups.items()}
    encoding = encoding_for(encryptor.context_id, layouts)
    chunks: list[bytes] = []
    for section in encoding.sections:  # sections in name order, each on fresh chunks
        chunks += encryptor.encrypt(layouts[section.name].pack(groups[section.name]), weight=weight)
    return Update(group="+".join(families), weight=weight, encoding=str(encoding), chunks=tuple(chunks))


def _values(aggregate: Aggregate, layout: TensorLayout) -> dict[str, np.ndarray]:
    digest, numel = parse_plain_encoding(aggregate.encoding)
    if (digest, numel) != (layout.digest, layout.numel) or len(aggregate.data) != 4 * numel:
        raise CkksError(f"aggregate {aggregate.group} does not match this model's adapter layout")
    values = np.frombuffer(aggregate.data, dtype="<f4").astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise CkksError(f"aggregate {aggregate.group} holds non-finite values")
    return layout.unpack(values)


def apply_aggregate(model: RewardModel, aggregate: Aggregate, *, family: str, coefficient: float = 1.0) -> int:
    """Move this client's adapters of ``aggregate.group`` towards the published mean,
    ``w ← w + c·(mean − w)`` (c = 1: replace); returns how many values changed hands. A
    layout mismatch raises before any change."""
    mine = adapter_groups(model, family).get(aggregate.group)
    if mine is None:
        return 0  # a group this client does not have (another modality's stack)
    if not 0.0 <= coefficient <= 1.0:
        raise InvalidTaskSpec(f"coefficient {coefficient} for {aggregate.group} is outside [0, 1]")
    layout = TensorLayout.of(mine)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, arr in _values(aggregate, layout).items():
            mean = torch.from_numpy(arr).to(params[name].dtype)
            params[name].add_(coefficient * (mean - params[name]))
    return layout.numel


def aux_adapters(model: RewardModel, aggregate: Aggregate) -> dict[str, torch.Tensor]:
    """The other stack's published attention mean as the gate's aux adapters, by slot
    position (``"0:q"``). Refused (InvalidTaskSpec) unless the group is an attention
    group of a stack this model lacks, on this model's backbone and block shape, and its
    layout is exactly what that stack's B matrices would be for this model's shapes."""
    try:
        key = GroupKey.parse(aggregate.group)
    except ValueError as exc:
        raise InvalidTaskSpec(str(exc)) from exc
    own = {name.split(".", 1)[0] for name in model.attention_adapter_names()}
    if len(own) != 1:
        raise InvalidTaskSpec("only a uni-modal model takes aux adapters (it has one stack)")
    (stack,) = own
    if key.family != ATTENTION_FAMILY or key.stack == stack or key.stack not in ("image", "text"):
        raise InvalidTaskSpec(f"aux group {aggregate.group}: expected the other modality's attention adapters")
    if not key.declared_by(model.config.backbone_sha256, model.block_shape):
        raise InvalidTaskSpec(f"aux group {aggregate.group} is for another backbone or block shape than "
                              f"this model's ({model.block_shape})")
    params = dict(model.named_parameters())
    expected: dict[str, np.ndarray] = {}
    for name in model.attention_adapter_names():
        slot = slot_of(name)
        assert slot is not None
        other = (f"{attention_module(key.stack, slot.block, slot.role, family=model.config.tower_family)}"
                 f".lora_B.{SHARED_ADAPTER}.weight")
        expected[other] = np.zeros(tuple(params[name].shape))
    try:
        values = _values(aggregate, TensorLayout.of(expected))
    except CkksError as exc:
        raise InvalidTaskSpec(f"aux group {aggregate.group}: {exc}") from exc
    return {slot_of(name).position: torch.from_numpy(arr).float()  # type: ignore[union-attr]
            for name, arr in values.items()}
