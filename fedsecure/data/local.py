"""A client's own preference data, in one of three forms with the same columns
``id, question, chosen, rejected`` and ``image`` (a PNG path relative to the data's folder;
omitted by text-only clients):

- JSONL, one record per line (``pairs.jsonl``);
- Parquet (``pairs.parquet``);
- a Hugging Face ``datasets`` folder saved with ``save_to_disk`` (read with ``load_from_disk``).

:func:`check_pairs` reads every record and reports *every* bad one with its position (line
or row) and the reason; :func:`load_pairs` refuses a dataset with any bad record, with that
report, so nothing is ever trained on part of a file (`fedsecure data check PATH` prints
the report before a client starts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsecure.data.easyvqa import answers
from fedsecure.data.preferences import PreferencePair
from fedsecure.errors import FedsecureError

REQUIRED = ("id", "question", "chosen", "rejected")
COLUMNS = (*REQUIRED, "image")
REPORT_LINES = 20  # bad records listed in an exception's message (the report holds them all)


class DataError(FedsecureError, ValueError):
    """A local dataset with bad records; ``report`` lists every one of them."""

    def __init__(self, report: DataReport) -> None:
        self.report = report
        super().__init__(report.describe(limit=REPORT_LINES))


@dataclass(frozen=True)
class BadRecord:
    """One refused record: where it is (``line 12``, ``row 3``), its id if readable, why."""

    position: str
    record_id: str
    reason: str


@dataclass
class DataReport:
    """What :func:`check_pairs` found: the readable pairs and every bad record."""

    path: Path
    form: str
    records: int = 0
    pairs: list[PreferencePair] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every record is usable and there is at least one."""
        return not self.bad and bool(self.pairs)

    def describe(self, *, limit: int | None = None) -> str:
        """A human-readable report (the first ``limit`` bad records, then a count)."""
        head = f"{self.path} ({self.form}): {self.records} records, {len(self.pairs)} usable, {len(self.bad)} bad"
        shown = self.bad if limit is None else self.bad[:limit]
        lines = [head, *(f"  {b.position}{f' record {b.record_id}' if b.record_id else ''}: {b.reason}"
                         for b in shown)]
        if len(shown) < len(self.bad):
            lines.append(f"  ... and {len(self.bad) - len(shown)} more (`fedsecure data check {self.path}`)")
        if not self.records:
            lines.append("  the dataset is empty")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Every figure and every bad record, for `fedsecure data check --json`."""
        return {"path": str(self.path), "form": self.form, "records": self.records, "usable": len(self.pairs),
                "bad": [{"position": b.position, "id": b.record_id, "reason": b.reason} for b in self.bad],
                "ok": self.ok}


def _form(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "datasets"
        raise DataError(DataReport(path, "folder", bad=[BadRecord("folder", "", "not a `datasets` folder saved with "
                                                                  "save_to_disk (no dataset_info.json)")]))
    if path.suffix == ".parquet":
        return "parquet"
    return "jsonl"


def _records(path: Path, form: str) -> Iterator[tuple[str, Any]]:
    """(position, record or an exception) for every record, in order."""
    if form == "jsonl":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            yield "file", exc
            return
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield f"line {lineno}", json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"line {lineno}", ValueError(f"corrupt record: {exc.msg}")
        return
    try:
        if form == "parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            from datasets import DatasetDict, load_from_disk

            data = load_from_disk(str(path))
            if isinstance(data, DatasetDict):
                raise ValueError(f"holds splits {sorted(data)}: save the one split to use")
            rows = data.to_list()
    except ImportError as exc:
        yield "file", ValueError(f"reading {form} needs {exc.name} (installed with fedsecure)")
        return
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported as the file's
        yield "file", exc
        return
    for index, row in enumerate(rows):
        yield f"row {index}", row


def _pair(rec: Any, base: Path, needs_images: bool, vocab: set[str]) -> PreferencePair:
    if not isinstance(rec, dict):
        raise ValueError("a record must be an object with fields " + ", ".join(COLUMNS))
    missing = [k for k in REQUIRED if not isinstance(rec.get(k), str) or not rec[k]]
    if missing:
        raise ValueError(f"missing or empty string fields {missing}")
    for name in ("chosen", "rejected"):
        if rec[name] not in vocab:
            raise ValueError(f"unknown answer {rec[name]!r} in {name!r}")
    if rec["chosen"] == rec["rejected"]:
        raise ValueError("chosen and rejected are the same answer")
    image = ""
    if needs_images:
        if not isinstance(rec.get("image"), str) or not rec["image"]:
            raise ValueError("missing image (a PNG path relative to the data's folder)")
        image_path = (base / rec["image"]).resolve()
        if not image_path.is_file():
            raise ValueError(f"image {rec['image']} not found")
        image = str(image_path)
    return PreferencePair(record_id=str(rec["id"]), split="local", image_id=-1, question=rec["question"],
                          chosen=rec["chosen"], rejected=rec["rejected"], image_path=image)


def check_pairs(path: Path, *, needs_images: bool) -> DataReport:
    """Read every record of a local dataset; never raises for bad records (they are in
    the report), only for a path that is not a dataset at all."""
    form = _form(path)
    report = DataReport(path, form)
    base = path if form == "datasets" else path.parent
    vocab = set(answers())
    seen: dict[str, str] = {}
    for position, rec in _records(path, form):
        if isinstance(rec, Exception):
            report.bad.append(BadRecord(position, "", f"cannot read: {rec}"))
            continue
        report.records += 1
        record_id = str(rec.get("id", "")) if isinstance(rec, dict) else ""
        try:
            pair = _pair(rec, base, needs_images, vocab)
        except ValueError as exc:
            report.bad.append(BadRecord(position, record_id, str(exc)))
            continue
        if pair.record_id in seen:
            report.bad.append(BadRecord(position, record_id, f"duplicate id (first at {seen[pair.record_id]})"))
            continue
        seen[pair.record_id] = position
        report.pairs.append(pair)
    return report


def load_pairs(path: Path, *, needs_images: bool) -> list[PreferencePair]:
    """The pairs of a local dataset; raises DataError with the whole report if any record
    is bad or there is none."""
    report = check_pairs(path, needs_images=needs_images)
    if not report.ok:
        raise DataError(report)
    return report.pairs

