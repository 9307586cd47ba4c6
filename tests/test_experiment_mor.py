"""`fedsecure experiment mor` at toy scale: every method runs in the same harness from the
same base policy, and the JSON, Markdown table and plot are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.timeout(900)
def test_experiment_compares_methods_and_writes_outputs(tmp_path: Path) -> None:
    from benchmarks.experiment_mor import MorExperimentConfig, run_experiment, write_outputs
    from server.backbone.pretrain import PretrainSettings, pretrain_backbone

    backbone = tmp_path / "backbone"
    pretrain_backbone(PretrainSettings(out=backbone, steps=20))
    methods = ("start", "oracle", "routed", "uniform", "expert", "table", "single:txt-1", "routed+random")
    cfg = MorExperimentConfig(backbone=backbone, out=tmp_path / "out", seeds=(0,), methods=methods, steps=2,
                              prompts_per_step=4, eval_questions=24, quality_questions=12, router_pairs=40,
                              rounds=1, local_steps=2, pairs_per_client=200, server_steps=5)
    result = run_experiment(cfg)
    paths = write_outputs(result, cfg.out)
    assert [p.name for p in paths] == ["mor.json", "mor.md", "mor.svg"] and all(p.stat().st_size for p in paths)
    summary = result["summary"]
    assert list(summary) == list(methods)
    for method, entry in summary.items():
        assert 0.0 <= entry["accuracy"][0] <= 1.0
        assert (method == "routed") == ("verdict" not in entry)
    seed = result["per_seed"]["0"]
    assert all(0 < e <= 8.0 for e in seed["epsilon"].values()) and len(seed["epsilon"]) == 6
    routed = seed["methods"]["routed"]
    assert 0.0 <= routed["reward_quality"]["top1_all"] <= 1.0 and routed["router_fit"]["steps"] > 0
    assert set(routed["router_weights"]) <= {"color", "shape", "yesno"} and routed["router_weights"]
    assert len(seed["methods"]["routed+random"]["router_weights"]["yesno"]) == 7  # six clients + the adversary
    doc = json.loads(paths[0].read_text())
    assert doc["gains"]["oracle_gain"] == pytest.approx(summary["oracle"]["accuracy"][0] - summary["start"]["accuracy"][0],
                                                        abs=1e-3)
    assert "| routed |" in paths[1].read_text() and paths[2].read_text().startswith("<svg")
