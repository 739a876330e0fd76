"""Progress bars. All long loops go through :func:`progress` so ``--quiet``
silences every bar at once."""
from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

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
