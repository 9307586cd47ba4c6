"""The benchmarks' exchange (benchmarks/plain_federation.py) runs the federation's own
code: known answers for the published means (pairs-weighted, quorum of two), the
attention mean replacing each client's own, FedCola's coefficient moving the MLP
adapters, and the gate's aux adapters read from the other stack's published mean."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.plain_federation import Participant, apply, aux_for, compensation, publish
from client_sdk.adapter_exchange import adapter_groups
from fedsecure.models.groups import ATTENTION_FAMILY
from fedsecure.models.reward import build_reward_model
from server.planners.compensation import stacks_of_kinds
from tasks.easyvqa.models import reward_config

STACKS = stacks_of_kinds(closed_answer_set=True)


def _model(kind: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, _ = build_reward_model(reward_config(kind=kind))
    with torch.no_grad():  # LoRA B starts at zero: give every client adapters of its own
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05)
    return model


def test_published_means_and_what_each_client_applies() -> None:
    a, b = Participant("a", "image", _model("image", 0), 100), Participant("b", "image", _model("image", 1), 300)
    it = Participant("it", "image_text", _model("image_text", 2), 400)
    t = Participant("t", "text", _model("text", 3), 200)
    everyone = [a, b, it, t]
    before = {p.name: {g: {n: v.copy() for n, v in ts.items()} for f in (ATTENTION_FAMILY, f"mlp_{p.kind}")
                       for g, ts in adapter_groups(p.model, f).items()} for p in everyone}
    published = publish(everyone, mlp=True)
    (image_attn,) = [g for g in published if g.startswith("attn.image")]
    (text_attn,) = [g for g in published if g.startswith("attn.text")]
    (image_mlp,) = [g for g in published if g.startswith("mlp_image.")]
    # the image_text kind's MLPs have one holder: never uploaded, never published
    assert set(published) == {image_attn, text_attn, image_mlp}
    assert (published[image_attn].contributors, published[text_attn].contributors) == (3, 2)
    attn_mean = {n: (100 * before["a"][image_attn][n] + 300 * before["b"][image_attn][n]
                     + 400 * before["it"][image_attn][n]) / 800 for n in before["a"][image_attn]}
    mlp_mean = {n: (100 * before["a"][image_mlp][n] + 300 * before["b"][image_mlp][n]) / 400
                for n in before["a"][image_mlp]}
    # FedCola: c = the image clients' pairs over those of every client sharing the image stack
    c = compensation(published, everyone, stacks_of=STACKS)[image_mlp]
    assert abs(c - 400 / 800) < 1e-12
    apply(published, everyone, stacks_of=STACKS)
    for p in (a, b, it):
        after = adapter_groups(p.model, ATTENTION_FAMILY)[image_attn]
        for n, v in attn_mean.items():
            np.testing.assert_allclose(after[n], v, rtol=1e-5, atol=1e-6)  # the mean replaces their own
    for p in (a, b):
        after = adapter_groups(p.model, "mlp_image")[image_mlp]
        for n, v in mlp_mean.items():
            w = before[p.name][image_mlp][n]
            np.testing.assert_allclose(after[n], w + c * (v - w), rtol=1e-5, atol=1e-6)  # w + c (mean - w)
    it_mlp = adapter_groups(it.model, "mlp_image_text")
    for g, ts in it_mlp.items():
        for n, v in ts.items():
            np.testing.assert_array_equal(v, before["it"][g][n])  # nothing published for it: unchanged
    aux = aux_for(t, published, other_stack="image")
    assert aux is not None and set(aux)
    assert aux_for(a, published, other_stack="text") is not None  # the image client's gate reads text
    assert aux_for(t, {g: x for g, x in published.items() if g != image_attn}, other_stack="image") is None


def test_attention_only_rows_publish_no_mlp_group() -> None:
    a, b = Participant("a", "image", _model("image", 0), 10), Participant("b", "image", _model("image", 1), 10)
    published = publish([a, b], mlp=False)
    assert published and all(g.startswith("attn.") for g in published)


def test_shared_heads_move_by_the_same_kinds_coefficient_and_other_kinds_keep_theirs() -> None:
    """``share_heads``: the two image+text clients' heads and fusion layers are averaged
    (pairs-weighted) and each moves by FedCola's same-kind coefficient, as its MLPs do; the
    lone text client's head is neither published nor touched."""
    x, y = (Participant(n, "image_text", _model("image_text", s), w) for n, s, w in (("x", 0, 100), ("y", 1, 300)))
    t = Participant("t", "text", _model("text", 2), 400)
    for p, shift in ((x, 0.1), (y, -0.2)):  # heads trained apart (they start alike: the federation seed)
        with torch.no_grad():
            for name in p.model.head_names():
                dict(p.model.named_parameters())[name].add_(shift)
    before = {p.name: {g: {n: v.copy() for n, v in ts.items()} for g, ts in adapter_groups(p.model, f"head_{p.kind}").items()}
              for p in (x, y, t)}
    published = publish([x, y, t], mlp=True, heads=True)
    heads = sorted(g for g in published if g.startswith("head_"))
    assert [g.split("@")[0] for g in heads] == ["head_image_text.fuse", "head_image_text.head"]
    c = compensation(published, [x, y, t], stacks_of=STACKS)
    assert abs(c[heads[0]] - 400 / 800) < 1e-12 and c[heads[0]] == c[heads[1]]  # same-kind pairs over S_m's
    apply(published, [x, y, t], stacks_of=STACKS)
    for g in heads:
        for p in (x, y):
            after = adapter_groups(p.model, "head_image_text")[g]
            for n, w in before[p.name][g].items():
                mean = (100 * before["x"][g][n] + 300 * before["y"][g][n]) / 400
                np.testing.assert_allclose(after[n], w + c[g] * (mean - w), rtol=1e-5, atol=1e-6)
    for g, ts in adapter_groups(t.model, "head_text").items():
        for n, v in ts.items():
            np.testing.assert_array_equal(v, before["t"][g][n])
    assert not any(g.startswith("head_") for g in publish([x, y, t], mlp=True))  # off by default
