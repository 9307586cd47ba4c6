"""The README's example of a hospital embedding the client SDK runs, as printed, against a
real server on loopback: if the example rots, this fails (issue 25 item 5)."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client_sdk import ClientReport, join_federation
from fedsecure.provision import Provisioned, provision
from fedsecure.types import PhaseConfig, RunConfig, TaskKind
from tasks.easyvqa import TASK as EASYVQA
from tasks.easyvqa.shares import client_pairs, server_part
from tests.conftest import Federation

README = Path(__file__).resolve().parents[1] / "README.md"
WORK: Path | None = None


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory, keyholder_keys: Path) -> Iterator[Provisioned]:
    """The README's world: ``backbone/`` pretrained by the operator, ``kits/`` sealing it,
    and the hospital's own ``my_pairs.jsonl`` with its images beside it."""
    from server.backbone.pretrain import PretrainSettings, pretrain_backbone

    global WORK
    WORK = tmp_path_factory.mktemp("hospital")
    pretrain_backbone(PretrainSettings(out=WORK / "backbone", steps=2), task=EASYVQA)
    kits = provision(out=WORK / "kits", clients=["hospital-a", "bank-c"], backbone=WORK / "backbone",
                     keyholder_public_context=(keyholder_keys / "ckks_public.ctx").read_bytes(), task=EASYVQA)
    (WORK / "images").mkdir()
    with open(WORK / "my_pairs.jsonl", "w", encoding="utf-8") as out:
        for p in client_pairs(name="hospital-a", clients=["hospital-a", "bank-c"], kind="image_text", limit=600):
            image = Path("images") / Path(p.image).name
            shutil.copyfile(p.image, WORK / image)
            out.write(json.dumps({"id": p.record_id, "image": str(image), "question": p.question,
                                  "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    yield kits


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "the README has one Python example: the embedded client"
    return blocks[0]


@pytest.mark.timeout(600)
def test_the_readmes_embedding_example_joins_a_federation_and_spends_its_budget(
        start_federation: Callable[..., Federation], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from server.rewards.planners import MetricsLog, ScorePlanner, TrainPlanner

    assert WORK is not None
    metrics = MetricsLog(WORK / "metrics.jsonl")

    def planners(aggregator):  # type: ignore[no-untyped-def]
        return {TaskKind.TRAIN: TrainPlanner(metrics=metrics, aggregator=aggregator, local_steps=3, batch_size=64),
                TaskKind.SCORE: ScorePlanner(task=EASYVQA, questions=server_part("reward_eval"), metrics=metrics,
                                             prompts_per_round=4)}
    fed = start_federation(RunConfig(rounds=1, quorum=2, min_clients=2, phases=(
        PhaseConfig(TaskKind.TRAIN, 240), PhaseConfig(TaskKind.SCORE, 60), PhaseConfig(TaskKind.REPORT_LEDGER, 30))),
        planners=planners, keyholder=True)
    # The bank beside it: a text-only client, started through the same entry point.
    bank: dict[str, ClientReport] = {}
    other = threading.Thread(target=lambda: bank.update(report=join_federation(
        kit=WORK / "kits" / "clients" / "bank-c", kind="text", backbone=WORK / "backbone", address=fed.address,
        pairs=client_pairs(name="bank-c", clients=["hospital-a", "bank-c"], kind="text", limit=600),
        max_idle_s=300)), daemon=True)
    other.start()

    code = _example()
    assert "127.0.0.1:50051" in code  # the kit's default address, pointed at this test's server
    monkeypatch.chdir(WORK)
    scope: dict[str, object] = {}
    exec(compile(code.replace("127.0.0.1:50051", fed.address), str(README), "exec"), scope)  # noqa: S102
    other.join(300)

    report = scope["report"]
    assert isinstance(report, ClientReport) and report.client == "hospital-a" and report.kind == "image_text"
    assert report.run_state == "finished" and report.completed == {"TRAIN": 1, "SCORE": 1, "REPORT_LEDGER": 1}
    assert 0 < report.epsilon <= report.epsilon_budget == 8.0 and report.ledger.is_file()
    assert 0.0 <= report.heldout_accuracy <= 1.0 and report.train_pairs > 0
    assert bank["report"].run_state == "finished" and bank["report"].epsilon > 0
    assert "finished" in capsys.readouterr().out  # what the example prints
