"""The worker's consumer: Celery's, except that no message it cannot run is dropped unseen.
Long because it holds the screen every message passes and both brokers' dead-letter sweeps.

Celery discards a message it cannot decode, whose task it does not know, or that breaks its
protocol, with one log line (holding the whole body and headers). Here each becomes a dead letter
(tasks/core/deadletter.py: reason, queue, the error in one line, the body capped), is counted
under ``messages.<reason>`` in `farm stats`, and is then acked away as Celery does: it can never
run, and redelivering it would only fail again.

Before Celery sees a task message, it is screened here, in the parent process:
- its shape (protocol 2: headers with a printable id and task name and Celery's other headers
  of the types Celery assumes, a body of ``[args, kwargs, embed]``): a message that breaks the
  protocol raised deep in Celery's request setup, outside its own handlers (found by the fuzz
  in tests/core/test_fuzz_messages.py);
- its size: a body over the message limit (tasks/core/validation.py) is a permanent dead letter
  before a child or an event sees it, with its start and its size, not its megabytes;
- callbacks, errbacks, chains and chords: the farm sends follow-ons by name and uses none, so
  a message carrying them was not made by the farm;
- ``argsrepr``/``kwargsrepr``, which Celery logs and puts in every task event (Flower shows them)
  as the producer sent them: capped, escaped, and made from the arguments when missing (Celery
  would otherwise log the arguments' full repr).

Named by config/celery_app.py (``worker_consumer``) as a string: config never imports workers.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import redis
from celery.utils.saferepr import saferepr
from celery.worker.consumer.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from config.queues import queue_of
from config.rabbitmq import declare_all, declare_deadletter, is_amqp
from config.sentinel import redis_from_url
from config.settings import get_settings
from tasks.core import metrics, prom
from tasks.core.amqp_deadletter import adopt_dead_lettered
from tasks.core.deadletter import DeadLetter, DeadLetterStore, adopt_unparsable
from tasks.core.redis import data_redis
from tasks.core.text import clip, printable, safe
from tasks.core.validation import MAX_MESSAGE_BYTES
from workers.event_batching import BatchedEvents

log = logging.getLogger("farm.consumer")

MAX_REPR = 1024  # argsrepr/kwargsrepr: Celery's own cap when it makes them (argsrepr_maxsize)
MAX_NAME = 200  # a task name or id as shown in a dead letter or a log line
MAX_ERROR = 500  # a dead letter's one-line error
MAX_TOO_LARGE_KEPT = 2048  # of an oversized body: its start says what it was
# Protocol 2's body is [args, kwargs, embed]; its headers and the envelope add a little.
MAX_BODY_BYTES = MAX_MESSAGE_BYTES + 4096
HEART, STOCK_HEART = "workers.heartbeat:Heart", "celery.worker.consumer.heart:Heart"
UNPARSABLE_SWEEP = 10.0  # seconds between moves of reliable fetch's set-aside messages
_ID = re.compile(r"[0-9A-Za-z_.:-]{1,64}")


class BadMessage(Exception):
    """A message that cannot become a task run: ``reason`` is its dead letter's."""

    def __init__(self, reason: str, error: str, task: str = "") -> None:
        error = safe(error, MAX_ERROR)  # it may quote the message: one escaped line, short
        super().__init__(error)
        self.reason, self.error, self.task = reason, error, task


