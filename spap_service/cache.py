"""The service layer's one kind of cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class BoundedCache:
    """A small thread-safe LRU map, shared by every session: token windows, dense perplexities and
    finished sweep/scan tables are reused across jobs (the worker thread cannot use streamlit's
    caches, and the service layer does not import streamlit)."""

    def __init__(self, max_entries: int) -> None:
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._max_entries:
                self._items.popitem(last=False)
