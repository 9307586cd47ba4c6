"""A client's share of secure aggregation: its attention adapters' B matrices go out
encrypted, one group per modality stack, backbone and block shape
(``attn.image@<backbone>-<shape>``, :mod:`fedsecure.models.groups`), pre-weighted by
its share of the round's pairs; published means come back and replace them. MLP adapters
and heads never leave the client (docs/design.md §5)."""

from __future__ import annotations

import numpy as np
import torch

from fedsecure.crypto.ckks_encryptor import Encryptor
from fedsecure.crypto.packing import TensorLayout, encoding_for, parse_plain_encoding
from fedsecure.errors import CkksError
from fedsecure.models.groups import GroupKey
from fedsecure.models.reward import RewardModel

from client_sdk.outcomes import Aggregate, Update


def group_of(model: RewardModel, family: str, parameter: str) -> str:
    """The aggregation group of an adapter parameter: family, its stack, this model's
    backbone and block shape (``attn.text@64c6b60ccd0c-h64l2a4m128``)."""
    return GroupKey.of(family=family, stack=parameter.split(".", 1)[0], backbone_sha256=model.config.backbone_sha256,
                       shape=model.block_shape).name


def adapter_groups(model: RewardModel, family: str) -> dict[str, dict[str, np.ndarray]]:
    """Group -> {parameter name: values} of the attention adapters' B matrices."""
    params = dict(model.named_parameters())
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in model.attention_adapter_names():
        out.setdefault(group_of(model, family, name), {})[name] = params[name].detach().cpu().double().numpy()
    return out


def clip_shared_adapters(model: RewardModel, *, bound: float) -> int:
    """Clamp the shared adapters' values into the federation's CKKS bound, in the model
    itself (so what is kept and what is shared agree); returns how many were clamped.

    Why: every weighted sum must stay inside ``value_bound`` to decrypt correctly, so a
    value outside it is refused by the encryptor, and a client whose B matrices grew past
    it (long local training) could never contribute again. Clamping is post-processing of
    the DP-trained model: it costs no privacy budget."""
    params = dict(model.named_parameters())
    clamped = 0
    with torch.no_grad():
        for name in model.attention_adapter_names():
            p = params[name]
            clamped += int((p.abs() > bound).sum())
            p.clamp_(-bound, bound)
    return clamped


def encrypt_adapters(model: RewardModel, *, encryptor: Encryptor, family: str, weight: float) -> Update:
    """The encrypted update of this client's attention adapters (one section per stack)."""
    groups = adapter_groups(model, family)
    if not groups:
        raise CkksError("the model has no attention adapters to share")
    layouts = {g: TensorLayout.of(t) for g, t in groups.items()}
    encoding = encoding_for(encryptor.context_id, layouts)
    chunks: list[bytes] = []
    for section in encoding.sections:  # sections in name order, each on fresh chunks
        chunks += encryptor.encrypt(layouts[section.name].pack(groups[section.name]), weight=weight)
    return Update(group=family, weight=weight, encoding=str(encoding), chunks=tuple(chunks))


def apply_aggregate(model: RewardModel, aggregate: Aggregate, *, family: str) -> int:
    """Replace this client's adapters of ``aggregate.group`` with the published mean;
    returns how many values changed hands. A layout mismatch raises before any change."""
    mine = adapter_groups(model, family).get(aggregate.group)
    if mine is None:
        return 0  # a group this client does not have (another modality's stack)
    layout = TensorLayout.of(mine)
    digest, numel = parse_plain_encoding(aggregate.encoding)
    if (digest, numel) != (layout.digest, layout.numel) or len(aggregate.data) != 4 * numel:
        raise CkksError(f"aggregate {aggregate.group} does not match this model's adapter layout")
    values = np.frombuffer(aggregate.data, dtype="<f4").astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise CkksError(f"aggregate {aggregate.group} holds non-finite values")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, arr in layout.unpack(values).items():
            params[name].copy_(torch.from_numpy(arr).to(params[name].dtype))
    return numel
