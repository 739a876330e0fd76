"""Progress bars. All long loops go through :func:`progress` so ``--quiet``
silences every bar at once."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

from conceptgen.errors import TimeBudgetError

T = TypeVar("T")

_QUIET = os.environ.get("CONCEPTGEN_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET


def progress(iterable: Iterable[T] | None = None, **kwargs) -> "tqdm[T]":
    """A tqdm bar that honours ``--quiet``. Accepts tqdm's keyword arguments."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=_QUIET or kwargs.pop("disable", False), **kwargs)


@contextmanager
def stage_progress(stage: str, total: int, *, unit: str, label: str = "",
                   deadline: float | None = None, budget: float | None = None) -> Iterator[Callable[[int], None]]:
    """A bar for one stage inside one video, under the video-level bar: ``total`` units,
    a moving rate and ETA. Yields ``tick(n)``; past ``deadline`` (a ``time.monotonic()``
    value) a tick raises :class:`TimeBudgetError`, so a stalling stage ends its video
    instead of the run."""
    bar = progress(total=max(int(total), 0), desc=f"{label}{': ' if label else ''}{stage}", unit=unit,
                   position=1, mininterval=0.5)
    done = 0

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        bar.update(n)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeBudgetError(f"stopped in stage {stage} ({done}/{int(total)} {unit}s done) past the per-video "
                                  f"time budget of {budget or 0:.0f}s; raise it with --video-time-limit SECONDS, "
                                  "or shrink the video with --max-side / --max-frames")

    try:
        yield tick
    finally:
        bar.close()
