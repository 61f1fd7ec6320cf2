"""The one decorator every farm task goes through (warehouse's habit).
Long because every rule of a task's life (check, retry, cap, dead letter, report) meets in
FarmTask.__call__.

It adds, around a plain function:
- the argument check at the task's entry (tasks/core/validation.py, the same the enqueue API
  runs): a message with a bad argument fails permanently at once, naming it;
- the retry policy declared at the task: ``transient`` errors retry with exponential backoff and
  full jitter (honouring Retry-After), ``permanent`` ones fail at once; an error the task did not
  declare is a bug and is not retried either (no retry storms);
- a cap on redeliveries: a message whose process died under it ``max_deliveries`` times is
  dead-lettered instead of taking down another worker;
- the dead-letter record for every task that fails for good;
- one timing line per task with its phases, and counters in the data Redis (written in
  batches, tasks/core/metrics.py);
- a cap on what one message can make the farm write: an error that quotes a huge argument is cut
  (in place, so Celery's log lines, task events and Flower get the short one too), and arguments
  over the message limit are kept in the dead letter as their start and size only.
"""

from __future__ import annotations

import inspect
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import redis
from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from celery.utils.saferepr import saferepr

from config.celery_app import app
from config.queues import queue_for, queue_of
from config.settings import get_settings
from tasks.core import metrics, prom, timing, validation
from tasks.core.backoff import retry_delay
from tasks.core.deadletter import DeadLetter, DeadLetterStore
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.core.publish import PUBLISH_PATIENCE
from tasks.core.redis import data_redis
from tasks.core.text import clip, safe

log = logging.getLogger("farm.task")

# This process's task counters, written every metrics.FLUSH_SECONDS (not one round trip a task);
# workers/signals.py flushes it as a worker process shuts down.
task_tally = metrics.Tally(lambda: data_redis(), get_settings)

P = ParamSpec("P")
R = TypeVar("R")
ErrorTypes = tuple[type[BaseException], ...]

# A task delayed by rate limits this often is dead-lettered: at X's 100 posts per 15 minutes
# that is a backlog of about a day for one account, which an operator should look at.
MAX_RATE_LIMIT_DELAYS = 100

# An error message is cut to this many characters wherever it goes (dead letter, log, events).
MAX_ERROR_CHARS = 500
# Arguments too big to run with are kept in their dead letter as this much of their JSON.
MAX_KEPT_ARGS_CHARS = 2048

# Errors every task may retry: the data Redis blinking, or the task running out of its time.
ALWAYS_TRANSIENT: ErrorTypes = (
    TransientError,
    SoftTimeLimitExceeded,
    redis.ConnectionError,
    redis.TimeoutError,
)


