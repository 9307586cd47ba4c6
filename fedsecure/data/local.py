"""A client's own preference data: JSONL, one pair per line.

``{"id": "...", "image": "scans/0001.png", "question": "...", "chosen": "...", "rejected": "..."}``
(``image`` relative to the file, omitted by text-only clients). Every problem is
reported with the file, line and record id; nothing is trained on a partial file.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedsecure.data.easyvqa import answers
from fedsecure.data.preferences import PreferencePair

REQUIRED = ("id", "question", "chosen", "rejected")


def load_pairs_jsonl(path: Path, *, needs_images: bool) -> list[PreferencePair]:
    """Read and validate a local pair file; raises ValueError naming the bad record."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read local dataset: {exc}") from exc
    pairs: list[PreferencePair] = []
    vocab = set(answers())
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: corrupt record: {exc.msg}") from exc
        if not isinstance(rec, dict) or any(not isinstance(rec.get(k), str) or not rec[k] for k in REQUIRED):
            raise ValueError(f"{where}: record must have non-empty string fields {REQUIRED}")
        where = f"{where} record {rec['id']}"
        for field in ("chosen", "rejected"):
            if rec[field] not in vocab:
                raise ValueError(f"{where}: unknown answer {rec[field]!r} in {field!r}")
        if rec["chosen"] == rec["rejected"]:
            raise ValueError(f"{where}: chosen and rejected are the same answer")
        image = ""
        if needs_images:
            if not rec.get("image"):
                raise ValueError(f"{where}: missing image")
            image_path = (path.parent / rec["image"]).resolve()
            if not image_path.is_file():
                raise ValueError(f"{where}: image {rec['image']} not found")
            image = str(image_path)
        pairs.append(PreferencePair(record_id=str(rec["id"]), split="local", image_id=-1, question=rec["question"],
                                    chosen=rec["chosen"], rejected=rec["rejected"], image_path=image))
    if not pairs:
        raise ValueError(f"{path}: local dataset is empty")
    return pairs
