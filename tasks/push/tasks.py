"""push.*: Apple push notifications over APNs' HTTP/2 provider API (the work: send.py)."""

from __future__ import annotations

from typing import Any

from tasks.core.base import farm_task


@farm_task("push.notify")
def notify(user_ids: list[int], alert: str | None, notification_id: str,
           badge: int | None = None, sound: str | None = None,
           data: dict[str, Any] | None = None, content_available: bool = False,
           priority: int | None = None, expiration: int | None = None,
           collapse_id: str | None = None) -> None:
    """Send one notification to every device of these users, once per device."""
    from tasks.push.send import notify as send

    send(user_ids, alert, notification_id, badge=badge, sound=sound, data=data,
         content_available=content_available, priority=priority, expiration=expiration,
         collapse_id=collapse_id)