class FarmConsumer(BatchedEvents, Consumer):
    connection_errors: tuple[type[BaseException], ...]  # Celery's; not in celery-types' stubs

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc,valid-type]  # celery-types
        # heartbeats that never block the event loop on a broker out of reach
        default_steps: ClassVar[list[str]] = [
            HEART if step == STOCK_HEART else step for step in Consumer.Blueprint.default_steps]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sweeping = False
        self._broker: redis.Redis | None = None
        self._amqp: Any = None  # RabbitMQ: a connection of the sweep's own
        if is_amqp(get_settings().broker_url):
            # What RabbitMQ dead-lettered (delivery limit, rejected) is moved into the store on a
            # timer, as reliable fetch's set-aside messages are on Redis; the first soon after
            # start, so what piled up while no worker ran is counted at once.
            self.timer.call_after(1.0, self._adopt_dead_lettered)
            self.timer.call_repeatedly(UNPARSABLE_SWEEP, self._adopt_dead_lettered)
        else:
            # What reliable fetch set aside never reaches a handler here: moved into the store on
            # a timer (and by `farm stats`/`farm deadletter`), so it is counted and listed too.
            self.timer.call_repeatedly(UNPARSABLE_SWEEP, self._adopt_unparsable)

    def connect(self) -> Any:
        """Celery's, and on RabbitMQ the farm's dead-letter exchange and queue and every farm
        queue declared first (config/rabbitmq.py: declare_all)."""
        conn = super().connect()
        s = get_settings()
        if is_amqp(s.broker_url):
            declare_all(conn.default_channel, s)
        return conn

    def shutdown(self) -> None:
        self.flush_buffered_events()
        if self._amqp is not None:
            self._amqp.release()
        super().shutdown()

    # -- Celery's handlers for what it cannot run --------------------------------------------

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead(message, BadMessage("undecodable", _one_line(exc)))
        message.ack()

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead(message, BadMessage("bad protocol", "not a task message: no task header"))
        message.reject_log_error(log, self.connection_errors)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = _task_name(message)
        self._dead(message, BadMessage("unknown task", f"NotRegistered: no task named "
                                       f"{clip(repr(name), MAX_NAME)}", name))
        message.reject_log_error(log, self.connection_errors)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = "undecodable" if isinstance(exc, ContentDisallowed) else "bad protocol"
        self._dead(message, BadMessage(reason, _one_line(exc), _task_name(message)))
        message.reject_log_error(log, self.connection_errors)

    def create_task_handler(self, promise: Any = None) -> Any:
        handle = super().create_task_handler() if promise is None else \
            super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            try:
                screen(message)
                return handle(message)
            except BadMessage as bad:
                self._dead(message, bad)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # Celery's request setup choking on a field screen() does not know: before the
                # pool has the message (acks are late), so it is still this consumer's to drop.
                self._dead(message, BadMessage("bad protocol", _one_line(exc),
                                               _task_name(message)))
            return message.reject_log_error(log, self.connection_errors)

        return on_task_received

    # -- dead letters -------------------------------------------------------------------------

    def _dead(self, message: Any, bad: BadMessage) -> None:
        """Record the message as a dead letter and count it; never raises (the consumer must
        go on consuming whatever the data Redis is doing)."""
        try:
            entry = _entry(message, bad)
            log.error("message deadletter reason=%s id=%s task=%s queue=%s size=%d error=%s",
                      bad.reason, entry.id, safe(bad.task, MAX_NAME) or "-",
                      safe(entry.queue, 64), entry.size, safe(bad.error, 300))
            s = get_settings()
            r = data_redis()
            DeadLetterStore(r, s).record(entry)
            metrics.incr(r, s, "messages." + bad.reason.replace(" ", "_"))
            prom.message_dead_lettered(bad.reason)
        except Exception as exc:  # the message is dropped as Celery would, with this line
            log.warning("message dead letter not recorded (reason=%s): %s", bad.reason,
                        safe(str(exc), 300))

    def _adopt_unparsable(self) -> None:
        if self._sweeping:
            return
        self._sweeping = True
        try:
            s = get_settings()
            if self._broker is None:  # a client of its own: kombu's channels are the consumer's
                self._broker = redis_from_url(s.broker_url, s, socket_timeout=5)
            moved = adopt_unparsable(self._broker, DeadLetterStore(data_redis(), s))
            if moved:  # counted under messages.undecodable by adopt_unparsable
                prom.message_dead_lettered("undecodable", moved)
                log.error("message deadletter reason=undecodable count=%d: not kombu messages, "
                          "set aside by reliable fetch", moved)
        except Exception as exc:  # tried again at the next sweep
            log.warning("set-aside messages not moved yet: %s", safe(str(exc), 300))
        finally:
            self._sweeping = False

    def _adopt_dead_lettered(self) -> None:
        if self._sweeping:
            return
        self._sweeping = True
        try:
            if self._amqp is None:
                self._amqp = self.app.connection_for_write()
                declare_deadletter(self._amqp.default_channel)
            moved, taken = adopt_dead_lettered(self._amqp.default_channel,
                                               DeadLetterStore(data_redis(), get_settings()))
            if taken > len(moved):
                log.info("broker dead letters acked=%d already recorded (by this consumer, "
                         "before it rejected them)", taken - len(moved))
            for entry in moved:
                # a label only for the app's own task names: a sender's are unbounded
                prom.dead_lettered(entry.task if entry.task in self.app.tasks else "-",
                                   entry.reason)
                log.error("task deadletter reason=%s id=%s task=%s queue=%s: dead-lettered by "
                          "RabbitMQ", entry.reason, safe(entry.id, MAX_NAME),
                          safe(entry.task, MAX_NAME) or "-", safe(entry.queue, 64))
        except Exception as exc:  # a fresh connection, and tried again at the next sweep
            log.warning("broker dead letters not moved yet: %s", safe(str(exc), 300))
            if self._amqp is not None:
                self._amqp.release()
            self._amqp = None
        finally:
            self._sweeping = False


