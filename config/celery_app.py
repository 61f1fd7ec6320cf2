"""The Celery app, configured from Settings in one place (saleor's celeryconf habit)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import kombu.transport
from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES

from config.queues import QUEUES, celery_routes
from config.rabbitmq import amqp_config, is_amqp, whole_second_delay
from config.sentinel import celery_url, transport_options
from config.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery.result import AsyncResult

BROKER_SOCKET_TIMEOUT = 10.0  # seconds; a consumer's waits are on the event loop, not under this
RELIABLE_TRANSPORT = "config.reliable_redis:Transport"
STOCK_TRANSPORT = "kombu.transport.redis:Transport"
RELIABLE_SENTINEL = "config.reliable_redis:SentinelTransport"
STOCK_SENTINEL = "kombu.transport.redis:SentinelTransport"

# Worker-side task modules: each domain's tasks.py (named, not imported: config depends on
# nothing of ours). Heavy libraries (Pillow, boto3, ...) are imported inside the functions that
# use them, so a worker that never resizes never pays for Pillow.
TASK_MODULES = tuple(f"tasks.{domain}.tasks" for domain in (
    "diagnostics", "photos", "feeds", "push", "social", "webhooks", "maintenance"))


def celery_config(s: Settings) -> dict[str, Any]:
    """The configuration for the broker FARM_BROKER_URL names: Redis (below) or RabbitMQ, which
    overrides the Redis-only parts (config/rabbitmq.py)."""
    conf = redis_config(s)
    if is_amqp(s.broker_url):
        conf.update(amqp_config(s))
    return conf


def redis_config(s: Settings) -> dict[str, Any]:
    exchange = Exchange("farm", type="direct")
    return {
        # Behind Sentinel (FARM_BROKER_MASTER, FARM_REDIS_MASTER): sentinel:// URLs, the master
        # named in the transport options below (config/sentinel.py).
        "broker_url": celery_url(s, s.broker_url),
        "result_backend": celery_url(s, s.result_backend),
        # JSON only: a pickle message is code execution for whoever can write to the broker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # At-least-once delivery: ack after the task, requeue if its process dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task whose hard time limit fires goes back to its queue instead of being acked away
        # (Celery's default): a child SIGKILLed just after taking a job is only noticed when the
        # limit fires, and acking then lost the job (found by `make chaos`). The redelivery cap
        # dead-letters a task that really overruns, after FARM_MAX_DELIVERIES starts.
        "task_acks_on_timeout": False,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        # A message whose worker died is handed out again once its visibility timeout has passed,
        # found by a sweep every restore_interval seconds (kombu's default sweeps ~every 100s).
        "broker_transport_options": {
            "visibility_timeout": s.visibility_timeout,
            "unacked_restore_interval": s.restore_interval,
            "unacked_restore_throttle": 1,
            # The sweep holds a Redis lock for milliseconds; kombu lets it live 300 s, so a worker
            # killed mid-sweep would stall every redelivery for five minutes.
            "unacked_mutex_expire": max(5, 2 * s.restore_interval),
            "inflight_heartbeat": s.inflight_heartbeat,
            # A broker reply takes milliseconds. Without a deadline, a worker whose host loses
            # its link waits forever in a synchronous call (a task-event PUBLISH, found by
            # tests/hosts), its event loop frozen: no acks, no time limits, no reconnect.
            "socket_timeout": BROKER_SOCKET_TIMEOUT,
            "socket_connect_timeout": BROKER_SOCKET_TIMEOUT,
            **transport_options(s, s.broker_url),
        },

        "result_backend_transport_options": {"visibility_timeout": s.visibility_timeout,
                                             **transport_options(s, s.result_backend)},
        "task_time_limit": s.task_time_limit,
        "task_soft_time_limit": s.task_soft_time_limit or None,
        # Results only for the tasks that ask (diag.ping); everything else reports via Redis.
        "task_ignore_result": True,
        "result_expires": 3600,
        "task_store_errors_even_if_ignored": False,
        # Flower needs the events.
        "worker_send_task_events": True,
        # No task-sent events: one more publish per enqueue, doubling the web tier's cost;
        # Flower shows tasks from the workers' received/started/succeeded events.
        "task_send_sent_event": False,
        "task_track_started": False,
        # Queues are declared, never invented: a typo in a route is an error, not a new queue.
        "task_queues": [Queue(q, exchange, routing_key=q) for q in QUEUES],
        "task_default_exchange": "farm",
        "task_default_queue": "maintenance",
        "task_default_routing_key": "maintenance",
        "task_create_missing_queues": False,
        "task_routes": celery_routes(),
        "imports": TASK_MODULES + s.extra_imports,
        # Messages a worker cannot run become dead letters instead of vanishing; named as a
        # string because config never imports workers (import-linter checks it).
        "worker_consumer": "workers.consumer:FarmConsumer",
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
        "timezone": "UTC",
        "enable_utc": True,
        # The beat schedule is schedules/' (when jobs run): `farm beat` installs it.
    }


class FarmCelery(Celery):
    """Celery with two additions to send_task (Task.apply_async and retries go through it too):
    results are not awaited unless asked for, and in strict mode (the tests) every message's
    arguments must be small JSON before it is published."""

    strict_arg_bytes: int | None = None
    whole_second_delays = False  # RabbitMQ's native delayed delivery (config/rabbitmq.py)

    def send_task(self, name: str, args: Sequence[Any] | None = None,
                  kwargs: dict[str, Any] | None = None, *more: Any,
                  **options: Any) -> AsyncResult[Any]:
        # send_task cannot see a task's ignore_result, so without this the result backend
        # subscribes to every sent task's result channel; the few that want results say so.
        options.setdefault("ignore_result", True)
        # When it was sent, for the queue-wait histogram and the oldest message's age (metrics):
        # protocol 2 carries no send time. A retry gets its own.
        options["headers"] = {**(options.get("headers") or {}), "farm_sent": round(time.time(), 3)}
        if self.whole_second_delays:
            whole_second_delay(options)
        if self.strict_arg_bytes is not None:
            from config.messages import check_small_json

            check_small_json(name, args or (), kwargs or {}, self.strict_arg_bytes)
        return super().send_task(name, args, kwargs, *more, **options)


def use_reliable_fetch(on: bool) -> None:
    """Make ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs mean the farm's
    reliable-fetch transports (config/reliable_redis.py) in this process, or kombu's stock ones
    again. Selected by the URL's scheme, as kombu selects any transport, so the URL stays
    kombu's own and Flower, ``celery inspect`` and kombu's URL handling see an ordinary Redis
    (or Sentinel) broker."""
    for scheme, reliable, stock in (("redis", RELIABLE_TRANSPORT, STOCK_TRANSPORT),
                                    ("rediss", RELIABLE_TRANSPORT, STOCK_TRANSPORT),
                                    ("sentinel", RELIABLE_SENTINEL, STOCK_SENTINEL)):
        TRANSPORT_ALIASES[scheme] = reliable if on else stock
        # kombu caches what each name resolved to (not in its stubs): forget the old answer
        kombu.transport._transport_cache.pop(scheme, None)  # type: ignore[attr-defined]


def make_app(s: Settings | None = None) -> FarmCelery:
    s = s or get_settings()
    use_reliable_fetch(s.reliable_fetch)
    celery = FarmCelery("photofarm", set_as_current=True)
    celery.conf.update(celery_config(s))
    # Sentry's habit: in tests every published message proves its arguments are small JSON.
    celery.strict_arg_bytes = s.max_arg_bytes if s.strict_args else None
    celery.whole_second_delays = is_amqp(s.broker_url)
    return celery


app = make_app()
