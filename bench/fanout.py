"""Feed fan-out at Redis speed: three figures from one run, against the benchmark's own servers.

    python -m bench.fanout [--followers N] [--shards S]      (or: farm bench fanout)

1. Followers written per second by one chunk-writing process (tasks.feeds.fanout.write_chunk over
   every chunk of an N-follower owner, N = 1M by default), beside redis-benchmark's pipelined LPUSH
   rate (`redis-benchmark -t lpush -P 100`) against the same server, and the ratio; and beside
   the server's bare write loop (BARE_LOOP: the two commands every follower costs, nothing
   else), a ceiling for any fan-out that keeps feeds in order and never writes an id twice. With
   ``--shards S``, the feeds then live on S servers of their own (FARM_FEED_SHARDS) and the
   same process writes the same owner's chunks again: the sharded rate beside the one-server
   rate of the same run.
2. The time for one N-follower post to reach every feed through the real farm: enqueue
   feeds.fanout, real `farm worker` processes (feed and batch profiles, one prefork process per
   core between them), until the post's fan-out ledger is empty (every chunk has run); on the
   shards when ``--shards`` is given.
3. Bytes of Redis memory per feed entry, for full feeds (FARM_FEED_CAP entries each).

redis-benchmark is not on PyPI: it is taken from PATH if there (Debian's redis-tools has it);
without it the ratio is left out, said so, and everything else still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import redis

OWNER = 1
FIRST_FOLLOWER = 1_000_000  # follower ids start here, so none collides with the owner


def add_followers(r: redis.Redis, key: str, n: int) -> None:
    """n followers (member = score = id) in batches: the graph as the web tier keeps it."""
    batch = 20_000
    pipe = r.pipeline(transaction=False)
    for start in range(0, n, batch):
        ids = range(FIRST_FOLLOWER + start, FIRST_FOLLOWER + min(n, start + batch))
        pipe.zadd(key, {str(i): i for i in ids})
        pipe.execute()


def lpush_baseline(port: int, password: str, requests: int) -> float | None:
    tool = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if tool is None:
        return None
    # -a puts the password on this tool's argv: acceptable for the benchmark's own server,
    # which lives only as long as this run.
    out = subprocess.run([tool, "-p", str(port), "-a", password, "-t", "lpush", "-P", "100", "-n",
                          str(requests), "-q"], capture_output=True, text=True, timeout=300)
    match = re.search(r"LPUSH[^:]*:\s*([\d.]+)\s*requests per second", out.stdout)
    return float(match.group(1)) if match else None


# The least a fan-out write can cost per follower on the server: one script per slice, and per
# follower only the feed's head read and the id pushed (no follower selection, no activity
# check, no marker, ids made in Lua rather than read). A ceiling, not a rival design.
BARE_LOOP = """
local id, prefix, first, last = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for uid = first, last do
  local key = prefix .. uid
  local head = redis.call('LINDEX', key, '0')
  if not head or head < id then redis.call('LPUSH', key, id) end
