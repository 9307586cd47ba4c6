"""`fedsecure experiment mor` at toy scale: every method runs in the same harness from the
same base policy, and the JSON, Markdown table and plot are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.timeout(900)
def test_experiment_compares_methods_and_writes_outputs(tmp_path: Path) -> None:
    from benchmarks.experiment_mor import MorExperimentConfig, run_experiment, write_outputs
    from tasks.easyvqa import TASK as EASYVQA
    from server.backbone.pretrain import PretrainSettings, pretrain_backbone

    backbone = tmp_path / "backbone"
    pretrain_backbone(PretrainSettings(out=backbone, steps=20), task=EASYVQA)
    methods = ("start", "text_only", "oracle", "routed", "routed/gated", "uniform/unscaled", "uniform", "expert",
               "table", "single:txt-1", "routed+random")
    cfg = MorExperimentConfig(backbone=backbone, out=tmp_path / "out", seeds=(0,), methods=methods, steps=2,
                              prompts_per_step=4, eval_questions=24, quality_per_type=4, router_per_type=14,
                              rounds=1, local_steps=2, pairs_per_client=200, server_steps=5)
    result = run_experiment(cfg)
    paths = write_outputs(result, cfg.out)
    assert [p.name for p in paths] == ["mor.json", "mor.md", "mor.svg"] and all(p.stat().st_size for p in paths)
    summary = result["summary"]
    assert list(summary) == list(methods)
    for method, entry in summary.items():
        assert 0.0 <= entry["accuracy"][0] <= 1.0 and 0.0 <= entry["type_mean"][0] <= 1.0
        assert (method == "routed") == ("verdict" not in entry)
    seed = result["per_seed"]["0"]
    assert all(0 < e <= 8.0 for e in seed["epsilon"].values()) and len(seed["epsilon"]) == 6
    routed = seed["methods"]["routed"]
    quality = routed["reward_quality"]
    assert quality["questions_per_type"] == 4 and routed["router_fit"]["steps"] > 0
    for q in ("top1_all", "top1_type", "type_first"):
        assert 0.0 <= quality[q] <= 1.0
    assert quality["top1_type"] >= quality["top1_all"]  # the right answer first overall is first within its type
    gate = seed["methods"]["routed/gated"]["gate"]
    assert set(gate["judge"]) == set(gate["student"]) and set(gate["kept"]) <= set(gate["student"])
    assert all(gate["judge"][t] > gate["student"][t] for t in gate["kept"])
    text_only = seed["methods"]["text_only"]
    assert "reward_quality" not in text_only and set(text_only["by_type"]) == {"color", "shape", "yesno"}
    assert set(routed["router_weights"]) <= {"color", "shape", "yesno"} and routed["router_weights"]
    assert len(seed["methods"]["routed+random"]["router_weights"]["yesno"]) == 7  # six clients + the adversary
    doc = json.loads(paths[0].read_text())
    assert doc["gains"]["type_mean"]["oracle"] == pytest.approx(
        summary["oracle"]["type_mean"][0] - summary["start"]["type_mean"][0], abs=1e-3)
    assert set(doc["gains"]["oracle_per_seed"]["0"]) == {"color", "shape", "yesno"}
    assert "| routed |" in paths[1].read_text() and paths[2].read_text().startswith("<svg")



@pytest.mark.timeout(600)
def test_the_policys_ceiling_alone_runs_no_federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--methods start,oracle,supervised`` measures the policy, its exact-match ceiling
    and what the same labels teach it directly, without training a single client reward
    model (no federation, no ε)."""
    import benchmarks.bench_collaboration
    from benchmarks.experiment_mor import MorExperimentConfig, needs_federation, run_experiment, uses_clients

    def no_federation(*args: object, **kwargs: object) -> None:
        raise AssertionError("a federation ran for methods that use no client reward model")

    monkeypatch.setattr(benchmarks.bench_collaboration, "federated_clients", no_federation)
    assert not any(needs_federation(m) for m in ("start", "text_only", "oracle", "oracle/unscaled", "oracle/plain",
                                                 "supervised"))
    assert all(needs_federation(m) for m in ("routed", "uniform/gated", "single:txt-1", "fedavg", "server_only"))
    assert uses_clients(()) and uses_clients(("start", "routed")) and not uses_clients(("start", "oracle", "supervised"))
    cfg = MorExperimentConfig(backbone=tmp_path / "unused", out=tmp_path / "out", seeds=(0,),
                              methods=("start", "oracle", "oracle/plain", "supervised"), steps=3, prompts_per_step=4, eval_questions=24,
                              pool_size=48, supervised_epochs=3)
    result = run_experiment(cfg)
    seed = result["per_seed"]["0"]
    assert seed["epsilon"] == {} and list(result["summary"]) == ["start", "oracle", "oracle/plain", "supervised"]
    assert result["config"]["backbone"] is None  # so runs of the ceiling from any folder merge
    assert set(seed["methods"]["oracle"]["by_type"]) == {"color", "shape", "yesno"}
    supervised = seed["methods"]["supervised"]
    assert supervised["sft_loss"][-1] < supervised["sft_loss"][0]  # the labels were learnt
    assert supervised["by_type"] != seed["methods"]["start"]["by_type"]  # and moved the policy's answers
    gains = result["gains"]
    assert set(gains["type_mean"]) == {"oracle", "supervised"}  # no routed row, no routed gain
    assert gains["type_mean"]["supervised"] == pytest.approx(
        result["summary"]["supervised"]["type_mean"][0] - result["summary"]["start"]["type_mean"][0], abs=1e-3)
    assert "routed_share_of_oracle_gain" not in gains and "oracle_share_of_supervised_gain" in gains


