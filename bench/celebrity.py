"""Celebrity fan-out on read, measured: a 10M-follower owner's post, written or merged, and what
the merge costs each feed read. One run, the benchmark's own server.

    python -m bench.celebrity [--followers N] [--reads R]      (or: farm bench celebrity)

1. Post to readable, one N-follower owner (10M by default), feeds on the data server:
   - on read (the owner over FARM_CELEBRITY_FOLLOWERS): the post's feeds.fanout body, then a
     follower's feed_page, until the photo is in it;
   - on write (the line raised above N): feeds.fanout enqueued to real `farm worker` processes
     (feed and batch profiles, one prefork process per core between them) until the post's
     fan-out ledger is empty, every follower's feed written. The same owner, the same run.
2. feed_page's cost per call for a reader following 0, 10 and 100 celebrities (1,000 posts in each
   one's list, the reader's own feed full at FARM_FEED_CAP), first page and a page behind a
   cursor, beside plain feed_page: the feed list's LRANGE alone, as feed_page read before
   celebrities were merged in. Medians of R calls each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.fanout import OWNER, add_followers

READER = 7  # follows the owner and the read benchmark's celebrities
STARS = 1_000  # the read benchmark's celebrities: owner ids from here


def ids(base: int, n: int) -> list[int]:
    """n realistic photo ids, newest first: 64-bit, time-sorted, a few apart."""
    return [base - i * 7919 for i in range(n)]


def post_on_read(photo: int) -> float:
    """Seconds from the fan-out task's body starting to the post in a follower's feed page."""
    from tasks.feeds.fanout import fan_out
    from tasks.feeds.store import feed_store

    store = feed_store()
    start = time.perf_counter()
    summary = fan_out(photo, OWNER)
    assert summary.get("on_read") is True, summary
    while photo not in store.feed_page(READER):
        time.sleep(0.001)
    return time.perf_counter() - start


def post_on_write(photo: int, state: Path) -> float:
    """Seconds from enqueueing the post's fan-out to every follower's feed written."""
    from bench.fanout import farm_time

    return farm_time(0, state, photo=photo)


def median_us(call: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def read_costs(reads: int) -> list[tuple[str, float, float]]:
    """(case, first page us, cursor page us) for plain reads and 0, 10, 100 celebrities."""
    from config.settings import get_settings
    from tasks.feeds.celebrities import is_celebrity_post
    from tasks.feeds.store import feed_store

    s = get_settings()
    store = feed_store()
    r = store.graph
    feed = ids(4_000_000_000_000_000_000, s.feed_cap)
    r.delete(store.feed_key(READER))
    r.rpush(store.feed_key(READER), *feed)
    cursor = feed[len(feed) // 2]  # half way down: LPOS has 500 entries to pass
    key = store.feed_key(READER)
    out = [("plain (LRANGE only)", median_us(lambda: r.lrange(key, 0, 29), reads),
            median_us(lambda: r.lrange(key, 500, 529), reads))]
    followed = 0
    for n in (0, 10, 100):
        for star in range(STARS + followed, STARS + n):  # follow more, each with 1,000 posts
            posts = ids(4_000_000_000_000_000_000 - star * 13, s.posts_cap)
            r.rpush(store.posts_key(star), *posts)
            store.follow(READER, star)
            is_celebrity_post(store, star, posts[0])  # over the line (1): merged from now on
        followed = n
        out.append((f"{n} celebrities followed",
                    median_us(lambda: store.feed_page(READER), reads),
                    median_us(lambda: store.feed_page(READER, before_id=cursor), reads)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--followers", type=int, default=10_000_000)
    parser.add_argument("--reads", type=int, default=2_000)
    opts = parser.parse_args()

    from workers.embedded_redis import EmbeddedRedis

    state = Path(os.environ.get("TMPDIR", "/tmp")) / f"farm-bench-celebrity-{os.getpid()}"
    state.mkdir(parents=True, exist_ok=True)
    with EmbeddedRedis() as server:
        for name in [k for k in os.environ if k.startswith("FARM_")]:
            del os.environ[name]
        os.environ.update(FARM_BROKER_URL=server.url(0), FARM_REDIS_URL=server.url(1),
                          FARM_ENV_FILE=os.devnull, FARM_STATE_DIR=str(state),
                          FARM_CELEBRITY_FOLLOWERS=str(opts.followers))
        from config.settings import get_settings
        from tasks.feeds.store import feed_store

        get_settings.cache_clear()
        store = feed_store()
        started = time.perf_counter()
        add_followers(store.graph, store.followers_key(OWNER), opts.followers - 1)
        store.follow(READER, OWNER)
        print(f"{opts.followers:,} followers of one owner in {time.perf_counter() - started:.0f} s"
              f" ({os.cpu_count()} cores, one server for data and feeds)", flush=True)

        on_read = post_on_read(4_100_000_000_000_000_000)
        print(f"post on read:  {on_read * 1000:9.1f} ms to readable by every follower "
              "(the fan-out task's body, then one feed_page)", flush=True)
        os.environ["FARM_CELEBRITY_FOLLOWERS"] = str(opts.followers * 2 + 1)  # written, not read
        get_settings.cache_clear()
        on_write = post_on_write(4_100_000_000_000_000_001, state)
        print(f"post on write: {on_write * 1000:9.1f} ms to every follower's feed written "
              "(real farm workers, enqueue to the ledger empty)", flush=True)

        os.environ["FARM_CELEBRITY_FOLLOWERS"] = "1"  # the read benchmark's owners are stars
        get_settings.cache_clear()
        costs = read_costs(opts.reads)
        base_first, base_cursor = costs[0][1], costs[0][2]
        for case, first, behind in costs:
            print(f"feed_page, {case:<22} first page {first:7.1f} us ({first / base_first:5.2f}x)"
                  f", behind a cursor {behind:7.1f} us ({behind / base_cursor:5.2f}x)")
    shutil.rmtree(state, ignore_errors=True)
    hundred = costs[-1]
    print(f"{opts.followers:,}-follower post readable in {on_read * 1000:.1f} ms on read vs "
          f"{on_write:.1f} s on write ({on_write / on_read:,.0f}x); feed_page with 100 "
          f"celebrities {hundred[1] / base_first:.1f}x plain")


if __name__ == "__main__":
    main()
