"""easy-VQA loading, Dirichlet partitions, preference pairs, local pair files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsecure.data.images import decode_png, image_png, load_image
from fedsecure.data.local import DataError, check_pairs, load_pairs
from fedsecure.data.preferences import holdout
from tasks.easyvqa.data import answer_type, answers, load_records
from tasks.easyvqa.pairs import build_pairs
from tasks.easyvqa.partition import category, split_federation
from tasks.easyvqa.shares import client_pairs, server_records


def test_easyvqa_ships_real_data() -> None:
    train, test = load_records("train"), load_records("test")
    assert len(train) > 30_000 and len(test) > 5_000
    assert len(answers()) == 13 and {answer_type(a) for a in answers()} == {"yesno", "shape", "color"}
    img = load_image(train[0].image)
    assert img.shape == (64, 64, 3) and img.dtype.name == "uint8"
    assert (decode_png(image_png(train[0].image)) == img).all()
    assert {r.group for r in train} == {"yesno", "shape", "color"}
    assert all(r.group == answer_type(r.answer) for r in train[:500])


def test_split_is_disjoint_reproducible_and_non_iid() -> None:
    a = split_federation(clients=["a", "b", "c"], alpha=0.1, seed=3)
    assert a == split_federation(clients=["a", "b", "c"], alpha=0.1, seed=3)
    by_id = {r.record_id: r for r in load_records("train")}
    shares = [set(v) for v in a.clients.values()]
    assert all(not (x & y) for i, x in enumerate(shares) for y in shares[i + 1:])
    server_images = {by_id[i].image for i in a.public_pool + a.seed_set}
    client_images = {by_id[i].image for s in shares for i in s}
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
    assert not {p.image for p in train} & {p.image for p in held}
    with pytest.raises(ValueError, match="not one of"):
        client_pairs(name="z", clients=["a"], kind="text")


def _write(tmp: Path, lines: list[str]) -> Path:
    path = tmp / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_local_pairs_file_validation_names_the_record(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(image_png(load_records("train")[0].image))
    ok = {"id": "r1", "image": "img.png", "question": "what color is the shape?", "chosen": "blue", "rejected": "red"}
    pairs = load_pairs(_write(tmp_path, [json.dumps(ok)]), needs_images=True, answer_set=answers())
    assert pairs[0].image.endswith("img.png")
    cases = [
        ([], "the dataset is empty"),
        (["{not json"], "line 1: cannot read: corrupt record"),
        ([json.dumps({**ok, "chosen": "purple"})], "line 1 record r1: unknown answer 'purple'"),
        ([json.dumps({**ok, "image": "missing.png"})], "line 1 record r1: image missing.png not found"),
        ([json.dumps({k: v for k, v in ok.items() if k != "image"})], "line 1 record r1: missing image"),
        ([json.dumps(ok), json.dumps({**ok, "id": "r2", "rejected": "blue"})], "line 2 record r2: chosen and"),
        ([json.dumps({**ok, "question": ""})], "line 1 record r1: missing or empty string fields ['question']"),
        ([json.dumps({**ok, "question": "what\x1b[2J color?"})],
         "line 1 record r1: field 'question' holds the control character U+001B"),
        ([json.dumps(ok), json.dumps(ok)], "line 2 record r1: duplicate row (first at line 1)"),
        ([json.dumps(ok), json.dumps({**ok, "rejected": "green", "chosen": "red"})],
         "line 2 record r1: duplicate id with another question, chosen response or image (first at line 1)"),
    ]
    for lines, message in cases:
        with pytest.raises(DataError) as err:
            load_pairs(_write(tmp_path, lines), needs_images=True, answer_set=answers())
        assert message in str(err.value), str(err.value)
    assert load_pairs(_write(tmp_path, [json.dumps({**ok, "image": ""})]), needs_images=False, answer_set=answers())
    # the same id again with another rejected response: one more negative of that record
    two = load_pairs(_write(tmp_path, [json.dumps(ok), json.dumps({**ok, "rejected": "green"})]), needs_images=True,
                     answer_set=answers())
    assert [p.rejected for p in two] == ["red", "green"] and {p.record_id for p in two} == {"r1"}


def test_free_text_pairs_are_accepted_when_the_task_has_no_closed_answer_set(tmp_path: Path) -> None:
    """A hospital's own pairs in free text (issue 25): no vocabulary is imposed unless the
    task declares a closed answer set; structure, images and chosen ≠ rejected still are."""
    (tmp_path / "scan.png").write_bytes(image_png(load_records("train")[0].image))
    rec = {"id": "n1", "image": "scan.png", "question": "Describe the lesion.",
           "chosen": "A 4 mm nodule in the left upper lobe, smooth margins.",
           "rejected": "No abnormality is visible."}
    pairs = load_pairs(_write(tmp_path, [json.dumps(rec)]), needs_images=True, answer_set=None)
    assert pairs[0].chosen == rec["chosen"] and pairs[0].image.endswith("scan.png")
    report = check_pairs(_write(tmp_path, [json.dumps(rec)]), needs_images=True, answer_set=answers())
    assert not report.ok and "unknown answer" in report.bad[0].reason  # a closed set refuses the same row
    same = {**rec, "rejected": rec["chosen"]}
    assert "chosen and rejected are the same" in check_pairs(
        _write(tmp_path, [json.dumps(same)]), needs_images=True, answer_set=None).bad[0].reason


def _records(n_bad: int) -> list[dict[str, str]]:
    good = [{"id": f"g{i}", "image": "img.png", "question": "what shape is this?", "chosen": "circle",
             "rejected": "triangle"} for i in range(3)]
    bad = [{"id": f"b{i}", "image": "img.png", "question": "q", "chosen": "circle", "rejected": "circle"}
           for i in range(n_bad)]
    return good[:1] + bad + good[1:]


def test_the_report_lists_every_bad_record_with_its_position(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(image_png(load_records("train")[0].image))
    path = _write(tmp_path, [json.dumps(r) for r in _records(30)])
    report = check_pairs(path, needs_images=True, answer_set=answers())
    assert (report.records, len(report.pairs), len(report.bad)) == (33, 3, 30) and not report.ok
    assert [b.position for b in report.bad] == [f"line {i}" for i in range(2, 32)]
    assert all(b.reason == "chosen and rejected are the same answer" for b in report.bad)
    with pytest.raises(DataError) as err:
        load_pairs(path, needs_images=True, answer_set=answers())
    assert err.value.report.bad == report.bad and "and 10 more" in str(err.value)  # the message stays short


def test_parquet_and_datasets_folders_with_the_same_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    (tmp_path / "img.png").write_bytes(image_png(load_records("train")[0].image))
    records = _records(2)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "pairs.parquet")
    Dataset.from_list(records).save_to_disk(str(tmp_path / "pairs-ds"))
    (tmp_path / "pairs-ds" / "img.png").write_bytes(image_png(load_records("train")[0].image))  # images relative to the folder
    for path, form in ((tmp_path / "pairs.parquet", "parquet"), (tmp_path / "pairs-ds", "datasets")):
        report = check_pairs(path, needs_images=True, answer_set=answers())
        assert report.form == form and [p.record_id for p in report.pairs] == ["g0", "g1", "g2"]
        assert [(b.position, b.record_id) for b in report.bad] == [("row 1", "b0"), ("row 2", "b1")]
    good = [r for r in records if r["id"].startswith("g")]
    pq.write_table(pa.Table.from_pylist(good), tmp_path / "good.parquet")
    assert len(load_pairs(tmp_path / "good.parquet", needs_images=True, answer_set=answers())) == 3
    DatasetDict({"train": Dataset.from_list(good)}).save_to_disk(str(tmp_path / "splits"))
    assert "holds splits ['train']" in check_pairs(tmp_path / "splits", needs_images=False, answer_set=answers()).describe()
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    assert "file: cannot read" in check_pairs(tmp_path / "junk.parquet", needs_images=False, answer_set=answers()).describe()
    with pytest.raises(DataError, match="not a `datasets` folder"):
        check_pairs(tmp_path, needs_images=False, answer_set=answers())


def test_data_check_command_reports_and_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from apps.cli import main

    (tmp_path / "img.png").write_bytes(image_png(load_records("train")[0].image))
    bad = _write(tmp_path, [json.dumps(r) for r in _records(2)])
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "3 usable, 2 bad" in out and "line 2 record b0: chosen and rejected are the same answer" in out
    assert main(["data", "check", str(bad), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and [b["position"] for b in report["bad"]] == ["line 2", "line 3"]
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(_records(0)[0]) + "\n")
    assert main(["data", "check", str(good), "--kind", "text"]) == 0


@given(st.binary(max_size=64))
def test_decode_png_refuses_junk(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_png(data)


def test_the_client_refuses_to_start_on_bad_data_with_the_report(tmp_path: Path, kits,  # type: ignore[no-untyped-def]
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from apps.cli import main

    (tmp_path / "img.png").write_bytes(image_png(load_records("train")[0].image))
    bad = _write(tmp_path, [json.dumps(r) for r in _records(2)])
    code = main(["client", "--kit", str(kits.clients["a"]), "--state", str(tmp_path / "state"), "--pairs", str(bad),
                 "--address", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "2 bad" in err and "line 3 record b1: chosen and rejected are the same answer" in err
    assert not (tmp_path / "state" / "ledger.jsonl").exists()  # nothing charged, nothing trained


def test_hostile_data_files_are_refused_record_by_record(tmp_path: Path) -> None:
    """Attack review (issue 23 item 10): deep nesting gave a traceback, a 5,000-digit integer
    aborted the whole check, images outside the folder, a symbolic link to a system file
    and bytes that are not an image were reported usable. Every bad record now gets its
    own reason and the good ones are still counted."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "img.png").write_bytes(image_png(load_records("train")[0].image))
    (data / "junk.png").write_bytes(b"\x89PNG not really an image")
    (data / "link.png").symlink_to("/etc/hostname")
    (tmp_path / "outside.png").write_bytes(image_png(load_records("train")[1].image))
    ok = {"id": "ok", "image": "img.png", "question": "what color is the shape?", "chosen": "blue", "rejected": "red"}
    lines = [
        json.dumps(ok),
        "[" * 100_000 + "]" * 100_000,
        '{"id": "big", "n": ' + "9" * 5000 + "}",
        json.dumps({**ok, "id": "up", "image": "../outside.png"}),
        json.dumps({**ok, "id": "abs", "image": str(tmp_path / "outside.png")}),
        json.dumps({**ok, "id": "link", "image": "link.png"}),
        json.dumps({**ok, "id": "junk", "image": "junk.png"}),
        json.dumps({**ok, "id": "long", "question": "x" * 5000}),
        json.dumps({**ok, "id": "ok2"}),
    ]
    path = data / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with open(path, "ab") as fh:
        fh.write(b"\xff\xfe not utf-8\n")
    report = check_pairs(path, needs_images=True, answer_set=answers())
    reasons = {b.position: b.reason for b in report.bad}
    assert [p.record_id for p in report.pairs] == ["ok", "ok2"] and len(report.bad) == 8, report.describe()
    assert "nested too deeply or a number out of range" in reasons["line 2"] == reasons["line 3"]
    assert "outside the data folder" in reasons["line 4"] and "outside the data folder" in reasons["line 5"]
    assert "symbolic link" in reasons["line 6"] and "does not decode" in reasons["line 7"]
    assert "longer than" in reasons["line 8"] and "not UTF-8" in reasons["line 10"]


