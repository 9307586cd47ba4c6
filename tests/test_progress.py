"""Progress bars: silent off a terminal (logs and CI stay clean), forced on or off by
FEDSECURE_PROGRESS, always hidden where ``show=False`` (ranks but the first)."""

from __future__ import annotations

import pytest

from fedsecure.progress import progress


def _run(**kwargs: object) -> None:
    with progress(total=3, desc="work", **kwargs) as bar:  # type: ignore[arg-type]
        for _ in range(3):
            bar.update(1)


def test_bars_follow_the_setting(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FEDSECURE_PROGRESS", raising=False)
    _run()
    assert capsys.readouterr().err == ""  # pytest's stderr is no terminal
    monkeypatch.setenv("FEDSECURE_PROGRESS", "1")
    _run(mininterval=0)
    err = capsys.readouterr().err
    assert "work" in err and "3/3" in err
    _run(show=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("FEDSECURE_PROGRESS", "0")
    _run()
    assert capsys.readouterr().err == ""


def test_track_yields_every_item_and_counts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fedsecure.progress import track

    monkeypatch.setenv("FEDSECURE_PROGRESS", "1")
    assert list(track(["a", "b", "c"], desc="rows", unit="row")) == ["a", "b", "c"]
    assert "rows" in capsys.readouterr().err
    assert list(track(iter(range(4)), desc="gen", total=4)) == [0, 1, 2, 3]
