"""The one fork-safety scheme for per-process clients and caches.

A prefork child inherits its parent's memory: Redis and boto3 sockets, an event loop whose thread
does not exist in the child, locks a vanished thread may hold. Every per-process cache in the farm
is a :class:`ProcessLocal`, which a forked child finds empty (``os.register_at_fork``), so the
child builds its own on first use. The parent's objects are kept, not closed: closing them from
the child would act on the parent's connections (a GOAWAY on its APNs stream, say).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_orphans: list[object] = []  # what children inherited: referenced, so no destructor runs


class ProcessLocal(Generic[K, V]):
    """A dict of this process's values, made on first use, emptied in a forked child."""

    def __init__(self, name: str) -> None:
        self.name = name  # for repr and debugging only
        self._values: dict[K, V] = {}
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def get(self, key: K, make: Callable[[], V]) -> V:
        value = self._values.get(key)
        if value is None:
            with self._lock:  # threads of one io worker may ask at once: build once
                value = self._values.get(key)
                if value is None:
                    value = self._values[key] = make()
        return value

    def put(self, key: K, value: V) -> None:
        self._values[key] = value

    def peek(self, key: K) -> V | None:
        """The value if this process made it, else None (nothing is built)."""
        return self._values.get(key)

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._values.pop(key, None)

    def values(self) -> list[V]:
        return list(self._values.values())

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def _forget(self) -> None:
        if self._values:
            _orphans.append(self._values)
        self._values = {}
        self._lock = threading.Lock()  # a thread may have held it at fork time

    def __repr__(self) -> str:
        return f"ProcessLocal({self.name!r}, {len(self._values)} value(s))"