end
return last - first + 1
"""


def bare_loop_rate(url: str, followers: int, slice_size: int) -> float:
    """Followers per second of BARE_LOOP into as many new feeds, in a database of its own (an
    empty keyspace, as the chunk writer's feeds started in), emptied after."""
    r = redis.Redis.from_url(url)
    sha = r.script_load(BARE_LOOP)
    start = time.perf_counter()
    for first in range(FIRST_FOLLOWER, FIRST_FOLLOWER + followers, slice_size):
        last = min(first + slice_size, FIRST_FOLLOWER + followers) - 1
        r.evalsha(sha, 0, "2000000000000000009", "bench:bare:", first, last)
    elapsed = time.perf_counter() - start
    r.flushdb(asynchronous=False)
    r.close()
    return followers / elapsed


def chunk_rate(photo: int) -> tuple[float, int]:
    """Followers written per second by this one process, over every chunk of the owner."""
    from config.settings import get_settings
    from tasks.feeds.fanout import chunk_ranges, write_chunk
    from tasks.feeds.store import feed_store

    s = get_settings()
    store = feed_store(s)
    ranges = chunk_ranges(store, OWNER, s.feed_chunk_size)
    start = time.perf_counter()
    written = sum(max(0, write_chunk(photo, OWNER, lo, hi, False)) for lo, hi in ranges)
    elapsed = time.perf_counter() - start
    return written / elapsed, written


def farm_time(followers: int, state: Path, photo: int = 2_000_000_000_000_000_001) -> float:
    """Seconds from enqueueing one post's fan-out to its last chunk written, with real workers
    (``followers`` only for the record: the ledger says when every chunk has run)."""
    from config.celery_app import app
    from tasks.feeds.store import feed_store
    from workers.launcher import WorkerProcess, stop_all

    store = feed_store()
    cores = os.cpu_count() or 1
    workers = [WorkerProcess("feed", state / "feed.log", concurrency=cores).start(),
               WorkerProcess("batch", state / "batch.log", concurrency=max(1, cores // 2),
                             node="batch").start()]
    try:
        for w in workers:
            w.wait_ready(60)
        ledger = store.pending_key(photo)  # each chunk listed before it is sent, crossed off
        start = time.perf_counter()        # when it has run (tasks/feeds/ledger.py)
        app.send_task("feeds.fanout", kwargs={"photo_id": photo, "owner_id": OWNER})
        listed, deadline = False, time.monotonic() + 600
        while not listed or store.graph.exists(ledger):
            listed = listed or bool(store.graph.exists(ledger))
            if time.monotonic() > deadline:
                raise RuntimeError(f"no end to the fan-out in 600 s (ledger listed: {listed}); "
                                   f"worker logs in {state}")
            time.sleep(0.01)
        return time.perf_counter() - start
    finally:
        stop_all(workers)


def bytes_per_entry(feeds: int, cap: int) -> float:
    from tasks.core.redis import data_redis

    r = data_redis()
    before = int(r.info("memory")["used_memory"])
    base = 3_000_000_000_000_000_000
    pipe = r.pipeline(transaction=False)
    for uid in range(feeds):
        # Realistic ids: 64-bit, time-sorted, a few apart (several posts a second farm-wide).
        pipe.rpush(f"bench:feed:{uid}", *(base - i * 7919 for i in range(cap)))
        if uid % 50 == 49:
            pipe.execute()
    pipe.execute()
    used = int(r.info("memory")["used_memory"]) - before
    return used / (feeds * cap)


def main() -> None:
    parser = argparse.ArgumentParser(description="fan-out benchmark")
    parser.add_argument("--followers", type=int, default=1_000_000)
    parser.add_argument("--lpush-requests", type=int, default=2_000_000)
    parser.add_argument("--shards", type=int, default=0,
                        help="also write to S feed servers of their own (FARM_FEED_SHARDS)")
    opts = parser.parse_args()

    from workers.embedded_redis import EmbeddedRedis

    state = Path(os.environ.get("TMPDIR", "/tmp")) / f"farm-bench-fanout-{os.getpid()}"
    state.mkdir(parents=True, exist_ok=True)
    with EmbeddedRedis() as server, contextlib.ExitStack() as stack:
        shards = [stack.enter_context(EmbeddedRedis()) for _ in range(opts.shards)]
        for name in [k for k in os.environ if k.startswith("FARM_")]:
            del os.environ[name]
        # fan-out on write is what this measures: the owner stays under the celebrity line
        os.environ.update(FARM_BROKER_URL=server.url(0), FARM_REDIS_URL=server.url(1),
                          FARM_ENV_FILE=os.devnull, FARM_STATE_DIR=str(state),
                          FARM_CELEBRITY_FOLLOWERS=str(opts.followers + 1))
        from config.settings import get_settings
        from tasks.feeds.store import feed_store

        s = get_settings()
        store = feed_store(s)
        add_followers(store.graph, store.followers_key(OWNER), opts.followers)
        print(f"server: valkey {store.graph.info('server')['valkey_version']} on a free port; "
              f"{opts.followers} followers, chunks of {s.feed_chunk_size}, {os.cpu_count()} "
              f"cores" + (f"; {opts.shards} feed shards of their own" if shards else ""),
              flush=True)

        rate, written = chunk_rate(2_000_000_000_000_000_000)
        print(f"one chunk-writing process: {rate:,.0f} followers/s ({written} written)")
        from tasks.feeds.fanout import WRITE_SLICE

        bare = bare_loop_rate(server.url(3), opts.followers, WRITE_SLICE)
        print(f"the server's bare write loop (LINDEX + LPUSH per new feed in one script per "
              f"{WRITE_SLICE}, nothing else): {bare:,.0f} followers/s; the chunk writer did "
              f"{rate / bare:.2f} of it")
        sharded = 0.0
        if shards:
            os.environ["FARM_FEED_SHARDS"] = ",".join(shard.url(0) for shard in shards)
            get_settings.cache_clear()
            sharded, written = chunk_rate(2_000_000_000_000_000_002)
            print(f"the same process, feeds on {opts.shards} shards: {sharded:,.0f} followers/s "
                  f"({written} written; {sharded / rate:.2f} of the one-server rate)")
        lpush = lpush_baseline(server.port or 0, server.password, opts.lpush_requests)
        if lpush is None:
            print("redis-benchmark not found on PATH: the LPUSH baseline is left out")
        else:
            print(f"redis-benchmark -t lpush -P 100: {lpush:,.0f} LPUSH/s (same server)")

        e2e = farm_time(opts.followers, state)
        where = f"feeds on {opts.shards} shards" if shards else "feeds on the data server"
        print(f"one {opts.followers}-follower post through the farm: {e2e:.2f} s "
              f"(enqueue -> every chunk written; {where})")
        os.environ.pop("FARM_FEED_SHARDS", None)
        get_settings.cache_clear()
        per_entry = bytes_per_entry(500, s.feed_cap)
        print(f"memory: {per_entry:.1f} bytes per feed entry (500 full feeds of {s.feed_cap})")
    shutil.rmtree(state, ignore_errors=True)
    ratio = f"{rate / lpush:.2f} of pipelined LPUSH" if lpush else "no LPUSH baseline"
    spread = (f"; {sharded:,.0f}/s on {opts.shards} shards ({sharded / rate:.2f} of one server)"
              if shards else "")
    print(f"{rate:,.0f} followers/s per process ({ratio}, {rate / bare:.2f} of the bare write "
          f"loop's {bare:,.0f}/s; goals >= 400k/s and >= 0.25){spread}, "
          f"{e2e:.2f} s for {opts.followers:,} followers end to end (goal <= 5 s), "
          f"{per_entry:.1f} bytes/entry (goal <= 12)")


if __name__ == "__main__":
    main()
