"""The eviction queue of the engines that scan their folder to keep its bound (joblib,
klepto): victims found by one scan, evicted by the writes that follow it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["EvictionQueue"]


class EvictionQueue:
    """The next victims of a folder past its bound, in the policy's order, as the last scan
    found them: (name, stamp, bytes). Bounds count bytes (`by_bytes`) or entries. A victim
    is evicted only if `current(name, stamp)` says it is unchanged since the scan."""

    __slots__ = ("_items", "by_bytes")

    def __init__(self, by_bytes: bool) -> None:
        self.by_bytes = by_bytes
        self._items: deque[tuple[str, Any, int]] = deque()

    def refill(self, ordered: Iterable[tuple[str, Any, int]], depth: int) -> None:
        """Queue victims from `ordered` ((name, stamp, bytes), first to go first) until
        they add up to `depth` (bytes or entries)."""
        self._items.clear()
        total = 0
        for item in ordered:
            if total >= depth:
                break
            self._items.append(item)
            total += item[2] if self.by_bytes else 1

    def clear(self) -> None:
        self._items.clear()

    def evict(
        self,
        excess: int,
        current: Callable[[str, Any], bool | None],
        remove: Callable[[str], object],
    ) -> tuple[int, int]:
        """Evict queued victims until they cover `excess` (bytes or entries past the bound).
        `current(name, stamp)`: True if the victim is unchanged (it is removed), False if it
        was used or written again since (it stays), None if it is gone already (it no
        longer counts). Returns the bytes and entries that no longer count."""
        paid = freed = entries = 0
        while paid < excess and self._items:
            name, stamp, size = self._items.popleft()
            state = current(name, stamp)
            if state is False:
                continue
            if state:
                remove(name)
            freed += size
            entries += 1
            paid += size if self.by_bytes else 1
        return freed, entries
