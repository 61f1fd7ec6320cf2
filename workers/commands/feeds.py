"""`farm feeds show USER | rebuild USER | rebalance`: look at and look after feeds."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("feeds", help="show a user's feed, rebuild it, rebalance shards")
    fsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = fsub.add_parser("show", help="a page of the user's feed and activity, and its shard")
    show.add_argument("user", type=int)
    show.add_argument("--limit", type=int, default=30)
    show.add_argument("--before", type=int, help="only photos older than this id")
    rebuild = fsub.add_parser("rebuild", help="rebuild the feed from the people they follow "
                                              "(queued on feeds_batch)")
    rebuild.add_argument("user", type=int)
    fsub.add_parser("rebalance", help="after adding a shard to FARM_FEED_SHARDS: move every "
                                      "feed to the shard it now hashes to")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tasks.feeds.store import feed_store

    store = feed_store()
    if args.action == "show":
        ids = store.feed_page(args.user, args.limit, args.before)
        print(f"user {args.user}: shard {store.shard_index(args.user)} of {len(store.shards)}")
        print(f"feed ({len(ids)}): {' '.join(map(str, ids)) or '-'}")
        for entry in store.activity_page(args.user, args.limit):
            print(f"activity: {entry}")
        return 0
    if args.action == "rebuild":
        from tasks import enqueue

        try:
            print(f"rebuild of user {args.user}'s feed queued as "
                  f"{enqueue.rebuild_feed(args.user)}")
        except ValueError as exc:
            print(f"farm feeds: {exc}", file=sys.stderr)
            return 2
        return 0
    from tasks.feeds.rebalance import rebalance

    moved = rebalance(store, progress=lambda shard, n: print(f"shard {shard}: {n} moved"))
    print(f"rebalanced: {moved} feed key(s) moved")
    return 0