def test_oversized_images_and_tables_and_foreign_arrow_files_are_refused(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset
    from PIL import Image

    import fedsecure.data.local as local

    Image.fromarray(np.zeros((300, 300, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    ok = {"id": "r", "image": "big.png", "question": "what color is the shape?", "chosen": "blue", "rejected": "red"}
    (tmp_path / "p.jsonl").write_text(json.dumps(ok) + "\n")
    old = local.MAX_IMAGE_PIXELS, local.MAX_TABLE_BYTES
    try:
        local.MAX_IMAGE_PIXELS = 200 * 200  # a decompression bomb, scaled down
        assert "more than allowed" in check_pairs(tmp_path / "p.jsonl", needs_images=True, answer_set=answers()).bad[0].reason
        local.MAX_TABLE_BYTES = 50_000      # a table that inflates, scaled down
        rows = [{**ok, "id": f"r{i}", "question": "q" * 4000} for i in range(50)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet", compression="zstd")
        assert (tmp_path / "p.parquet").stat().st_size < 50_000
        assert "more than 50000 bytes of text" in check_pairs(tmp_path / "p.parquet", needs_images=False, answer_set=answers()).describe()
    finally:
        local.MAX_IMAGE_PIXELS, local.MAX_TABLE_BYTES = old
    # A `datasets` folder whose state.json names an Arrow file outside it.
    Dataset.from_list([ok]).save_to_disk(str(tmp_path / "other"))
    Dataset.from_list([{**ok, "id": "mine"}]).save_to_disk(str(tmp_path / "ds"))
    state = json.loads((tmp_path / "ds" / "state.json").read_text())
    foreign = next((tmp_path / "other").glob("*.arrow"))
    state["_data_files"] = [{"filename": f"../other/{foreign.name}"}]
    (tmp_path / "ds" / "state.json").write_text(json.dumps(state))
    assert "outside the folder" in check_pairs(tmp_path / "ds", needs_images=False, answer_set=answers()).describe()
