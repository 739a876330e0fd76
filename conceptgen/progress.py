"""Progress bars. All long loops go through :func:`progress` so ``--quiet``
silences every bar at once, and :func:`reporting_to` can follow them from elsewhere
(the annotator shows a running TCAV experiment's bars)."""
from __future__ import annotations

import contextvars
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

from conceptgen.errors import TimeBudgetError

T = TypeVar("T")

_QUIET = os.environ.get("CONCEPTGEN_QUIET", "") not in ("", "0")
#: Called with (bar description, items done, items in all or None) as a bar advances.
Listener = Callable[[str, int, "int | None"], None]
_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("conceptgen_progress", default=None)


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET


@contextmanager
def reporting_to(listener: Listener) -> Iterator[None]:
    """Within this block (this thread or task), every :func:`progress` bar iterated
    here also reports each step to ``listener``, quiet or not."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class _Reported:
    """A bar that also tells a listener of each item; otherwise the tqdm bar itself."""

    def __init__(self, bar: tqdm, listener: Listener, desc: str, total: int | None) -> None:
        self._bar, self._listener, self._desc, self._total = bar, listener, desc, total

    def __iter__(self):
        for n, item in enumerate(self._bar, start=1):
            yield item
            self._listener(self._desc, n, self._total)

    def __getattr__(self, name):
        return getattr(self._bar, name)


def progress(iterable: Iterable[T] | None = None, **kwargs) -> "tqdm[T]":
    """A tqdm bar that honours ``--quiet``. Accepts tqdm's keyword arguments."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    disable = kwargs.pop("disable", False)  # popped first: with --quiet the "or" would skip it
    bar = tqdm(iterable, disable=_QUIET or disable, **kwargs)
    listener = _LISTENER.get()
    if listener is None or iterable is None:
        return bar
    total = kwargs.get("total")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return _Reported(bar, listener, str(kwargs.get("desc") or ""), total)



STAGE_BAR_DELAY_S = 1.0  # a stage bar appears only once its stage has run this long (short videos stay quiet)


@contextmanager
def stage_progress(stage: str, total: int, *, unit: str, label: str = "",
                   deadline: float | None = None, budget: float | None = None) -> Iterator[Callable[[int], None]]:
    """A bar for one stage inside one video, under the video-level bar: ``total`` units,
    a moving rate and ETA. Yields ``tick(n)``; past ``deadline`` (a ``time.monotonic()``
    value) a tick raises :class:`TimeBudgetError`, so a stalling stage ends its video
    instead of the run."""
    bar = progress(total=max(int(total), 0), desc=f"{label}{': ' if label else ''}{stage}", unit=unit,
                   position=1, mininterval=0.5, delay=STAGE_BAR_DELAY_S, disable=int(total) <= 0)
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
