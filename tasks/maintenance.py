"""batch.*: the farm's own upkeep, run by beat (schedules/beat.py) or by hand (`farm batch`)."""

from __future__ import annotations

from tasks.base import farm_task


@farm_task("batch.deadletter_report", max_retries=0)
def deadletter_report() -> None:
    """Summarise the dead-letter store."""


@farm_task("batch.sweep", max_retries=0)
def sweep() -> None:
    """Remove stale markers and expired dead letters."""
