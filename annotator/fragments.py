"""Rendered HTML fragments (gallery cards, member rows), cached by the data they show.

Cards and member rows are most of a page's rendering time, and most of them look the
same from one request to the next. The cache key is the fragment's data itself —
every field of its dataclass, nested previews included — plus the template, the
macro and the URL prefix. A record that changed is therefore a different key: an
entry can never be stale and nothing needs invalidating. When the cache is full it
is emptied at once (cheaper than LRU bookkeeping on every hit; refills take one page).
"""
from __future__ import annotations

import threading
from typing import Any, Hashable

from flask import current_app, request
from markupsafe import Markup

MAX_ENTRIES = 20_000  # ~1 kB each: a 20 MB ceiling per worker process


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


def content_key(value: Any) -> Hashable:
    """A hashable value equal for equal contents: dataclasses, lists, tuples and dicts
    become nested tuples (tagged with the dataclass's name); scalars stay as they are."""
    if type(value) in _SCALARS:
        return value
    names = getattr(type(value), "__dataclass_fields__", None)
    if names is not None:  # every field, so a field added later is part of the key too
        return (type(value).__qualname__, *[v if type(v) in _SCALARS else content_key(v)
                                           for v in (getattr(value, n) for n in names)])
    if isinstance(value, (list, tuple)):
        return tuple([v if type(v) in _SCALARS else content_key(v) for v in value])
    if isinstance(value, dict):
        return tuple(sorted((k, content_key(v)) for k, v in value.items()))
    return value


class FragmentCache:
    """The one owner of rendered fragments for an app: ``render(template, macro, data)``
    returns the macro's HTML for ``data``, rendering it only the first time."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[Hashable, Markup] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def render(self, template: str, macro: str, data: Any) -> Markup:
        key = (template, macro, request.script_root, content_key(data))
        html = self._entries.get(key)
        if html is not None:
            self.hits += 1
            return html
        self.misses += 1
        # the macro may use only its argument and URL helpers, which depend on script_root alone
        html = Markup(getattr(current_app.jinja_env.get_template(template).module, macro)(data))
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = html
        return html

    def __len__(self) -> int:
        return len(self._entries)
