"""`fedsecure bench personalise` on a tiny schedule: every kind and variant is measured on
held-out pairs and public questions, ε per stage is read from audited ledgers, and the
outputs are written (a smoke run of the harness; the figures come from the full run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.bench_personalise import KINDS, VARIANTS, PersonaliseBenchConfig, bench_personalise, write_outputs
from tasks.easyvqa import TASK as EASYVQA
from server.backbone.pretrain import PretrainSettings, pretrain_backbone


@pytest.mark.timeout(900)  # about two minutes alone on 2 cores
def test_every_variant_is_measured_with_its_ledger(tmp_path: Path) -> None:
    backbone = tmp_path / "backbone"
    pretrain_backbone(PretrainSettings(out=backbone, steps=2), task=EASYVQA)
    cfg = PersonaliseBenchConfig(backbone=backbone, seeds=(0,), rounds=1, local_steps=1, batch_size=16,
                                 pairs_per_client=200, eval_questions=6, distill_steps=2, resolution=2.0)
    result = bench_personalise(cfg)
    summary = result["summary"]
    for kind in KINDS:
        for variant in VARIANTS:
            figures = summary[kind][variant]  # type: ignore[index]
            assert all(0.0 <= figures[k][0] <= 1.0 for k in ("heldout", "public_top1", "public_pairwise"))
        ledger = summary[kind]["ledger"]  # type: ignore[index]
        # Federation below the reserve's line, each stage adds to ε, never past the budget.
        assert ledger["epsilon_federation"][0] <= 8.0 * 0.9 + 1e-6
        assert ledger["epsilon_federation"][0] < ledger["epsilon_after_replace"][0] < ledger["epsilon_after_distill"][0] <= 8.0
    assert result["audits_passed"] == result["audits"] == 6 and result["refusals"] == 0
    assert not math.isnan(result["epsilon_max"]) and result["epsilon_max"] <= 8.0  # type: ignore[arg-type]
    paths = write_outputs(result, tmp_path / "out")
    assert json.loads(paths[0].read_text())["summary"] == summary
    table = paths[1].read_text()
    assert all(f"| {kind} | personalised |" in table for kind in KINDS) and "Audits passed: 6 of 6" in table
    assert paths[2].read_text().startswith("<svg")
