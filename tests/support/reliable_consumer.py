"""A bare kombu consumer on the farm's reliable Redis transport, run as its own process by the
reliable-fetch tests: ``python -m tests.support.reliable_consumer URL QUEUE[,QUEUE] COUNT``.

It prints ``ready`` once it consumes, then one line of JSON per message it receives (and acks),
and exits after COUNT messages. PHOTOFARM_FAULT_POINT makes it SIGKILL itself at that point.
"""

from __future__ import annotations

import json
import sys

from kombu import Connection, Consumer, Exchange, Message, Queue

OPTIONS = {
    "visibility_timeout": 3,  # an unacked message comes back 3 s after its delivery
    "inflight_heartbeat": 2,  # an in-flight list comes back 2 s after its consumer went quiet
    "unacked_restore_throttle": 1,  # every empty poll may sweep
}


def main(url: str, queues: str, count: int) -> None:
    exchange = Exchange("farm", type="direct")
    declared = [Queue(q, exchange, routing_key=q) for q in queues.split(",")]
    seen = 0
    with Connection(url, transport="config.reliable_redis:Transport",
                    transport_options=OPTIONS) as conn:

        def on_message(body: object, message: Message) -> None:
            nonlocal seen
            print(json.dumps(body), flush=True)
            message.ack()
            seen += 1

        with Consumer(conn.channel(), queues=declared, callbacks=[on_message]):
            print("ready", flush=True)
            while seen < count:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    continue


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