def test_the_experiments_scale_is_checked_up_front(tmp_path: Path) -> None:
    """A scale that cannot run is refused when the config is made, not after a federation."""
    from benchmarks.experiment_mor import MorExperimentConfig

    for bad in ({"supervised_epochs": 0}, {"pool_size": 2}, {"steps": -1}, {"supervised_learning_rate": 0.0}):
        with pytest.raises(ValueError):
            MorExperimentConfig(backbone=tmp_path, out=tmp_path, **bad)  # type: ignore[arg-type]


def test_a_scoring_client_scores_each_triple_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The experiment memoises a frozen model's scores: a repeated (image, question,
    completion) is answered from memory with the same value, under new item ids."""
    import fedsecure.models.scoring
    from benchmarks.experiment_mor import _channel
    from fedsecure.types import ScoreItem

    scored: list[str] = []

    def fake_score_items(model, tokenizer, items):  # type: ignore[no-untyped-def]
        scored.extend(i.completion for i in items)
        return [float(len(i.completion)) for i in items]
    monkeypatch.setattr(fedsecure.models.scoring, "score_items", fake_score_items)
    memo: dict = {}
    score = _channel(object(), object(), memo)
    items = [ScoreItem(item_id=f"a{i}", image_png=b"img", question="what color is the shape?", completion=c)
             for i, c in enumerate(["red", "blue", "red"])]
    first = score(None, items, 1.0)
    assert [s.value for s in first] == [3.0, 4.0, 3.0] and sorted(scored) == ["blue", "red"]
    again = score(None, [ScoreItem(item_id="b0", image_png=b"img", question="what color is the shape?",
                                   completion="blue"),
                         ScoreItem(item_id="b1", image_png=b"other", question="what color is the shape?",
                                   completion="blue")], 1.0)
    assert [(s.item_id, s.value) for s in again] == [("b0", 4.0), ("b1", 4.0)]
    assert sorted(scored) == ["blue", "blue", "red"]  # another image is another triple


def test_the_experiments_command_line_keeps_the_configs_defaults_unless_given(tmp_path: Path) -> None:
    """Scale options left unset take MorExperimentConfig's defaults (GRPO's recipe), so the
    command line restates none of them; a given one wins."""
    from apps.cli import build_parser
    from benchmarks.cli import experiment_config
    from benchmarks.experiment_mor import MorExperimentConfig
    from server.align.engine.recipe import GRPO_RECIPE

    plain = experiment_config(build_parser().parse_args(["experiment", "mor"]), backbone=tmp_path)
    defaults = MorExperimentConfig(backbone=tmp_path, out=plain.out)
    assert plain == defaults and plain.prompts_per_step == GRPO_RECIPE.prompts_per_step
    given = experiment_config(build_parser().parse_args(["experiment", "mor", "--steps", "5", "--rounds", "2"]),
                              backbone=tmp_path)
    assert (given.steps, given.rounds, given.local_steps) == (5, 2, defaults.local_steps)
    old_recipe = experiment_config(build_parser().parse_args(["experiment", "mor", "--best-nll", "0",
                                                              "--learning-rate", "3e-4"]), backbone=tmp_path)
    assert (old_recipe.best_nll, old_recipe.learning_rate) == (0.0, 3e-4) and defaults.best_nll == GRPO_RECIPE.best_nll
    assert defaults.seed_per_group == ()
    warm = experiment_config(build_parser().parse_args(["experiment", "mor", "--seed-per-group", "yesno=400"]),
                             backbone=tmp_path)
    assert warm.seed_per_group == (("yesno", 400),)


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.integers(0, 10_000), min_size=1))
def test_group_counts_parse_back_what_was_written(counts: dict[str, int]) -> None:
    from benchmarks.cli import parse_group_counts

    assert parse_group_counts(",".join(f"{g}={n}" for g, n in counts.items())) == tuple(counts.items())


@pytest.mark.parametrize("bad", ["", "yesno", "yesno=", "=4", "yesno=-1", "yesno=1.5", "yesno=2,yesno=3", "a=1,,b=2"])
def test_malformed_group_counts_are_refused(bad: str) -> None:
    from benchmarks.cli import parse_group_counts

    with pytest.raises(ValueError, match="GROUP=N"):
        parse_group_counts(bad)


def _seed_run(seed: int, routed: float, start: float, *, steps: int = 80, threads: int = 1) -> dict[str, object]:
    """A one-seed experiment result as ``run_experiment`` writes it (figures made up)."""
    by_type = lambda v: {"color": v, "shape": v, "yesno": v}  # noqa: E731
    methods = {"start": {"accuracy": start, "by_type": by_type(start), "seconds": 1.0},
               "oracle": {"accuracy": start + 0.2, "by_type": by_type(start + 0.2), "seconds": 1.0},
               "routed": {"accuracy": routed, "by_type": by_type(routed), "seconds": 1.0}}
    config = {"seeds": [seed], "threads": threads, "out": f"/runs/seed{seed}", "steps": steps, "methods": [],
              "eval_questions": 2000,
              "prompts_per_step": 64, "group_size": 8, "quality_per_type": 300}
    return {"config": config, "per_seed": {str(seed): {"methods": methods, "seconds": 10.0 * (seed + 1)}},
            "wall_s": 10.0 * (seed + 1)}


def test_seeds_run_as_separate_processes_merge_into_one_table(tmp_path: Path) -> None:
    """Known answers: the merged summary is the mean ± std over the seeds' runs, routed −
    start is paired per seed, the wall time is the longest run's; a run of another
    configuration or a repeated seed is refused; the command line merges files into the
    three outputs."""
    from apps.cli import build_parser
    from benchmarks.cli import experiment
    from benchmarks.experiment_mor import merge_seeds

    runs = [_seed_run(0, 0.70, 0.60), _seed_run(1, 0.80, 0.60, threads=2), _seed_run(2, 0.75, 0.70)]
    merged = merge_seeds(runs)
    assert merged["config"]["seeds"] == [0, 1, 2] and merged["wall_s"] == 30.0
    assert merged["runs_wall_s"] == [10.0, 20.0, 30.0]
    assert list(merged["summary"]) == ["start", "oracle", "routed"]  # the comparison's order, not the JSON's
    routed = merged["summary"]["routed"]
    assert routed["type_mean"] == [pytest.approx(0.75), pytest.approx(0.05)]
    assert merged["summary"]["start"]["routed_minus"] == [pytest.approx(0.1167, abs=1e-4),
                                                          pytest.approx(0.0764, abs=1e-4)]
    assert merged["summary"]["start"]["verdict"] == "routed beats"
    assert merged["gains"]["type_mean"] == {"oracle": pytest.approx(0.2), "routed": pytest.approx(0.1167, abs=1e-4)}
    with pytest.raises(ValueError, match="more than their seeds"):
        merge_seeds([runs[0], _seed_run(1, 0.8, 0.6, steps=40)])
    with pytest.raises(ValueError, match="twice"):
        merge_seeds([runs[0], _seed_run(0, 0.8, 0.6)])
    files = []
    for i, run in enumerate(runs):
        files.append(tmp_path / f"mor-{i}.json")
        files[-1].write_text(json.dumps(run, sort_keys=True))  # as the experiment writes it
    out = tmp_path / "merged"
    args = build_parser().parse_args(["experiment", "mor", "--merge", ",".join(map(str, files)), "--out", str(out)])
    assert experiment(args) == 0
    written = json.loads((out / "mor.json").read_text())
    assert written["config"]["seeds"] == [0, 1, 2]
    assert (out / "mor.md").read_text().index("| start |") < (out / "mor.md").read_text().index("| oracle |")
    assert "| routed |" in (out / "mor.md").read_text() and (out / "mor.svg").read_text().startswith("<svg")
