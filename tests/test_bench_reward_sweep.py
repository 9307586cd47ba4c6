"""`fedsecure bench reward-sweep` on a tiny grid: every point is trained and measured per
question type, the outputs are written, and recipes parse (a smoke run of the harness;
the figures come from the full run in the issue's closing note)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_reward_sweep import (
    GRIDS,
    SweepConfig,
    SweepPoint,
    bench_reward_sweep,
    markdown_table,
    points_from,
    write_outputs,
)
from tasks.easyvqa import TASK as EASYVQA
from server.backbone.pretrain import PretrainSettings, pretrain_backbone


@pytest.mark.timeout(900)
def test_every_point_is_trained_measured_and_written(tmp_path: Path) -> None:
    backbone = tmp_path / "backbone"
    pretrain_backbone(PretrainSettings(out=backbone, steps=2), task=EASYVQA)
    points = (*GRIDS["quick"], SweepPoint(steps=4, rounds=2, batch_size=16, trainable="no_image_stack"))
    cfg = SweepConfig(backbone=backbone, records=64, per_type=4, seeds=(0, 1), points=points)
    result = bench_reward_sweep(cfg)
    summary = result["summary"]
    assert list(summary) == [p.label for p in points]  # type: ignore[arg-type]
    for label, figures in summary.items():  # type: ignore[union-attr]
        assert figures["count.color"][0] == 4 and figures["count.yesno"][0] == 4
        assert 0.0 <= figures["type_mean"][0] <= 1.0
        assert (figures["sigma"][0] > 0) == ("no DP" not in label)
    paths = write_outputs(result, tmp_path / "out")
    assert json.loads(paths[0].read_text())["summary"] == summary
    table = paths[1].read_text()
    assert all(f"| {p.label} |" in table for p in points) and "±" in table


@pytest.mark.timeout(900)
def test_a_free_text_task_is_swept_on_its_own_question_types(tmp_path: Path) -> None:
    from tasks.scenes import TASK as SCENES

    backbone = tmp_path / "backbone"
    pretrain_backbone(PretrainSettings(out=backbone, steps=2), task=SCENES)
    points = (SweepPoint(steps=3, batch_size=16), SweepPoint(steps=3, batch_size=16, private=False))
    cfg = SweepConfig(backbone=backbone, records=60, per_type=3, seeds=(0,), points=points, task="scenes")
    result = bench_reward_sweep(cfg)
    groups = result["groups"]
    assert len(groups) == 4 and SCENES.question_groups <= set(groups)  # type: ignore[arg-type, operator]
    assert 0 < result["records"]["0"] <= 60  # type: ignore[index]  # a record carries several wrong sentences
    for runs in result["per_seed"].values():  # type: ignore[union-attr]
        (figures,) = runs
        assert all(figures[f"count.{t}"] == 3 for t in groups)  # type: ignore[union-attr]
        # the type mean is over every group the model was asked, not only the question-dependent ones
        assert figures["type_mean"] == pytest.approx(sum(figures[f"top1_all.{t}"] for t in groups) / 4)  # type: ignore[union-attr]
    assert "Task scenes" in markdown_table(result)


def test_points_parse_and_bad_ones_are_refused() -> None:
    (p,) = points_from("default", overrides=["objective=pairwise,learning_rate=0.003,steps=30,private=0"])
    assert p == SweepPoint(objective="pairwise", learning_rate=0.003, steps=30, private=False)
    with pytest.raises(ValueError, match="unknown sweep field"):
        points_from("default", overrides=["lr=1"])
    with pytest.raises(ValueError, match="unknown grid"):
        points_from("nope")
    with pytest.raises(ValueError):
        SweepPoint(trainable="everything")


def test_balanced_questions_cap_each_type() -> None:
    from fedsecure.task import balanced_by_group
    from tasks.easyvqa.data import answer_type
    from tasks.easyvqa.shares import server_part

    qs = balanced_by_group(server_part("reward_eval"), 5)
    assert sorted(answer_type(q.answer) for q in qs) == sorted(["color"] * 5 + ["shape"] * 5 + ["yesno"] * 5)
