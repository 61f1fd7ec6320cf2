"""A timing line per task with its phases: ``fetch=12ms thumb=48ms upload=30ms``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[dict[str, float] | None] = ContextVar("farm_phases", default=None)


@contextmanager
def collect() -> Iterator[dict[str, float]]:
    """Collect the phases timed inside; yields name -> milliseconds."""
    phases: dict[str, float] = {}
    token = _current.set(phases)
    try:
        yield phases
    finally:
        _current.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time one phase of the current task; a no-op cost outside a task."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases = _current.get()
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + (time.perf_counter() - start) * 1000


def add(name: str, ms: float) -> None:
    """Add time measured elsewhere (an inner collector) to the current task's phases."""
    phases = _current.get()
    if phases is not None:
        phases[name] = phases.get(name, 0.0) + ms


def format_phases(phases: dict[str, float]) -> str:
    return " ".join(f"{name}={ms:.0f}ms" for name, ms in phases.items()) or "-"
