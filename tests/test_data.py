"""easy-VQA loading, Dirichlet partitions, preference pairs, local pair files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsecure.data.easyvqa import answer_type, answers, decode_png, image_png, load_image, load_records
from fedsecure.data.local import load_pairs_jsonl
from fedsecure.data.partition import category, split_federation
from fedsecure.data.preferences import build_pairs, holdout
from fedsecure.data.shares import client_pairs, server_records


def test_easyvqa_ships_real_data() -> None:
    train, test = load_records("train"), load_records("test")
    assert len(train) > 30_000 and len(test) > 5_000
    assert len(answers()) == 13 and {answer_type(a) for a in answers()} == {"yesno", "shape", "color"}
    img = load_image("train", train[0].image_id)
    assert img.shape == (64, 64, 3) and img.dtype.name == "uint8"
    assert (decode_png(image_png("train", train[0].image_id)) == img).all()


def test_split_is_disjoint_reproducible_and_non_iid() -> None:
    a = split_federation(clients=["a", "b", "c"], alpha=0.1, seed=3)
    assert a == split_federation(clients=["a", "b", "c"], alpha=0.1, seed=3)
    by_id = {r.record_id: r for r in load_records("train")}
    shares = [set(v) for v in a.clients.values()]
    assert all(not (x & y) for i, x in enumerate(shares) for y in shares[i + 1:])
    server_images = {by_id[i].image_id for i in a.public_pool + a.seed_set}
    client_images = {by_id[i].image_id for s in shares for i in s}
    assert not server_images & client_images  # disjoint by image, not just by record
    assert not set(a.public_pool) & set(a.seed_set)
    mixes = [Counter(category(by_id[i]) for i in s) for s in shares]
    top = [m.most_common(1)[0][0] for m in mixes]
    assert len(set(top)) > 1 or alpha_spread(mixes) > 0.2  # alpha=0.1 gives skewed shares


def alpha_spread(mixes: list[Counter]) -> float:  # type: ignore[type-arg]
    cats = set().union(*mixes)
    shares = [[m[c] / max(1, sum(m.values())) for c in sorted(cats)] for m in mixes]
    return max(abs(x - y) for col in zip(*shares, strict=True) for x in col for y in col)


def test_server_pool_is_independent_of_the_client_list() -> None:
    pool, seed_set = server_records(seed=0)
    split = split_federation(clients=["x", "y"], seed=0)
    assert [r.record_id for r in pool] == list(split.public_pool)
    assert [r.record_id for r in seed_set] == list(split.seed_set)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), hard=st.floats(0, 1))
def test_pairs_prefer_the_correct_answer(seed: int, hard: float) -> None:
    records = load_records("train")[:200]
    pairs = build_pairs(records, seed=seed, hard_fraction=hard, check_images=False)
    for r, p in zip(records, pairs, strict=True):
        assert p.chosen == r.answer and p.rejected != r.answer and p.rejected in answers()
        if p.hard:
            assert answer_type(p.rejected) == answer_type(p.chosen)
    assert pairs == build_pairs(records, seed=seed, hard_fraction=hard, check_images=False)


def test_image_clients_only_get_questions_they_can_judge() -> None:
    pairs = client_pairs(name="b", clients=["a", "b"], kind="image", limit=500)
    assert pairs and all(answer_type(p.chosen) != "yesno" for p in pairs)
    train, held = holdout(pairs, fraction=0.2, seed=0)
    assert not {p.image_id for p in train} & {p.image_id for p in held}
    with pytest.raises(ValueError, match="not one of"):
        client_pairs(name="z", clients=["a"], kind="text")


def _write(tmp: Path, lines: list[str]) -> Path:
    path = tmp / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_local_pairs_file_validation_names_the_record(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(image_png("train", 0))
    ok = {"id": "r1", "image": "img.png", "question": "what color is the shape?", "chosen": "blue", "rejected": "red"}
    pairs = load_pairs_jsonl(_write(tmp_path, [json.dumps(ok)]), needs_images=True)
    assert pairs[0].image_path.endswith("img.png")
    cases = [
        ([], "empty"),
        (["{not json"], "pairs.jsonl:1: corrupt record"),
        ([json.dumps({**ok, "chosen": "purple"})], "record r1: unknown answer 'purple'"),
        ([json.dumps({**ok, "image": "missing.png"})], "record r1: image missing.png not found"),
        ([json.dumps({k: v for k, v in ok.items() if k != "image"})], "record r1: missing image"),
        ([json.dumps(ok), json.dumps({**ok, "id": "r2", "rejected": "blue"})], "pairs.jsonl:2 record r2: chosen and"),
        ([json.dumps({**ok, "question": ""})], "pairs.jsonl:1: record must have"),
    ]
    for lines, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            load_pairs_jsonl(_write(tmp_path, lines), needs_images=True)
    assert load_pairs_jsonl(_write(tmp_path, [json.dumps({**ok, "image": ""})]), needs_images=False)


@given(st.binary(max_size=64))
def test_decode_png_refuses_junk(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_png(data)
