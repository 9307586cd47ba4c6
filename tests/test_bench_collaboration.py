"""`fedsecure bench collaboration` on a tiny schedule: every row and kind is measured on
the public questions, the outputs are written, and the FedCola row's gates trained (a
smoke run of the harness; the figures themselves come from the full run in the issue)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_collaboration import KINDS, ROWS, CollaborationConfig, bench_collaboration, write_outputs
from tasks.easyvqa import TASK as EASYVQA
from server.backbone.pretrain import PretrainSettings, pretrain_backbone


@pytest.mark.timeout(900)  # about a minute alone on 2 cores; generous for a loaded CI machine
def test_every_row_is_measured_and_written(tmp_path: Path) -> None:
    backbone = tmp_path / "backbone"
    pretrain_backbone(PretrainSettings(out=backbone, steps=2), task=EASYVQA)
    cfg = CollaborationConfig(backbone=backbone, seeds=(0, 1), rounds=2, local_steps=1, batch_size=16,
                              pairs_per_client=80, questions_per_type=3, central_steps=2)
    result = bench_collaboration(cfg)
    summary = result["summary"]
    assert list(summary) == list(ROWS)  # type: ignore[arg-type]
    for row in ROWS:
        for kind in KINDS:
            metrics = summary[row][kind]  # type: ignore[index]
            assert "pairwise.color" in metrics and "top1_all.shape" in metrics
            assert ("pairwise.yesno" in metrics) == (kind != "image")  # image-only: no yes/no questions
            assert all(0.0 <= mean <= 1.0 and std >= 0.0 for k, (mean, std) in metrics.items()
                       if not k.startswith("count."))
    assert summary["fedcola"]["_"]["gate_mean_abs"][0] > 0.0  # type: ignore[index]  # gates left 0
    assert "gate_mean_abs" not in summary["compensation"]["_"]  # type: ignore[index]
    paths = write_outputs(result, tmp_path / "out")
    assert json.loads(paths[0].read_text())["summary"] == summary
    table = paths[1].read_text()
    assert all(f"| {row} |" in table for row in ROWS) and "±" in table
    assert paths[2].read_text().startswith("<svg") and "fedcola" in paths[2].read_text()


def test_seeds_run_apart_merge_into_one_table() -> None:
    """A long ablation runs one seed per process so that it keeps what it finished; the
    merged result equals the one a single run would give: mean ± std over the seeds."""
    from benchmarks.bench_collaboration import merge_seeds

    def result(seed: int, value: float, **config: object) -> dict[str, object]:
        return {"config": {"seeds": [seed], "rows": ["local_only"], "rounds": 3, **config},
                "questions_per_type": {"color": 3}, "wall_s": 10.0,
                "per_seed": {str(seed): {"local_only": {"image": {"top1_all.color": value}}}}}

    merged = merge_seeds([result(0, 0.2), result(1, 0.4), result(2, 0.6)])
    assert merged["config"]["seeds"] == [0, 1, 2] and merged["wall_s"] == 30.0
    assert merged["summary"]["local_only"]["image"]["top1_all.color"] == [pytest.approx(0.4), pytest.approx(0.2)]
    with pytest.raises(ValueError, match="differ"):
        merge_seeds([result(0, 0.2), result(1, 0.4, rounds=1)])
    # a seed run on fewer CPU threads is the same experiment
    assert merge_seeds([result(0, 0.2, threads=2), result(1, 0.4, threads=1)])["config"]["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="twice"):
        merge_seeds([result(0, 0.2), result(0, 0.4)])


@pytest.mark.timeout(900)
def test_the_free_text_task_is_measured_the_same_way(tmp_path: Path) -> None:
    """scenes: every kind judged on its public questions against their wrong sentences;
    the image-only kind (a response encoder) on the groups it can judge without the question."""
    from tasks.scenes import TASK as SCENES

    backbone = tmp_path / "backbone"
    pretrain_backbone(PretrainSettings(out=backbone, steps=2), task=SCENES)
    cfg = CollaborationConfig(backbone=backbone, seeds=(0,), rows=("local_only", "fedcola", "central"), rounds=1,
                              local_steps=1, batch_size=16, pairs_per_client=80, questions_per_type=3,
                              central_steps=2, task="scenes")
    result = bench_collaboration(cfg)
    assert result["questions_per_type"] == {"color": 3, "count": 3, "describe": 3, "position": 3}
    for row in cfg.rows:
        for kind in KINDS:
            metrics = result["summary"][row][kind]  # type: ignore[index]
            assert ("pairwise.position" in metrics) == (kind != "image") and "top1_all.count" in metrics
    table = write_outputs(result, tmp_path / "out")[1].read_text()
    assert "Task scenes" in table and "no color, position" in table


def test_a_head_only_federation_trains_only_heads_and_fusion_layers(tmp_path: Path) -> None:
    import torch

    from benchmarks.bench_collaboration import CLIENTS, KIND_OF, federated_clients, reward_config
    from fedsecure.data.preferences import records_from_pairs
    from fedsecure.models.encoding import encode_records
    from fedsecure.models.reward import build_reward_model
    from tasks.easyvqa.data import answers

    backbone = tmp_path / "backbone"
    pretrain_backbone(PretrainSettings(out=backbone, steps=2), task=EASYVQA)
    cfg = CollaborationConfig(backbone=backbone, seeds=(0,), rows=("fedavg",), rounds=1, local_steps=2, batch_size=16,
                              pairs_per_client=80, questions_per_type=3, trainable="head")
    _, tok = build_reward_model(reward_config(EASYVQA, "image_text", backbone))
    encoded = {c: encode_records(records_from_pairs(list(EASYVQA.simulated_pairs(
        client=c, clients=list(CLIENTS), kind=KIND_OF[c], seed=0))[:80], answer_set=answers()), tok, answers=answers())
        for c in CLIENTS}
    clients, _ = federated_clients(cfg, "fedavg", 0, encoded)
    for c in clients:
        fresh, _ = build_reward_model(reward_config(EASYVQA, c.kind, backbone, federation_seed=0))
        start = dict(fresh.named_parameters())
        moved = {n for n, p in c.model.named_parameters() if not torch.equal(p.detach(), start[n].detach())}
        # trained, and averaged with the other holders (FedAvg), yet nothing outside the set moved
        assert moved and all(n.startswith(("head.", "fuse.")) for n in moved), (c.name, sorted(moved)[:3])
