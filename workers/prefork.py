"""The farm's prefork pool: Celery's, with two repairs to what a warm shutdown does (SIGTERM to
the parent, what supervisord sends on every stop).

**A task already handed to a child is never dropped from the pool's books.** Celery's
``AsynPool.flush`` (run from ``Consumer.on_close``) discards every job no child has acknowledged
yet, expecting the broker to deliver its message again. That holds for a job still waiting in the
parent's outbound buffer, not for one whose bytes are already in a child's pipe: the child reads
it, runs it, and reports to a parent that no longer listens, since the shutdown reads results
only while its job cache is non-empty. So the message was never acked and went back to its queue
when the channel closed (the task ran twice), and the child waited 30 s in billiard's
``_ensure_messages_consumed`` for the parent to read its result before it exited (the stall).
Here a job a live child holds stays in the cache, its half-written bytes are finished (message
boundaries stay whole) and its child stays marked busy, so the shutdown reads its result, Celery
acks it (acks_late) and the child exits at once. Jobs no child holds are discarded as before;
their messages go back to the queue when the channel closes.

**Results read during the shutdown are acked at once.** While the pool is joined, Celery reads
the children's results one pipe at a time, sleeping 0.5 s on each pipe with nothing in it, and a
thread runs the acks every 0.5 s: a task that finished in the stop stayed unacked for up to a
second with four children (half a second per idle child), so a SIGKILL that cut the stop short
then ran it again. Here every pipe is waited on at once and the acks are sent as results arrive.

Selected for the prefork profiles by ``farm worker`` (workers/commands/worker.py) through
Celery's ``worker_pool`` setting; the module is named ``prefork`` so the worker's banner still
says so. ``PHOTOFARM_SIGTERM_AT=handed`` (workers/faults.py) makes the parent SIGTERM itself
right after it has written a task into a child's pipe: the moment the stall and the duplicate
needed.
"""

from __future__ import annotations

import gc
import logging
import select
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from billiard.pool import TERMINATE, WorkersJoined
from celery.concurrency import prefork
from celery.concurrency.asynpool import AsynPool, ResultHandler

from workers import faults

log = logging.getLogger("farm.worker")


# Celery's: runs the ack/reject callbacks queued on the hub (left out of celery-types' stubs).
_run_acks: Callable[[Any], None] | None = getattr(prefork, "_run_ready_callbacks", None)


class FarmResultHandler(ResultHandler):
    # Celery's and billiard's, left out of celery-types' stubs
    _state: int
    _hub: Any
    cache: dict[int, Any]
    fileno_to_outq: dict[int, Any]  # result pipe fd -> child process
    check_timeouts: Callable[[], None] | None
    join_exited_workers: Callable[..., Any]
    on_state_change: Callable[[Any], None]
    _flush_outqueue: Callable[..., Any]

    #: Seconds between looks at time limits and exited children while nothing arrives.
    wait = 0.5

    def on_stop_not_started(self) -> None:
        """Read the children's results until every job is done or every child gone (Celery's
        loop, which reads one pipe at a time and sleeps on each idle one), acking as they come."""
        outqueues = set(self.fileno_to_outq)
        while self.cache and outqueues and self._state != TERMINATE:
            if self.check_timeouts is not None:
                self.check_timeouts()  # a task past its time limit is still killed
            gone: set[int] = set()
            # a pipe whose child is no longer indexed is dropped by _flush_outqueue
            due = self._readable(outqueues, gone) | (outqueues - set(self.fileno_to_outq))
            for fd in due:  # one message each (or the end of a child's pipe)
                try:
                    self._flush_outqueue(fd, gone.add, self.fileno_to_outq, self.on_state_change)
                except (OSError, AttributeError):  # a stale descriptor, as Celery's loop has it
                    gone.add(fd)
                    self.fileno_to_outq.pop(fd, None)
            outqueues -= gone
            if _run_acks is not None and self._hub is not None:
                _run_acks(self._hub)  # else Celery's timer thread sends them within 0.5 s
            try:
                self.join_exited_workers(shutdown=True)
            except WorkersJoined:
                return

    def _readable(self, fds: set[int], gone: set[int]) -> set[int]:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        ready: set[int] = set()
        for fd, event in poller.poll(self.wait * 1000):
            if event & select.POLLNVAL:
                gone.add(fd)  # closed under us
            else:  # data, or the end of the pipe or an error: _flush_outqueue sorts them out
                ready.add(fd)
        return ready


class FarmAsynPool(AsynPool):
    ResultHandler = FarmResultHandler

    # Celery's and billiard's, left out of celery-types' stubs
    _state: int
    _cache: dict[int, Any]  # job id -> billiard ApplyResult
    _active_writers: set[Any]
    _busy_workers: set[int]
    outbound_buffer: deque[Any]
    write_stats: Counter[int]
    _flush_writer: Any

    def held_by_children(self) -> list[Any]:
        """Jobs written (or being written) to a live child that has not acknowledged them yet:
        the child will run them whatever the parent does next."""
        waiting = set(map(id, self.outbound_buffer))  # not (or no longer) any child's
        return [job for job in self._cache.values()
                if not job._accepted and job._write_to is not None
                and id(job) not in waiting and job._write_to._is_alive()]

    def flush(self) -> None:
        if self._state == TERMINATE:
            return
        held = self.held_by_children()
        if held:
            log.info("pool flush: %d task(s) already handed to a child kept to run to the end",
                     len(held))
        for job in held:  # a message half in a child's pipe is finished, as Celery would
            writer = job._writer() if getattr(job, "_writer", None) else None
            if writer is not None and writer in self._active_writers:
                self._flush_writer(job._write_to, writer)
        for job in held:  # hidden from Celery's flush, which would discard them
            self._cache.pop(job._job, None)
        try:
            super().flush()
        finally:
            for job in held:
                if job._write_to._is_alive():  # else lost with its child: the broker's again
                    self._cache[job._job] = job
                    self._busy_workers.add(job._write_to.inqW_fd)  # -O fair: it is busy

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)
        if faults.armed("handed"):
            schedule_writes = hub.consolidate_callback  # writes queued jobs to free children

            def schedule_writes_then_stop(*args: Any, **kwargs: Any) -> None:
                written = self.write_stats.total()
                schedule_writes(*args, **kwargs)
                if self.write_stats.total() > written:
                    faults.sigterm_self_once("handed")

            hub.consolidate_callback = schedule_writes_then_stop


class TaskPool(prefork.TaskPool):
    """``celery worker --pool prefork`` with :class:`FarmAsynPool`."""

    Pool = FarmAsynPool

    def on_start(self) -> None:
        # Everything the parent has loaded (Celery, the task modules) is moved out of the
        # collector's reach before the children are forked: a child's collection would write
        # to every object's GC header and so copy each page it shares with the parent
        # (Python's gc.freeze docs; Instagram's "Dismissing Python Garbage Collection").
        gc.collect()
        gc.freeze()
        super().on_start()
