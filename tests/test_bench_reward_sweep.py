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
    merge_results,
    points_from,
    write_outputs,
)
from server.backbone.pretrain import PretrainSettings, pretrain_backbone
from tasks.easyvqa import TASK as EASYVQA


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
    assert paths[2].read_text().startswith("<svg") and "type mean" in paths[2].read_text()


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


def _fake_sweep(seeds: list[int], labels: list[str], value: float) -> dict[str, object]:
    figures = {"count.a": 5.0, "count.b": 5.0, "top1_all.a": value, "top1_all.b": 1.0 - value, "type_mean": -1.0,
               "sigma": 1.0, "train_s": 2.0}
    return {"config": {"kind": "image_text", "client": "it-1", "task": "scenes", "records": 10, "seeds": seeds, "epsilon": 8.0,
                       "points": [], "threads": 1},
            "records": {str(s): 7 for s in seeds}, "points": [{"label": x} for x in labels],
            "per_seed": {x: [dict(figures) for _ in seeds] for x in labels}, "wall_s": 3.0}


def test_sweeps_on_other_seeds_merge_and_repeats_are_refused() -> None:
    merged = merge_results([_fake_sweep([0], ["p", "q"], 0.2), _fake_sweep([1, 2], ["p"], 0.4)])
    assert merged["seeds_per_point"] == {"p": [0, 1, 2], "q": [0]}
    assert merged["summary"]["p"]["top1_all.a"] == [0.3333, 0.1155]  # type: ignore[index]
    assert merged["summary"]["q"]["type_mean"][0] == pytest.approx(0.5)  # type: ignore[index]  # recomputed
    assert merged["wall_s"] == 6.0 and merged["groups"] == ["a", "b"]
    assert "| p |" in markdown_table(merged) and "| 3 |" in markdown_table(merged)
    with pytest.raises(ValueError, match="ran twice"):
        merge_results([_fake_sweep([0], ["p"], 0.2), _fake_sweep([0], ["p"], 0.4)])
    other = _fake_sweep([3], ["p"], 0.2)
    other["config"]["records"] = 11  # type: ignore[index]
    with pytest.raises(ValueError, match="differ"):
        merge_results([_fake_sweep([0], ["p"], 0.2), other])


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
