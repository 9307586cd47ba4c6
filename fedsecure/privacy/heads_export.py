"""The server's record of every privacy-ledger head each client reported, as a JSON file
an auditor can hold (written by ``fedsecure admin heads --out FILE``, read by
``fedsecure audit --server-heads FILE``). The auditor never reads the server's database.

Format (``"format": "fedsecure/ledger-heads/v1"``)::

    {"format": "fedsecure/ledger-heads/v1",
     "clients": {"hospital-a": [{"seq": 1, "entry_sha256": "<hex>", "epsilon": 0.41,
                                  "delta": 1e-05, "epsilon_budget": 8.0}, ...], ...}}

Heads are listed oldest first; ``entry_sha256`` is the ledger entry's hash
(:meth:`fedsecure.privacy.ledger.LedgerEntry.sha256`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedsecure.types import LedgerHead

FORMAT = "fedsecure/ledger-heads/v1"


def heads_to_json(heads: Mapping[str, Sequence[LedgerHead]]) -> str:
    """The export file's text."""
    return json.dumps({"format": FORMAT, "clients": {
        client: [{"seq": h.seq, "entry_sha256": h.entry_sha256.hex(), "epsilon": h.epsilon, "delta": h.delta,
                  "epsilon_budget": h.epsilon_budget} for h in heads[client]] for client in sorted(heads)}},
        indent=2, sort_keys=True)


def load_heads(path: Path) -> dict[str, list[LedgerHead]]:
    """Read an export; raise ValueError naming what is wrong with a malformed file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable ledger-heads export: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (make one with `fedsecure admin heads --out FILE`)")
    out: dict[str, list[LedgerHead]] = {}
    try:
        for client, heads in doc["clients"].items():
            parsed = [LedgerHead(seq=int(h["seq"]), entry_sha256=bytes.fromhex(h["entry_sha256"]),
                                 epsilon=float(h["epsilon"]), delta=float(h["delta"]),
                                 epsilon_budget=float(h["epsilon_budget"])) for h in heads]
            if any(h.seq < 0 or not math.isfinite(h.epsilon) for h in parsed):
                raise ValueError("a head has a negative seq or a non-finite ε")
            out[str(client)] = parsed
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed ledger-heads export: {exc}") from exc
    return out
