"""push.*: Apple push notifications over APNs' HTTP/2 provider API (the push issue's work)."""

from __future__ import annotations

from typing import Any

from tasks.base import farm_task


@farm_task("push.notify")
def notify(user_ids: list[int], alert: str, badge: int | None = None, sound: str | None = None,
           data: dict[str, Any] | None = None) -> None:
    """Send one notification to every device of these users."""
