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
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsecure.data.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from fedsecure.data.preferences import PreferencePair
from fedsecure.errors import FedsecureError

REQUIRED = ("id", "question", "chosen", "rejected")
COLUMNS = (*REQUIRED, "image")
REPORT_LINES = 20  # bad records listed in an exception's message (the report holds them all)

# Bounds on what a data file may make the checker hold (issue 23 item 10: a 427 KiB Parquet
# file once took 2.5 GB; a 5,000-digit integer or deep nesting aborted the whole check).
MAX_LINE_BYTES = 1 << 20            # one JSONL record
MAX_TEXT_CHARS = 4096               # one field's text
MAX_TABLE_BYTES = 256 << 20         # a Parquet or `datasets` table, uncompressed


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
        yield from _jsonl_records(path)
        return
    try:
        if form == "parquet":
            yield from _parquet_records(path)
            return
        from datasets import DatasetDict, load_from_disk

        _check_datasets_folder(path)
        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            raise ValueError(f"holds splits {sorted(data)}: save the one split to use")
        rows = iter(data)  # one row at a time, from the memory-mapped table
    except ImportError as exc:
        yield "file", ValueError(f"reading {form} needs {exc.name} (installed with fedsecure)")
        return
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported as the file's
        yield "file", exc
        return
    for index, row in enumerate(rows):
        yield f"row {index}", row


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Parquet rows a batch at a time, text columns kept dictionary-encoded until each row
    is taken, and a row with a field too long refused before it is materialised: a small
    file can inflate (compression, a dictionary value repeated in every row)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    size = sum(meta.row_group(i).column(j).total_uncompressed_size
               for i in range(meta.num_row_groups) for j in range(meta.num_columns))
    if size > MAX_TABLE_BYTES:
        raise ValueError(f"holds {size} bytes uncompressed, more than the {MAX_TABLE_BYTES} allowed")
    schema = meta.schema.to_arrow_schema()
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    index = 0
    for batch in pq.ParquetFile(path, read_dictionary=text).iter_batches(batch_size=256):
        longest = [0] * batch.num_rows
        for name in text:
            col = batch.column(name)
            if pa.types.is_dictionary(col.type):
                sizes = pc.binary_length(col.dictionary).fill_null(0).to_pylist()
                per_row = [sizes[k] if k is not None else 0 for k in col.indices.to_pylist()]
            else:
                per_row = pc.binary_length(col).fill_null(0).to_pylist()
            longest = [max(a, b) for a, b in zip(longest, per_row, strict=True)]
        for i in range(batch.num_rows):
            if longest[i] > 4 * MAX_TEXT_CHARS:
                yield f"row {index}", ValueError(f"a field is longer than {MAX_TEXT_CHARS} characters")
            else:
                yield f"row {index}", batch.slice(i, 1).to_pylist()[0]
            index += 1


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    """JSONL records one line at a time (bounded memory); a line that is too long, not
    UTF-8, not JSON, too deep or holding an integer Python will not convert is that
    line's own bad record, never the end of the check."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        yield "file", exc
        return
    with fh:
        lineno = 0
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line, bounded reads
                    raw = fh.readline(MAX_LINE_BYTES + 1)
                yield f"line {lineno}", ValueError(f"longer than {MAX_LINE_BYTES} bytes")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield f"line {lineno}", ValueError("not UTF-8 text")
                continue
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {lineno}", ValueError(f"corrupt record: {exc.msg}")
            except (ValueError, RecursionError):  # 5,000-digit integers, deep nesting
                yield f"line {lineno}", ValueError("corrupt record: nested too deeply or a number out of range")


def _check_datasets_folder(path: Path) -> None:
    """A `datasets` folder may only name data files inside itself (its state.json lists
    them by name: `../` or an absolute path once read an Arrow file from elsewhere), none a
    symbolic link, and not more bytes than a table may hold."""
    if (path / "dataset_dict.json").exists():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"unreadable dataset_dict.json ({type(exc).__name__})") from exc
        raise ValueError(f"holds splits {sorted(str(x)[:40] for x in splits)[:10]}: save the one split to use")
    state = path / "state.json"
    try:
        files = json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"unreadable state.json ({type(exc).__name__})") from exc
    total = 0
    for entry in files if isinstance(files, list) else [None]:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"state.json names a data file outside the folder: {str(name)[:80]!r}")
        file = path / name
        if file.is_symlink() or not file.is_file():
            raise ValueError(f"data file {name} is missing or a symbolic link")
        total += file.stat().st_size
    if total > MAX_TABLE_BYTES:
        raise ValueError(f"holds {total} bytes of data files, more than the {MAX_TABLE_BYTES} allowed")


def _image(base: Path, name: str) -> str:
    """The image's path if it lies inside the data folder, is a real file (not a link) and
    decodes as an image of at most ``MAX_IMAGE_PIXELS``; else ValueError saying why."""
    from PIL import Image

    root = base.resolve()
    candidate = base / name
    if Path(name).is_absolute() or candidate.is_symlink():
        raise ValueError(f"image {name[:80]} is outside the data folder or a symbolic link")
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"image {name[:80]} is outside the data folder")
    if not resolved.is_file():
        raise ValueError(f"image {name[:80]} not found")
    if resolved.stat().st_size > MAX_IMAGE_BYTES:
        raise ValueError(f"image {name[:80]} is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        with Image.open(resolved) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"image {name[:80]} has {im.width}x{im.height} pixels, more than allowed")
            im.load()  # decodes it: bytes that are not an image are refused here
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for junk
        raise ValueError(f"image {name[:80]} does not decode as an image ({type(exc).__name__})") from exc
    return str(resolved)


def _pair(rec: Any, base: Path, needs_images: bool, vocab: set[str] | None) -> PreferencePair:
    if not isinstance(rec, dict):
        raise ValueError("a record must be an object with fields " + ", ".join(COLUMNS))
    missing = [k for k in REQUIRED if not isinstance(rec.get(k), str) or not rec[k]]
    if missing:
        raise ValueError(f"missing or empty string fields {missing}")
    long = [k for k in REQUIRED if len(rec[k]) > MAX_TEXT_CHARS]
    if long:
        raise ValueError(f"fields {long} are longer than {MAX_TEXT_CHARS} characters")
    # Control characters (NUL, escape sequences, …) are refused: they are never part of a
    # question or answer, and would reach logs and terminals as they are. Tab and newline
    # are text.
    for k in REQUIRED:
        bad = next((c for c in rec[k] if unicodedata.category(c) == "Cc" and c not in "\t\n"), None)
        if bad is not None:
            raise ValueError(f"field {k!r} holds the control character U+{ord(bad):04X}")
    for name in ("chosen", "rejected") if vocab is not None else ():
        if rec[name] not in vocab:
            raise ValueError(f"unknown answer {rec[name]!r} in {name!r}")
    if rec["chosen"] == rec["rejected"]:
        raise ValueError("chosen and rejected are the same answer")
    image = ""
    if needs_images:
        if not isinstance(rec.get("image"), str) or not rec["image"]:
            raise ValueError("missing image (a PNG path relative to the data's folder)")
        image = _image(base, rec["image"])
    return PreferencePair(record_id=str(rec["id"]), question=rec["question"], chosen=rec["chosen"],
                          rejected=rec["rejected"], image=image)


def check_pairs(path: Path, *, needs_images: bool, answer_set: Sequence[str] | None) -> DataReport:
    """Read every record of a local dataset; never raises for bad records (they are in
    the report), only for a path that is not a dataset at all. ``answer_set``: the task's
    closed answer set, which every chosen and rejected answer must be in (None: free text)."""
    form = _form(path)
    report = DataReport(path, form)
    base = path if form == "datasets" else path.parent
    vocab = None if answer_set is None else set(answer_set)
    seen: dict[str, tuple[str, PreferencePair]] = {}
    rejected_of: dict[str, set[str]] = {}
    held = 0  # bytes of text kept: the whole dataset is bounded, whatever its form
    for position, rec in _records(path, form):
        if held > MAX_TABLE_BYTES:
            report.bad.append(BadRecord(position, "", f"the dataset holds more than {MAX_TABLE_BYTES} bytes of "
                                                      "text; the rest was not read (split it)"))
            break
        if isinstance(rec, Exception):
            report.bad.append(BadRecord(position, "", f"cannot read: {rec}"))
            continue
        report.records += 1
        record_id = rec["id"][:80] if isinstance(rec, dict) and isinstance(rec.get("id"), str) else ""
        try:
            pair = _pair(rec, base, needs_images, vocab)
        except ValueError as exc:
            report.bad.append(BadRecord(position, record_id, str(exc)))
            continue
        # A repeated id is one more rejected response to the same question (free text:
        # a record carries every rejected response its rows give); anything else is refused.
        first = seen.get(pair.record_id)
        if first is not None:
            at, same = first
            if (same.question, same.chosen, same.image) != (pair.question, pair.chosen, pair.image):
                report.bad.append(BadRecord(position, record_id, f"duplicate id with another question, chosen "
                                                                 f"response or image (first at {at})"))
                continue
            if pair.rejected in rejected_of[pair.record_id]:
                report.bad.append(BadRecord(position, record_id, f"duplicate row (first at {at})"))
                continue
        else:
            seen[pair.record_id] = (position, pair)
        rejected_of.setdefault(pair.record_id, set()).add(pair.rejected)
        held += sum(len(x) for x in (pair.record_id, pair.question, pair.chosen, pair.rejected, pair.image))
        report.pairs.append(pair)
    return report


def load_pairs(path: Path, *, needs_images: bool, answer_set: Sequence[str] | None) -> list[PreferencePair]:
    """The pairs of a local dataset; raises DataError with the whole report if any record
    is bad or there is none."""
    report = check_pairs(path, needs_images=needs_images, answer_set=answer_set)
    if not report.ok:
        raise DataError(report)
    return report.pairs

