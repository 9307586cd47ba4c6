"""Known answers for FedCola's compensation rule on a hand-computed 3-client example:
A image+text (100 pairs), B image-only (300), C text-only (600)."""

from __future__ import annotations

import pytest

from fedsecure.models.groups import GroupKey
from server.planners.compensation import Member, check_coefficients, coefficients, same_kind_group_coefficient

A, B, C = Member("a", "image_text", 100), Member("b", "image", 300), Member("c", "text", 600)
ALL = (A, B, C)


def test_image_only_target() -> None:
    # S_m = {A, B} (C shares no modality with an image-only model): Σ n = 400.
    assert coefficients(target_kind="image", members=ALL, role="attention", stack="image") == \
        {"a": 0.25, "b": 0.75, "c": 0.0}
    assert coefficients(target_kind="image", members=ALL, role="mlp", stack="image") == {"a": 0.0, "b": 0.75, "c": 0.0}


def test_image_text_target() -> None:
    # S_m = {A, B, C}: Σ n = 1000. Image attention: A and B hold an image stack; text: A and C.
    assert coefficients(target_kind="image_text", members=ALL, role="attention", stack="image") == \
        {"a": 0.1, "b": 0.3, "c": 0.0}
    assert coefficients(target_kind="image_text", members=ALL, role="attention", stack="text") == \
        {"a": 0.1, "b": 0.0, "c": 0.6}
    assert coefficients(target_kind="image_text", members=ALL, role="mlp", stack="text") == \
        {"a": 0.1, "b": 0.0, "c": 0.0}


def test_text_only_target() -> None:
    got = coefficients(target_kind="text", members=ALL, role="attention", stack="text")
    assert got == pytest.approx({"a": 1 / 7, "b": 0.0, "c": 6 / 7})
    assert coefficients(target_kind="text", members=ALL, role="mlp", stack="text") == \
        pytest.approx({"a": 0.0, "b": 0.0, "c": 6 / 7})


def test_bad_requests_and_coefficients_are_refused() -> None:
    with pytest.raises(ValueError, match="has no image stack"):
        coefficients(target_kind="text", members=ALL, role="attention", stack="image")
    with pytest.raises(ValueError, match="no sampled client"):
        coefficients(target_kind="image", members=(C,), role="attention", stack="image")
    for bad, text in (({"a": -0.1}, "outside"), ({"a": 1.5}, "outside"), ({"a": float("nan")}, "outside"),
                      ({"a": 0.7, "b": 0.6}, "sum to")):
        with pytest.raises(ValueError, match=text):
            check_coefficients(bad)
    check_coefficients(coefficients(target_kind="image_text", members=ALL, role="attention", stack="image"))


def test_an_mlp_groups_coefficient_is_the_sum_of_its_members_c() -> None:
    """What the TRAIN planner sends and the benchmarks' exchange applies: one number per
    MLP group, the summed c_i (image kind: B's 300 of the 400 sharing the image stack)."""
    group = GroupKey.parse(GroupKey.of(family="mlp_image", stack="image", backbone_sha256="0" * 64,
                                       shape="h64l2a4m128").name)
    assert same_kind_group_coefficient(group=group, members=ALL) == pytest.approx(0.75)
    attention = GroupKey.parse(GroupKey.of(family="attn", stack="image", backbone_sha256="0" * 64,
                                           shape="h64l2a4m128").name)
    with pytest.raises(ValueError, match="not an MLP or head group"):
        same_kind_group_coefficient(group=attention, members=ALL)
    # the head and fusion layer sit above the stacks: the same same-kind share, any stack name
    for stack in ("head", "fuse"):
        head = GroupKey.parse(GroupKey.of(family="head_image", stack=stack, backbone_sha256="0" * 64,
                                          shape="h64l2a4m128").name)
        assert same_kind_group_coefficient(group=head, members=ALL) == pytest.approx(0.75)
