"""Memo: the one rule every cache of the package follows, bounded in entries and in bytes.

A cache keyed by what a client sends (a path, a user id, a conversation id) must not let a client
grow it: each one holds at most `entries` entries and about `budget` bytes, skips an entry larger
than `largest` bytes (a 100 kB path is not worth remembering), and is emptied when full, rather
than tracking recency on every hit. The size of an entry is the caller's estimate of the bytes its
key and value hold (string lengths); the overhead of the objects themselves is bounded by
`entries`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    __slots__ = ("_data", "_used", "budget", "entries", "largest")

    def __init__(self, *, entries: int, largest: int, budget: int) -> None:
        self.entries, self.largest, self.budget = entries, largest, budget
        self._data: dict[K, V] = {}
        self._used = 0

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    def put(self, key: K, value: V, size: int) -> None:
        """Remember `value` for `key` unless the entry (about `size` bytes) is too large."""
        if size > self.largest:
            return
        data = self._data
        if len(data) >= self.entries or self._used + size > self.budget:
            data.clear()
            self._used = 0
        data[key] = value
        self._used += size

    def clear(self) -> None:
        self._data.clear()
        self._used = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def held(self) -> int:
        """The bytes the entries were estimated at."""
        return self._used
