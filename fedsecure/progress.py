"""Progress bars for long work (client training and scoring, GRPO steps, benchmarks).

Why a library: tqdm is what ML engineers already read, handles rates and ETAs, and turns
itself off when stderr is not a terminal, so logs and CI output stay clean. Set
``FEDSECURE_PROGRESS=1`` to force the bars (e.g. under a supervisor that keeps a
terminal-like log) or ``0`` to hide them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm


def progress_enabled() -> bool | None:
    """True/False when forced by FEDSECURE_PROGRESS, else None (tqdm: only on a terminal)."""
    value = os.environ.get("FEDSECURE_PROGRESS", "").strip()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    return None


def progress(*, total: int, desc: str, unit: str = "step", show: bool = True,
             **kwargs: Any) -> tqdm:  # type: ignore[type-arg]
    """A progress bar on stderr of ``total`` units; use as a context manager, ``update(n)``.
    ``show=False`` hides it whatever the setting (e.g. on every rank but the first)."""
    forced = progress_enabled()
    disable = True if not show else (None if forced is None else not forced)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True,
                leave=False, **kwargs)


T = TypeVar("T")


def track(items: Iterable[T], *, desc: str, unit: str = "item", total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar (the same rules as :func:`progress`)."""
    with progress(total=total if total is not None else len(items), desc=desc, unit=unit) as bar:  # type: ignore[arg-type]
        for item in items:
            yield item
            bar.update(1)
