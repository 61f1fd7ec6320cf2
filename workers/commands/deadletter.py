"""`farm deadletter list | show ID | replay ID|--all | purge [ID ...|--older-than DAYS]`.

Everything printed from a record is escaped (tasks/core/text.py): a record holds what a message
carried, and a message may carry terminal escape sequences meant for the operator's terminal.
Messages that never ran (undecodable, unknown task, ...) are listed with the rest; reliable
fetch's set-aside ones are adopted into the store first, so they are counted and listed too."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime

import redis

from config.rabbitmq import is_amqp
from config.sentinel import redis_from_url
from config.settings import get_settings
from tasks.core.amqp_deadletter import adopt_from_broker
from tasks.core.deadletter import DeadLetter, DeadLetterStore, NotReplayable, adopt_unparsable
from tasks.core.redis import data_redis
from tasks.core.text import clip, printable


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("deadletter", help="inspect, replay and purge failed tasks")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = dsub.add_parser("list", help="newest first")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = dsub.add_parser("show", help="one record, with its traceback")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    replay = dsub.add_parser("replay", help="send again to its queue, then remove")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?")
    which.add_argument("--all", action="store_true")
    purge = dsub.add_parser("purge", help="remove records (all, by id, or by age)")
    purge.add_argument("ids", nargs="*")
    purge.add_argument("--older-than", type=float, metavar="DAYS")
    p.set_defaults(handler=run)


def _store() -> DeadLetterStore:
    s = get_settings()
    store = DeadLetterStore(data_redis(), s)
    if is_amqp(s.broker_url):
        try:
            adopt_from_broker(s.broker_url, store)
        except Exception as exc:  # the records already stored are still worth showing
            print(f"farm deadletter: broker not read ({printable(str(exc))})", file=sys.stderr)
        return store
    broker = redis_from_url(s.broker_url, s)
    try:
        adopt_unparsable(broker, store)
    except redis.RedisError as exc:  # the records already stored are still worth showing
        print(f"farm deadletter: broker not read ({printable(str(exc))})", file=sys.stderr)
    finally:
        broker.close()
    return store


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _summary(e: DeadLetter) -> str:
    task = e.task or "-"
    return printable(f"{clip(e.id, 64)}  {_when(e.failed_at)}  {clip(task, 40):<22} "
                     f"{e.reason:<11} attempts={e.attempts}  {clip(e.error, 100)}")


def run(args: argparse.Namespace) -> int:
    store = _store()
    if args.action == "list":
        entries = store.list(args.limit)
        for e in entries:
            print(json.dumps(asdict(e)) if args.json else _summary(e))
        if not args.json:
            print(f"{store.count()} dead-lettered task(s)")
        return 0
    if args.action == "show":
        entry = store.get(args.id)
        if entry is None:
            print(f"farm deadletter: no record {printable(args.id)}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(asdict(entry), indent=2))
            return 0
        for key, value in asdict(entry).items():
            if key in ("traceback", "body") or (key == "size" and not entry.body):
                continue
            shown = _when(value) if key == "failed_at" else json.dumps(value)
            print(printable(f"{key:>10}: {shown if not isinstance(value, str) else value}"))
        if entry.body:
            more = len(entry.body.encode("utf-8", "replace")) < entry.size
            print(f"\n--- body as received{' (start)' if more else ''} ---")
            print(printable(entry.body, multiline=True).rstrip())
        if entry.traceback:
            print("\n" + printable(entry.traceback, multiline=True).rstrip())
        return 0
    if args.action == "replay":
        from config.celery_app import app

        ids = store.ids() if args.all else [args.id]
        missing = refused = 0
        for entry_id in ids:
            try:
                new_id = store.replay(entry_id, app.send_task)
            except KeyError:
                print(f"farm deadletter: no record {printable(entry_id)}", file=sys.stderr)
                missing += 1
                continue
            except NotReplayable as exc:
                print(f"farm deadletter: not replayed: {printable(str(exc))}", file=sys.stderr)
                refused += 1
                continue
            print(f"replayed {printable(entry_id)} as {new_id}")
        # Refusing what cannot be replayed is a usage error (2), a missing record is 1.
        return 2 if refused and not args.all else 1 if missing else 0
    if args.action == "purge":
        if args.ids:
            n = sum(store.remove(i) for i in args.ids)
        elif args.older_than is not None:
            n = store.purge(older_than=time.time() - args.older_than * 86400)
        else:
            n = store.purge()
        print(f"purged {n} record(s)")
        return 0
    raise AssertionError(args.action)
