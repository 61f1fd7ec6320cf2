"""`farm webhooks add | list | pause | resume | replay | remove`: real-time subscriptions.

``add`` verifies the callback with the challenge first (nothing is stored if it fails) and prints
the signing secret this once: it is stored sealed and never shown again (``list`` shows none).
``resume`` queues the replay of what the subscription missed while paused; ``replay`` queues one
from any time still in the event log (FARM_WEBHOOK_LOG_DAYS). Replays run on webhooks_batch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.webhooks.subscriptions import Subscription

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("webhooks", help="real-time subscriptions: add, list, pause, resume, "
                                        "replay, remove")
    wsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = wsub.add_parser("add", help="subscribe a callback URL to a user's new photos or a "
                                      "hashtag (verified with a challenge; prints the secret "
                                      "once)")
    add.add_argument("object", choices=["user", "tag"])
    add.add_argument("id", help="the user id, or the tag (with or without '#')")
    add.add_argument("url", help="the callback: http(s)://..., no user name or password")
    add.add_argument("--verify-token", help="sent as hub.verify_token with the challenge "
                                            "(default: a random one)")
    listing = wsub.add_parser("list", help="every subscription (no secrets)")
    listing.add_argument("--json", action="store_true")
    pause = wsub.add_parser("pause", help="stop sending (events are still logged for a replay)")
    pause.add_argument("id", type=int)
    pause.add_argument("--reason", default="paused by an operator")
    resume = wsub.add_parser("resume", help="send again, and queue the replay of what was "
                                            "missed while paused")
    resume.add_argument("id", type=int)
    replay = wsub.add_parser("replay", help="queue a replay of the logged events not yet "
                                            "delivered")
    replay.add_argument("id", type=int)
    replay.add_argument("--since", required=True, type=parse_since,
                        help="an ISO time (2025-06-01T12:00, local unless it says otherwise), "
                             "Unix seconds, or an age: 90s, 30m, 2h, 1d, 1w")
    remove = wsub.add_parser("remove", help="unsubscribe (its event log goes too)")
    remove.add_argument("id", type=int)
    p.set_defaults(handler=run)


def parse_since(text: str, now: float | None = None) -> float:
    """Unix seconds from an ISO time, Unix seconds, or an age ("2h": two hours ago)."""
    now = time.time() if now is None else now
    raw = text.strip()
    ago = _AGO.fullmatch(raw.lower())
    if ago:
        return now - float(ago.group(1)) * _UNITS[ago.group(2)]
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(raw).timestamp()  # naive: local time
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an ISO time, Unix seconds, or an age like 2h") from None


def run(args: argparse.Namespace) -> int:
    from config.settings import get_settings
    from tasks.core.redis import data_redis
    from tasks.core.sealed import SealedUnreadable
    from tasks.webhooks import delivery
    from tasks.webhooks.subscriptions import Subscriptions, UnknownSubscription

    s = get_settings()
    subs = Subscriptions(data_redis(), s)
    try:
        if args.action == "add":
            sub, secret = subs.add(args.object, args.id, args.url,
                                   verify_token=args.verify_token)
            print(f"subscription {sub.id}: {sub.object} {sub.object_id} -> {sub.callback_url} "
                  "(callback verified)")
            print(f"secret: {secret}")
            print("(shown this once: the receiver verifies the webhook-signature header with "
                  "it, Standard Webhooks)")
            return 0
        if args.action == "list":
            return _list(subs.list(), as_json=args.json)
        if args.action == "pause":
            sub = subs.pause(args.id, args.reason)
            print(f"subscription {sub.id}: paused since {_when(sub.paused_at)} "
                  f"({sub.paused_reason})")
            return 0
        if args.action == "resume":
            sub, task_id, since = delivery.resume(args.id)
            print(f"subscription {sub.id}: active")
            if task_id:
                print(f"replay of what it missed since {_when(since)} queued as {task_id}")
            return 0
        if args.action == "replay":
            sub = subs.get(args.id)
            oldest = time.time() - s.webhook_log_days * 86400
            if args.since < oldest:
                print(f"note: the event log reaches back {s.webhook_log_days:g} days "
                      f"(FARM_WEBHOOK_LOG_DAYS), to {_when(oldest)}", file=sys.stderr)
            if not sub.active:
                print(f"subscription {sub.id} is paused: `farm webhooks resume {sub.id}` "
                      "resumes it and queues its replay", file=sys.stderr)
                return 1
            task_id = delivery.queue_replay(sub.id, args.since)
            print(f"replay of subscription {sub.id} since {_when(args.since)} queued as "
                  f"{task_id}")
            return 0
        sub = subs.remove(args.id)
        print(f"subscription {sub.id} removed ({sub.object} {sub.object_id} -> "
              f"{sub.callback_url})")
        return 0
    except UnknownSubscription as exc:
        print(f"farm webhooks: {exc}", file=sys.stderr)
        return 1
    except SealedUnreadable as exc:
        print(f"farm webhooks: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"farm webhooks: {exc}", file=sys.stderr)
        return 2


def _row(sub: Subscription) -> dict[str, Any]:
    return {"id": sub.id, "object": sub.object, "object_id": sub.object_id,
            "callback_url": sub.callback_url, "state": sub.state, "failures": sub.failures,
            "created_at": sub.created_at, "paused_at": sub.paused_at,
            "paused_reason": sub.paused_reason, "last_error": sub.last_error,
            "last_error_at": sub.last_error_at, "last_ok_at": sub.last_ok_at}


def _list(rows: list[Subscription], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps([_row(sub) for sub in rows], indent=2))
        return 0
    if not rows:
        print("no webhook subscriptions")
        return 0
    for sub in rows:
        state = sub.state
        if not sub.active:
            state += f" since {_when(sub.paused_at)} ({sub.paused_reason})"
        line = (f"{sub.id:<6} {sub.object} {sub.object_id:<20} {sub.callback_url}  {state}  "
                f"failures={sub.failures}  created {_when(sub.created_at)}")
        if sub.last_error:
            line += f"  last error {_when(sub.last_error_at)}: {sub.last_error}"
        print(line)
    return 0


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
