"""The server's metrics log (``metrics.jsonl``: what the demo, the run report and
operators read) and what a client may report into it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path


class MetricsLog:
    """Append-only JSONL of per-phase results (what the demo and operators read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, object]) -> None:
        """Append one record."""
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.time(), **record}, sort_keys=True) + "\n")


# What a client may report about a task, by name (issue 23 item 9: a client once sent
# `phase`, `round` and `run_id`, overwrote the server's own fields and vanished from the run
# report). Anything else is dropped and counted; values must be finite numbers.
CLIENT_METRICS = frozenset({
    # TRAIN
    "heldout_accuracy", "epsilon", "epsilon_budget", "noise_multiplier", "sample_rate", "steps", "loss_first",
    "loss_last", "parameters_changed", "ledger_seq", "gate_mean", "gate_max_abs",
    # PERSONALISE
    "heldout_accuracy_personal", "heldout_accuracy_global", "heldout_accuracy_replaced",
    "heldout_accuracy_personalised", "heldout_accuracy_distilled", "components", "replaced", "distill_steps",
    "distillation_kept", "distill_noise_multiplier", "distill_loss_first", "distill_loss_last",
    "distill_parameters_changed",
    # ALIGN
    "sessions_opened", "steps_answered",
})


def client_metrics(reported: Iterable[tuple[str, float]]) -> dict[str, object]:
    """What the server records of a client's report: ``{"metrics": {known name: finite
    number}}``, under its own key so it can never overwrite the server's fields, plus how
    many entries were dropped (unknown names, other types, non-finite values)."""
    kept: dict[str, float] = {}
    dropped = 0
    for name, value in reported:
        if name in CLIENT_METRICS and isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(value):
            kept[name] = float(value)
        else:
            dropped += 1
    return {"metrics": kept, **({"metrics_dropped": dropped} if dropped else {})}
