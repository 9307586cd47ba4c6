"""An experiment's seeds run side by side, one process each: the children get the parent's
options, each result is collected, and a failing or terminated run leaves no child behind."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks.seed_processes import SeedProcess, SeedProcessFailed, last_record, run_side_by_side


def _child(tmp_path: Path, seed: int, script: str) -> SeedProcess:
    folder = tmp_path / f"seed-{seed}"
    return SeedProcess(seed=seed, command=(sys.executable, "-c", script), folder=folder, threads=1)


def _writes(result: dict[str, object], folder: Path) -> str:
    """A child that checks its thread count and writes ``result`` where the parent looks."""
    return ("import json, os, pathlib; assert os.environ['OMP_NUM_THREADS'] == '1'; "
            f"pathlib.Path({str(folder / 'mor.json')!r}).write_text(json.dumps({result!r}))")


def test_every_seeds_result_is_collected_in_order_with_at_most_jobs_at_once(tmp_path: Path) -> None:
    runs = [_child(tmp_path, s, _writes({"seed": s}, tmp_path / f"seed-{s}")) for s in (2, 0, 1)]
    done: list[int] = []
    files = run_side_by_side(runs, jobs=2, poll_s=0.05, on_done=lambda run, _: done.append(run.seed))
    assert [json.loads(f.read_text())["seed"] for f in files] == [2, 0, 1]
    assert sorted(done) == [0, 1, 2] and all(r.log_path.exists() for r in runs)
    with pytest.raises(ValueError, match="jobs"):
        run_side_by_side(runs, jobs=0)
    with pytest.raises(ValueError, match="once"):
        run_side_by_side([runs[0], runs[0]], jobs=2)


def test_a_long_run_shows_each_seeds_newest_log_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "seed-0"
    script = ("import sys, time; print('Loading: 10%\\rLoading: 100%'); "
              "print('2026-12-07 21:39:28,432 fedsecure.experiment.mor INFO seed 0: federation done', flush=True); "
              "print('Writing shards: 0%\\rWriting shards: 100%', flush=True); time.sleep(1.0); "
              + _writes({"seed": 0}, folder))
    with caplog.at_level("INFO", logger="benchmarks.seed_processes"):
        run_side_by_side([_child(tmp_path, 0, script)], jobs=1, poll_s=0.05, progress_s=0.2)
    shown = [r.getMessage() for r in caplog.records if "federation done" in r.getMessage()]
    assert shown == ["seed 0: 21:39:28 fedsecure.experiment.mor INFO seed 0: federation done"]  # once, not per poll
    assert last_record(tmp_path / "no-such.log") is None
    (tmp_path / "bars.log").write_text("Loading: 10%\rLoading: 100%\n")
    assert last_record(tmp_path / "bars.log") is None  # progress bars are not records


def test_a_result_left_by_an_earlier_run_does_not_pass_for_this_one(tmp_path: Path) -> None:
    stale = _child(tmp_path, 0, "pass")  # exits 0 and writes nothing
    stale.folder.mkdir(parents=True)
    (stale.folder / "mor.json").write_text("{}")
    with pytest.raises(SeedProcessFailed, match="no mor.json"):
        run_side_by_side([stale], jobs=1, poll_s=0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failing_seed_stops_the_others_and_names_its_log(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleeper.pid"
    sleeper = _child(tmp_path, 0, f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); "
                                  "time.sleep(300)")
    failing = _child(tmp_path, 1, "import time; time.sleep(0.5); print('boom'); raise SystemExit(3)")
    started = time.monotonic()
    with pytest.raises(SeedProcessFailed, match=r"seed 1 exited with 3 .*seed-1/run.log"):
        run_side_by_side([sleeper, failing], jobs=2, poll_s=0.05)
    assert time.monotonic() - started < 60  # the sleeper was stopped, not waited for
    assert "boom" in failing.log_path.read_text()
    assert not _alive(int(pid_file.read_text()))
    # exit 0 without the result file is a failure too: a seed's figures are never made up
    with pytest.raises(SeedProcessFailed, match="no mor.json"):
        run_side_by_side([_child(tmp_path, 2, "pass")], jobs=1, poll_s=0.05)


def test_sigterm_to_the_parent_stops_every_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleeper.pid"
    sleeper = _child(tmp_path, 0, f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); "
                                  "time.sleep(300)")
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SeedProcessFailed, match="terminated by signal"):
            run_side_by_side([sleeper], jobs=1, poll_s=0.05)
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back
    assert not _alive(int(pid_file.read_text()))


def test_the_children_get_the_parents_options_and_a_folder_each(tmp_path: Path) -> None:
    """Each child's command line parses back to the parent's configuration but for its
    seed, its folder and its share of the threads."""
    from apps.cli import build_parser
    from benchmarks.cli import experiment_config, seed_processes

    argv = ["experiment", "mor", "--seeds", "0,1,2", "--threads", "2", "--steps", "5", "--best-nll", "0",
            "--methods", "start,routed", "--seed-per-group", "yesno=400", "--out", str(tmp_path / "out")]
    args = build_parser().parse_args(argv)
    runs = seed_processes(args, backbone=tmp_path / "bb", seeds=[0, 1, 2], jobs=3)
    assert [r.seed for r in runs] == [0, 1, 2] and {r.threads for r in runs} == {1}
    assert len({r.folder for r in runs}) == 3 and all(r.folder.is_relative_to(tmp_path / "out") for r in runs)
    parent = experiment_config(args, backbone=tmp_path / "bb")
    for run in runs:
        assert run.command[:3] == (sys.executable, "-m", "apps.cli")
        child_args = build_parser().parse_args(list(run.command[3:]))
        assert child_args.jobs == 1 and child_args.backbone == tmp_path / "bb"  # no grandchildren, one backbone
        child = experiment_config(child_args, backbone=child_args.backbone)
        assert child.seeds == (run.seed,) and child.threads == 1 and child.out == run.folder
        assert {k: v for k, v in vars(child).items() if k not in ("seeds", "threads", "out")} == \
            {k: v for k, v in vars(parent).items() if k not in ("seeds", "threads", "out")}
    two = seed_processes(build_parser().parse_args(["experiment", "mor", "--seeds", "0,1", "--threads", "8"]),
                         backbone=None, seeds=[0, 1], jobs=2)
    assert {r.threads for r in two} == {4} and "--backbone" not in two[0].command


def test_the_command_line_merges_the_seeds_processes_into_one_table(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``fedsecure experiment mor --seeds 0,1`` runs one process per seed by default and
    writes the merged table; the wall time is the parent's, start to end."""
    import benchmarks.cli
    from apps.cli import build_parser
    from tests.test_experiment_mor import _seed_run

    def fake_children(args, *, backbone, seeds, jobs):  # type: ignore[no-untyped-def]
        assert backbone is None and jobs == 2  # start and oracle use no client: no backbone is pretrained
        return [_child(tmp_path, s, _writes(_seed_run(s, 0.7 + 0.1 * s, 0.6), tmp_path / f"seed-{s}")) for s in seeds]

    monkeypatch.setattr(benchmarks.cli, "seed_processes", fake_children)
    out = tmp_path / "out"
    args = build_parser().parse_args(["experiment", "mor", "--seeds", "0,1", "--methods", "start,oracle",
                                      "--out", str(out)])
    assert benchmarks.cli.experiment(args) == 0
    written = json.loads((out / "mor.json").read_text())
    assert written["config"]["seeds"] == [0, 1] and written["runs_wall_s"] == [10.0, 20.0]
    assert written["summary"]["routed"]["type_mean"][0] == pytest.approx(0.75)
    assert (out / "mor.md").exists() and (out / "mor.svg").exists()
    with pytest.raises(ValueError, match="--jobs"):
        benchmarks.cli.experiment(build_parser().parse_args(["experiment", "mor", "--jobs", "0", "--out", str(out)]))
