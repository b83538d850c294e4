"""Decoded tiles kept in memory between the samples cut from them.

A training crop is small and its tile large (a Vaihingen tile is ~20 MB decoded): without the
cache every sample would decode its whole tile again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

DEFAULT_CACHE_BYTES = 1 << 30


class TileCache:
    """Decoded tiles kept in memory, least recently used evicted beyond `max_bytes`.

    Each DataLoader worker holds its own copy of the dataset and therefore its own cache, so a
    tile is decoded at most once per worker while it stays in budget (a Vaihingen tile is ~20 MB
    decoded, the 26 training tiles ~0.5 GB). Pickling (spawned workers) sends an empty cache.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self.loads = 0

    def get(self, key, load: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = load()
        self.loads += 1
        size = _nbytes(value)
        self._items[key] = (value, size)
        self._bytes += size
        # Always keep the newest entry, even if it alone exceeds the budget.
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, (_, evicted) = self._items.popitem(last=False)
            self._bytes -= evicted
        return value

    def __getitem__(self, key):
        return self._items[key][0]

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self):
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"])


def _nbytes(value) -> int:
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0))
