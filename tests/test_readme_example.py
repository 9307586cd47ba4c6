"""The README's example of a hospital embedding the client SDK runs, as printed, against a
real server on loopback: if the example rots, this fails (issue 25 item 5). The federation
runs the free-text task (scenes): the hospital's pairs are sentences in a JSONL file, the
bank's in a Parquet file, each row one rejected sentence (a repeated id adds another)."""

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
from fedsecure.data.preferences import PreferencePair
from tasks.scenes import TASK as SCENES
from tests.conftest import Federation

README = Path(__file__).resolve().parents[1] / "README.md"
WORK: Path | None = None


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory, keyholder_keys: Path) -> Iterator[Provisioned]:
    """The README's world: ``backbone/`` pretrained by the operator, ``kits/`` sealing it
    and the scenes task, the hospital's own ``my_pairs.jsonl`` with its images beside it,
    the bank's ``bank_pairs.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from server.backbone.pretrain import PretrainSettings, pretrain_backbone

    global WORK
    WORK = tmp_path_factory.mktemp("hospital")
    pretrain_backbone(PretrainSettings(out=WORK / "backbone", steps=2), task=SCENES)
    kits = provision(out=WORK / "kits", clients=["hospital-a", "bank-c"], backbone=WORK / "backbone",
                     keyholder_public_context=(keyholder_keys / "ckks_public.ctx").read_bytes(), task=SCENES)
    (WORK / "images").mkdir()
    with open(WORK / "my_pairs.jsonl", "w", encoding="utf-8") as out:
        for row in _rows("hospital-a", "image_text"):
            out.write(json.dumps(row) + "\n")
    pq.write_table(pa.Table.from_pylist(_rows("bank-c", "text")), WORK / "bank_pairs.parquet")
    yield kits


def _rows(client: str, kind: str) -> list[dict[str, str]]:
    """``client``'s simulated scenes pairs as a party's file rows (images copied beside them)."""
    assert WORK is not None
    pairs: list[PreferencePair] = list(SCENES.simulated_pairs(client=client, clients=["hospital-a", "bank-c"],
                                                              kind=kind))[:900]
    rows = []
    for p in pairs:
        image = Path("images") / Path(p.image).name
        shutil.copyfile(p.image, WORK / image)
        rows.append({"id": p.record_id, "image": str(image), "question": p.question, "chosen": p.chosen,
                     "rejected": p.rejected})
    return rows


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "the README has one Python example: the embedded client"
    return blocks[0]


@pytest.mark.timeout(600)
def test_the_readmes_embedding_example_joins_a_federation_and_spends_its_budget(
        start_federation: Callable[..., Federation], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from server.planners.metrics import MetricsLog
    from server.planners.score import ScorePlanner
    from server.planners.train import TrainPlanner

    assert WORK is not None
    metrics = MetricsLog(WORK / "metrics.jsonl")

    def planners(aggregator):  # type: ignore[no-untyped-def]
        return {TaskKind.TRAIN: TrainPlanner(metrics=metrics, aggregator=aggregator, local_steps=3, batch_size=64),
                TaskKind.SCORE: ScorePlanner(task=SCENES, questions=SCENES.server_part("reward_eval"), metrics=metrics,
                                             prompts_per_round=4)}
    fed = start_federation(RunConfig(rounds=1, quorum=2, min_clients=2, phases=(
        PhaseConfig(TaskKind.TRAIN, 240), PhaseConfig(TaskKind.SCORE, 60), PhaseConfig(TaskKind.REPORT_LEDGER, 30))),
        planners=planners, keyholder=True)
    # The bank beside it: a text-only client with a Parquet file, through the same entry point.
    bank: dict[str, ClientReport] = {}
    other = threading.Thread(target=lambda: bank.update(report=join_federation(
        kit=WORK / "kits" / "clients" / "bank-c", kind="text", backbone=WORK / "backbone", address=fed.address,
        pairs=WORK / "bank_pairs.parquet", max_idle_s=300)), daemon=True)
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
    # both clients judged the server's public free-text questions in the SCORE phase
    scored = [json.loads(line) for line in (WORK / "metrics.jsonl").read_text().splitlines()]
    scored = [m for m in scored if m.get("phase") == "score"]
    assert {m["client"] for m in scored} == {"hospital-a", "bank-c"} and all(m["prompts"] > 0 for m in scored)