class FarmTask(Task[P, R]):
    """Base of every farm task. Configure through :func:`farm_task`, not by subclassing."""

    transient: ErrorTypes = ()
    permanent: ErrorTypes = ()
    # Called after the dead letter is written, with the message's arguments by name (as sent:
    # they may be the invalid ones), the reason and the one-line error; e.g. a photo's record
    # marked failed. Its own failure is logged, never raised: the dead letter already holds all.
    on_dead_letter: Callable[[dict[str, Any], str, str], None] | None = None
    typing = True  # Celery checks call signatures at enqueue time
    max_retries: int  # farm_task always sets it: Celery's None (retry for ever) is never used

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request
        if req.called_directly:  # a plain call from Python code: no broker, no policy
            return self.run(*args, **kwargs)
        s = get_settings()
        started = time.perf_counter()
        outcome = "ok"
        with timing.collect() as phases:
            try:
                deliveries = self._count_delivery()
                if deliveries > s.max_deliveries:
                    outcome = "deadletter"
                    self._dead_letter(
                        "redelivered",
                        f"WorkerLost: started {deliveries - 1} times and never finished; its "
                        "process died each time (killed, out of memory or crashed)",
                        "",
                    )
                    return None
                checked = validation.check(self.name, args, kwargs)
                run: Callable[..., R] = self.run  # called with the checked arguments, by name
                return run(**checked)
            except Retry:
                outcome = "retry"
                raise
            except (SystemExit, KeyboardInterrupt):
                # The process is going away under the task (a warm shutdown, a child terminated
                # when the broker connection was lost): not a bug and not a failure. The message
                # is not acked, so it is redelivered; a dead letter would make it run twice.
                outcome = "interrupted"
                raise
            except BaseException as exc:
                shrunk = _shrink(exc)
                delay = self._retry_delay(exc)
                if delay is None:
                    outcome = "deadletter"
                    kind = self.classify(exc)
                    reason = "exhausted" if kind == "transient" else kind
                    try:
                        self._dead_letter(reason, _one_line(exc), traceback.format_exc())
                    except redis.RedisError as unwritten:
                        # no record to replay it from: the message must stay the broker's
                        outcome = "requeued"
                        log.error("task=%s id=%s dead letter not written (%s): message requeued "
                                  "instead", self.name, req.id, _one_line(unwritten))
                        raise Reject(unwritten, requeue=True) from exc
                    if shrunk is not exc:  # its message could not be cut in place
                        raise shrunk from None
                    raise
                exc = shrunk
                outcome = "retry"
                log.warning("task=%s id=%s retry=%d/%d in=%.2fs error=%s", self.name, req.id,
                            req.retries + 1, self.max_retries, delay, _one_line(exc))
                signal = self._publish_retry(exc, delay, started)
                if isinstance(signal, Reject):
                    outcome = "requeued"
                raise signal from exc
            finally:
                total = (time.perf_counter() - started) * 1000
                self._report(outcome, total, phases)

    def _publish_retry(self, exc: BaseException, delay: float, started: float) -> BaseException:
        """Celery's Retry once the retry message is published. Celery's own ``retry`` acks the
        message away (``Reject(requeue=False)``) when that publish fails, losing the task; here
        the publish is tried again for up to PUBLISH_PATIENCE seconds (a broker loading its AOF,
        failing over, refusing writes for a moment), and if it still fails the message is
        rejected *with* requeue: it stays the broker's, put back now, or by the visibility
        sweep if the broker cannot take it back yet. Never dropped."""
        s = get_settings()
        budget = s.task_soft_time_limit or s.task_time_limit
        left = budget - (time.perf_counter() - started) - 1.0  # a second to hand it back
        deadline = time.monotonic() + max(0.0, min(PUBLISH_PATIENCE, left))
        pause = 0.1
        while True:
            try:
                return self.retry(
                    exc=exc,  # type: ignore[arg-type]  # celery-types: Exception; Celery takes any
                    # _retry_delay has decided; rate-limit waits are not counted against
                    # max_retries, so Celery's own count must not refuse this one
                    countdown=delay, max_retries=self.request.retries + 1, throw=False)
            except Reject as refused:  # the retry's publish failed; the message is still ours
                cause = refused.args[0] if refused.args else refused
            if time.monotonic() + pause > deadline:
                log.error("task=%s id=%s retry not published (%s): message requeued instead",
                          self.name, self.request.id, _one_line(_as_error(cause)))
                return Reject(cause, requeue=True)
            log.warning("task=%s id=%s retry not published yet (%s); trying again", self.name,
                        self.request.id, _one_line(_as_error(cause)))
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _retry_delay(self, exc: BaseException) -> float | None:
        """Seconds until the retry of a transient error, or None when it must not retry.

        A rate-limit wait (:class:`RateLimited`) is counted apart, in the data Redis under the
        task's id, so waiting for quota never uses up the retries meant for failures."""
        req = self.request
        if self.classify(exc) != "transient":
            return None
        s = get_settings()
        delays = self._rate_limit_delays(bump=isinstance(exc, RateLimited))
        if isinstance(exc, RateLimited):
            if delays > MAX_RATE_LIMIT_DELAYS:
                return None
            return retry_delay(0, s.retry_base_delay, s.retry_max_delay,
                               exc.retry_after or s.retry_base_delay)
        if req.retries - delays >= self.max_retries:
            return None
        return retry_delay(req.retries - delays, s.retry_base_delay, s.retry_max_delay,
                           getattr(exc, "retry_after", None))

    def _rate_limit_delays(self, *, bump: bool) -> int:
        """How many of this task's retries were rate-limit waits (counting this one if ``bump``)."""
        req = self.request
        if req.is_eager or not req.id:
            return 0
        s = get_settings()
        key = s.key("ratelimited", req.id)
        r = data_redis()
        if not bump:
            return int(r.get(key) or 0)
        pipe = r.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, s.visibility_timeout * (MAX_RATE_LIMIT_DELAYS + 2))
        count, _ = pipe.execute()
        return int(count)

    def classify(self, exc: BaseException) -> str:
        """permanent (declared, or PermanentError), transient (declared), or error (a bug)."""
        if isinstance(exc, (PermanentError, self.permanent)):
            return "permanent"
        if isinstance(exc, (ALWAYS_TRANSIENT, self.transient)):
            return "transient"
        return "error"

    def _count_delivery(self) -> int:
        """How many times this message has started, this time included.

        A first delivery costs nothing: only a message kombu restored (its worker died under it,
        it outlived the visibility timeout, a requeue, a warm shutdown's unstarted prefetch)
        carries the redelivered mark (kombu sets it in both delivery_info and headers), and only
        those are counted in the data Redis, one round trip each. The one unmarked start is
        added without being stored. A message restored before it ever started is counted one
        start too many, once: the cap may come one crash early for it, never late."""
        req = self.request
        if req.is_eager:
            return 1
        if not ((req.delivery_info or {}).get("redelivered") or getattr(req, "redelivered", False)):
            return 1
        s = get_settings()
        key = s.key("deliveries", req.id, req.retries)
        pipe = data_redis().pipeline(transaction=False)
        pipe.incr(key)
        # Redeliveries come a visibility timeout apart; keep the count for all of them.
        pipe.expire(key, s.visibility_timeout * (s.max_deliveries + 2))
        count, _ = pipe.execute()
        return int(count) + 1

    def _dead_letter(self, reason: str, error: str, tb: str) -> None:
        req = self.request
        delivery = req.delivery_info or {}
        args, kwargs = req.args or (), req.kwargs or {}
        size = validation.message_size(args, kwargs)
        fits = size is not None and size <= validation.MAX_MESSAGE_BYTES
        entry = DeadLetter(
            id=req.id or "",
            task=self.name,
            queue=queue_of(delivery.get("routing_key") or "") or queue_for(self.name),
            # Arguments too big (or not JSON) are kept as their start and size: one message
            # must not write megabytes into the store; such a record cannot be replayed.
            args=list(args) if fits else [],
            kwargs=dict(kwargs) if fits else {},
            reason=reason,
            error=error,
            traceback=tb,
            attempts=req.retries + 1,
            replays=_count(getattr(req, "farm_replays", None)),
            body="" if fits else _args_start(args, kwargs),
            size=0 if fits else size or 0,
        )
        DeadLetterStore(data_redis(), get_settings()).record(entry)
        prom.dead_lettered(self.name, reason)
        log.error("task=%s id=%s deadletter reason=%s attempts=%d error=%s", self.name, req.id,
                  reason, entry.attempts, error)
        if self.on_dead_letter is not None:
            try:
                self.on_dead_letter(self._named_args(list(args), dict(kwargs)), reason, error)
            except Exception as exc:
                log.warning("task=%s id=%s on_dead_letter failed: %s", self.name, req.id,
                            _one_line(exc))

    def _named_args(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The message's arguments by parameter name, as far as they go (no check made)."""
        names = list(inspect.signature(self.run).parameters)
        named = dict(zip(names, args, strict=False))
        named.update(kwargs)
        return named

    def _report(self, outcome: str, total_ms: float, phases: dict[str, float]) -> None:
        req = self.request
        log.info("task=%s id=%s status=%s attempt=%d total=%.0fms %s", self.name, req.id,
                 outcome, req.retries + 1, total_ms, timing.format_phases(phases))
        if not req.is_eager:
            task_tally.add(self.name, outcome, total_ms)
            return
        try:  # eager (unit tests): written at once, no worker process runs on to flush it
            pipe = data_redis().pipeline(transaction=False)
            metrics.record(pipe, get_settings(), self.name, outcome, total_ms)
            pipe.execute()
        except redis.RedisError as exc:  # counters are not worth failing a finished task over
            log.warning("metrics not recorded: %s", _one_line(exc))


def _as_error(cause: object) -> BaseException:
    return cause if isinstance(cause, BaseException) else RuntimeError(str(cause))


def _one_line(exc: BaseException) -> str:
    """``TypeName: message`` on one line, at most MAX_ERROR_CHARS, control characters escaped."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # a broken __str__ must not take the failure path down with it
        text = ""
    return safe(f"{type(exc).__name__}: {text}" if text else type(exc).__name__,
                MAX_ERROR_CHARS)


class TaskFailed(Exception):
    """Raised in place of an error whose message was too long and could not be cut."""


def _shrink(exc: BaseException) -> BaseException:
    """``exc`` with every message in its chain cut to MAX_ERROR_CHARS, in place, so that what
    Celery makes of it (the failure log line, the task-failed event's exception and traceback,
    Flower's view) is small; or, when its own ``__str__`` keeps it long, a TaskFailed with its
    one line to raise instead."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        try:
            long = len(str(link)) > MAX_ERROR_CHARS
        except Exception:
            long = False
        if long:  # a little under the cap: some types quote their message (KeyError)
            link.args = (clip(str(link), MAX_ERROR_CHARS - 20),)
        link = link.__cause__ or link.__context__
    try:
        still_long = len(str(exc)) > MAX_ERROR_CHARS
    except Exception:
        still_long = False
    return TaskFailed(_one_line(exc)) if still_long else exc


def _count(value: object) -> int:
    """A header's count as sent, or 0 when a producer sent anything else in its place."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _args_start(args: Any, kwargs: Any) -> str:
    """The start of ``[args, kwargs]`` as Python shows them (Celery's saferepr, which stops at
    ``maxlen`` however big they are), for a record that cannot keep them whole."""
    return clip(saferepr([args, kwargs], maxlen=MAX_KEPT_ARGS_CHARS), MAX_KEPT_ARGS_CHARS)


def farm_task(
    name: str,
    *,
    transient: ErrorTypes = (),
    permanent: ErrorTypes = (),
    max_retries: int | None = None,
    on_dead_letter: Callable[[dict[str, Any], str, str], None] | None = None,
    **options: Any,
) -> Callable[[Callable[P, R]], FarmTask[P, R]]:
    """Declare a farm task by its stable name; its queue comes from config/queues.py.

    ``transient`` errors are retried, ``permanent`` ones are not (permanent wins when an error is
    both); anything else is treated as a bug: dead-lettered at once for an operator to replay.
    ``on_dead_letter(arguments, reason, error)`` runs after a dead letter is written.
    """
    queue_for(name)  # a task without a route is a start-up error, not a silent default queue
    checker = validation.checker_for(name)  # and so is one without an argument check

    def wrap(fn: Callable[P, R]) -> FarmTask[P, R]:
        _same_parameters(name, fn, checker)
        # app.task's overloads cannot be told apart with **options: its result is Any until here
        make: Callable[[Callable[P, R]], FarmTask[P, R]] = app.task(
            name=name,
            base=FarmTask,
            transient=tuple(transient),
            permanent=tuple(permanent),
            max_retries=get_settings().retry_max if max_retries is None else max_retries,
            on_dead_letter=staticmethod(on_dead_letter) if on_dead_letter else None,
            **options,
        )
        return make(fn)

    return wrap


def _same_parameters(name: str, fn: Callable[..., Any], checker: Callable[..., Any]) -> None:
    """The task and its checker take the same arguments, or the farm does not start."""
    def shape(f: Callable[..., Any]) -> list[tuple[str, bool]]:
        return [(p.name, p.default is inspect.Parameter.empty)
                for p in inspect.signature(f).parameters.values()]

    if shape(fn) != shape(checker):
        raise TypeError(f"task {name}: parameters {shape(fn)} differ from its checker's "
                        f"{shape(checker)} in tasks/core/validation.py")