def screen(message: Any) -> None:
    """Raise BadMessage for a task message Celery would choke on or that is too big; cap its
    reprs in place (Celery copies the headers when it builds the request)."""
    headers = message.headers
    if not isinstance(headers, dict):
        raise BadMessage("bad protocol", f"headers must be an object, got {type(headers).__name__}")
    if "task" not in headers:  # protocol 1 (task and arguments in the body, unchecked by
        # Celery): the farm's Celery sends protocol 2 only
        raise BadMessage("bad protocol", "not a task message: no task header (Celery protocol "
                         "2 is the only one the farm sends)")
    task = headers.get("task")
    if not isinstance(task, str) or not _name(headers.get("id")):
        raise BadMessage("bad protocol", "headers 'task' and 'id' must be strings of at most "
                         f"{MAX_NAME} printable characters", task if isinstance(task, str) else "")
    size = len(_raw_body(message))
    if size > MAX_BODY_BYTES:
        raise BadMessage("too large", f"InvalidArgument: {clip(task, MAX_NAME)}: message body is "
                         f"{size:,} bytes, over the {MAX_BODY_BYTES:,}-byte limit (pass ids and "
                         "storage keys, not content)", task)
    for header, (check, what) in HEADER_RULES.items():
        if headers.get(header) is not None and not check(headers[header]):
            raise BadMessage("bad protocol", f"header {header!r} must be {what}", task)
    try:  # Celery decodes it here in the parent anyway
        payload = message.payload
    except Exception as exc:
        raise BadMessage("undecodable", _one_line(exc), task) from None
    if not (isinstance(payload, (list, tuple)) and len(payload) == 3
            and isinstance(payload[0], (list, tuple)) and isinstance(payload[1], dict)
            and isinstance(payload[2], (dict, type(None)))):
        raise BadMessage("bad protocol", "body must be [args, kwargs, embed] (Celery protocol 2), "
                         f"got {clip(saferepr(payload, maxlen=100), 100)}", task)
    embed = payload[2] or {}
    canvas = [k for k in ("callbacks", "errbacks", "chain", "chord") if embed.get(k) is not None]
    if canvas:  # the farm sends every follow-on by name: a message that carries more is not ours
        raise BadMessage("bad protocol", f"carries {'/'.join(canvas)}, which no farm task "
                         "sends (follow-ons are sent by name)", task)
    if set(embed) - {"callbacks", "errbacks", "chain", "chord"}:
        # Celery copies these over the request's own fields (retries, id, ...)
        raise BadMessage("bad protocol", "embed may hold only callbacks, errbacks, chain and "
                         "chord", task)
    for name, value in (("argsrepr", payload[0]), ("kwargsrepr", payload[1])):
        shown = headers.get(name)
        if not isinstance(shown, str) or not shown:
            shown = saferepr(value, maxlen=MAX_REPR)
        headers[name] = printable(clip(shown, MAX_REPR))


def _name(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NAME and value.isprintable()


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _seconds(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


# Celery's own headers that it uses without checking their type (each crashed its request setup,
# or a later step, when fuzzed), with what they must be when present and not null.
HEADER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # logged by Celery as they come (shadow in place of the task's name)
    **{name: (_name, f"a string of at most {MAX_NAME} printable characters")
       for name in ("shadow", "root_id", "parent_id", "group", "origin", "lang")},
    # Celery parses an ISO 8601 string; "" or 0 crashed it before its own check
    **{name: ((lambda v: isinstance(v, str) and bool(v)), "an ISO 8601 time")
       for name in ("eta", "expires")},
    "timelimit": ((lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                   and all(_seconds(t) for t in v)), "[hard, soft] seconds"),
    "retries": (_count, "a count"),
    "farm_replays": (_count, "a count"),
    "group_index": (_count, "a count"),
    "replaced_task_nesting": (_count, "a count"),
    "ignore_result": ((lambda v: isinstance(v, bool)), "true or false"),
    "stamped_headers": ((lambda v: isinstance(v, list) and all(isinstance(h, str) for h in v)),
                        "a list of header names"),
    "stamps": ((lambda v: isinstance(v, dict)), "an object"),
}


def _entry(message: Any, bad: BadMessage) -> DeadLetter:
    body = _raw_body(message)
    headers = message.headers if isinstance(message.headers, dict) else {}
    delivery = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    properties = message.properties if isinstance(message.properties, dict) else {}
    # the task id when it is a sane one (a hostile message picks its own), else kombu's tag
    entry_id = next((i for i in (headers.get("id"), properties.get("delivery_tag"))
                     if isinstance(i, str) and _ID.fullmatch(i)), uuid.uuid4().hex)
    kept = MAX_TOO_LARGE_KEPT if bad.reason == "too large" else MAX_BODY_BYTES
    return DeadLetter(
        id=entry_id, task=clip(bad.task, MAX_NAME),
        queue=queue_of(str(delivery.get("routing_key") or "")),
        args=[], kwargs={}, reason=bad.reason, error=bad.error, traceback="", attempts=1,
        body=body[:kept].decode("utf-8", "replace"), size=len(body))


def _task_name(message: Any) -> str:
    headers = message.headers if isinstance(message.headers, dict) else {}
    name = headers.get("task")
    return name if isinstance(name, str) else ""


def _raw_body(message: Any) -> bytes:
    body = message.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    return json.dumps(body, default=repr).encode()


def _one_line(exc: BaseException) -> str:
    return safe(f"{type(exc).__name__}: {' '.join(str(exc).split())}", 300)
