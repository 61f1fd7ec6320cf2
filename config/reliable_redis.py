"""Reliable fetch on Redis: kombu's Redis transport, with taking a message off its queue and
recording it as in flight made one atomic step on the server. Long because it is one kombu
channel: fetching, waiting, claiming, recovery and close must be read together.

Why: the stock transport BRPOPs a message and only then, in the client, records it as unacked.
A consumer that dies between the two (SIGKILL, the OOM killer, a node lost) loses that message
for good: no visibility timeout brings it back (kombu #305). Here no process death at any instant
loses one. The pattern is Sidekiq Pro's super_fetch and resque's RPOPLPUSH branch:

- ``fetch`` (reliable_fetch.lua) pops from the consumer's queue keys in kombu's own order
  (queues in cycle order, then message priorities) and writes kombu's unacked record in the same
  script. Everything after that (visibility timeout, restore sweeps, ack, reject, requeue,
  restore at shutdown, the redelivery cap) is the stock transport's, unchanged.
- When every queue is empty the consumer blocks with ``BLMOVE`` from its first queue into an
  in-flight list of its own (scripts cannot block). What lands there is ``claim``-ed: recorded as
  unacked and taken off the list in one step. A consumer that dies in between leaves the message
  in its list; its liveness key expires (``inflight_heartbeat`` seconds, refreshed at every
  wait) and the next restore sweep gives the list back to its queue (``restore``).
- A message that is not kombu's is kept in ``_kombu.unparsable``, never dropped, never delivered.

Selected for ``redis://`` and ``rediss://`` broker URLs by config/celery_app.py, so Celery,
Flower and ``celery inspect`` see an ordinary Redis broker (same queues, same keys); and for
``sentinel://`` ones (a master found through Redis Sentinel) in its Sentinel form, at the end.

Fault points (``PHOTOFARM_FAULT_POINT``) let the tests kill a consumer exactly between two steps;
unset, they cost one attribute lookup.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from queue import Empty
from time import monotonic, time
from typing import Any, cast

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import QoS as VirtualQoS
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from kombu.utils.objects import cached_property
from redis.exceptions import NoScriptError

SCRIPT = resources.files(__package__).joinpath("reliable_fetch.lua").read_text(encoding="utf-8")
INFLIGHT_INDEX = "_kombu.inflight"  # hash: in-flight list key -> "consumer id|source queue key"
UNPARSABLE = "_kombu.unparsable"


virtual_ack = VirtualQoS.ack  # the consumer's own bookkeeping only (prefetch credit)

FAULT_POINT = os.environ.get("PHOTOFARM_FAULT_POINT", "")


def fault(point: str) -> None:
    """Die here, as SIGKILL would, when the tests ask for this point (PHOTOFARM_FAULT_POINT)."""
    if point == FAULT_POINT:
        os.kill(os.getpid(), signal.SIGKILL)


class ReliableQoS(kombu_redis.QoS):
    # kombu's, left out of celery-types' stubs
    _vrestore_count: int
    channel: ReliableChannel

    def append(self, message: Any, delivery_tag: str) -> None:
        """Only this consumer's bookkeeping: the fetch or claim script already wrote the unacked
        record, in the step that took the message (kombu's append would write it again)."""
        VirtualQoS.append(self, message, delivery_tag)

    def _refusals(self) -> tuple[type[BaseException], ...]:
        """What the broker not taking an ack or a requeue raises (writes denied, a failover, a
        lost connection)."""
        return (*self.channel.connection_errors, redis.RedisError)

    def ack(self, delivery_tag: str) -> None:
        """kombu's ack, except that one the broker does not take (a lost connection) still
        frees this consumer's prefetch slot before the error goes up (Celery logs it): the
        message stays unacked on the broker and comes back after the visibility timeout. Kept
        here, it held the slot for good, and a worker whose every slot was held so never
        fetched again once its link was back (found by tests/hosts/test_host_loss.py)."""
        try:
            super().ack(delivery_tag)
        except self._refusals():
            virtual_ack(self, delivery_tag)
            raise

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """kombu's reject, except that a requeue the broker refuses (writes denied, a failover,
        a lost connection) leaves the message recorded as unacked for the visibility sweep to
        put back, instead of raising into the consumer (Celery takes that for an unrecoverable
        error and stops the worker)."""
        try:
            super().reject(delivery_tag, requeue)
        except self._refusals() as exc:
            if not requeue:
                raise
            kombu_redis.warning("could not requeue %s now (%s): it stays unacked and comes back "
                                "after the visibility timeout", delivery_tag, exc)
            virtual_ack(self, delivery_tag)  # this consumer is done with it either way

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """The stock sweep (unacked past the visibility timeout), then dead consumers' in-flight
        lists, on the same throttle."""
        due = not (self._vrestore_count % (interval or 1))
        super().restore_visible(start, num, interval)
        if due:
            self.channel.restore_orphans()


class ReliableChannel(kombu_redis.Channel):
    QoS = ReliableQoS

    # kombu's redis Channel has these; celery-types' stubs leave them out
    connection_errors: tuple[type[BaseException], ...]
    _queue_cycle: Any  # kombu.utils.scheduling.cycle_by_name(queue_order_strategy)()
    _q_for_pri: Callable[[str, int], str]
    _flush_brpop_reauth: Callable[[], None]
    _create_client: Callable[[], redis.Redis]

    #: Seconds a consumer's liveness key lives; refreshed at every blocking wait. A consumer
    #: silent this long is taken for dead and its in-flight list goes back to its queue.
    inflight_heartbeat = 30

    from_transport_options = (*kombu_redis.Channel.from_transport_options,
                              "inflight_heartbeat")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending: str | None = None  # "fetch" or "wait": the reply the poller waits for
        self._wait_key: str | None = None
        self._fetch_keys: list[str] = []
        self._waited = False  # a wait ever started: we have in-flight lists to hand back
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._sync_client: redis.Redis | None = None  # conn_or_acquire's, made on first use
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:  # the scripts name keys themselves
            raise NotImplementedError("reliable fetch does not support global_keyprefix")

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu's, but one client object per connection pool instead of a new ``redis.Redis``
        per call: building one copies redis-py's response-callback table (~170 entries, about
        150 us of CPU on the 2-core test machine), and kombu calls this for every ack and every
        publish (task events included), two or more per task (`farm bench drain --profile`).
        A client holds no connection of its own: commands take one from the pool, as with a
        new client. kombu replaces the pool after a fork or a connection error; a new pool
        gets a new client."""
        if client:
            yield client
            return
        pool = self.pool
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = self._create_client()
        yield self._sync_client

    # -- keys --------------------------------------------------------------------------------

    @cached_property
    def alive_key(self) -> str:
        return f"_kombu.inflight.alive.{self.consumer_id}"

    def inflight_key(self, source: str) -> str:
        return f"_kombu.inflight.list.{self.consumer_id}.{source}"

    def _queue_keys(self, queues: list[str]) -> list[str]:
        # BRPOP's order in the stock transport: every queue at priority 0, then the next step...
        return [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]

    def _script_args(self, keys: list[str], *args: Any) -> list[Any]:
        return [len(keys), *keys, *args]

    @cached_property
    def _sha(self) -> str:
        with self.conn_or_acquire() as client:
            return str(client.script_load(SCRIPT))

    def _run(self, client: Any, keys: list[str], *args: Any) -> Any:
        try:
            return client.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:  # the server restarted empty: load it again
            self.__dict__.pop("_sha", None)
            return client.evalsha(self._sha, len(keys), *keys, *args)

    # -- consuming (the poller's BRPOP slot) ---------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._fetch_keys = self._queue_keys(queues)
        keys = [*self._fetch_keys, self.unacked_key, self.unacked_index_key, UNPARSABLE]
        self._send("fetch", "EVALSHA", self._sha, len(keys), *keys, "fetch", repr(time()))

    def _send(self, pending: str, *command: Any) -> None:
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self._pending = pending
        self.client.connection.send_command(*command)

    def _start_wait(self) -> None:
        """Nothing queued: block on the first queue, moving what comes into our in-flight list."""
        source = self._fetch_keys[0]
        self._wait_key = source
        self._waited = True
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.set(self.alive_key, "1", ex=self.inflight_heartbeat)
            pipe.hset(INFLIGHT_INDEX, self.inflight_key(source), f"{self.consumer_id}|{source}")
            pipe.execute()
        self._send("wait", "BLMOVE", source, self.inflight_key(source), "RIGHT", "LEFT",
                   self.brpop_timeout or 1)

    def _brpop_read(self, **options: Any) -> bool:
        pending = self._pending
        try:
            try:
                command = "EVALSHA" if pending == "fetch" else "BLMOVE"
                reply = self.client.parse_response(self.client.connection, command, **options)
            except NoScriptError:
                self.__dict__.pop("_sha", None)
                raise Empty() from None
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None
            self._pending = None
            self._flush_brpop_reauth()
        if pending == "fetch":
            if not reply:
                if not self._closing:
                    self._start_wait()
                raise Empty()
            key, raw = (bytes_to_str(part) for part in reply)
            fault("fetched")  # recorded as unacked: the visibility timeout brings it back
            return self._deliver_raw(key, raw)
        if reply is None:
            raise Empty()
        raw = bytes_to_str(reply)
        fault("moved")  # in our in-flight list only: the heartbeat sweep brings it back
        source = self._wait_key or ""
        with self.conn_or_acquire() as client:
            claimed = self._run(client, [self.inflight_key(source), self.unacked_key,
                                         self.unacked_index_key, UNPARSABLE],
                                "claim", repr(time()), raw)
        if claimed != 1:  # given back to its queue meanwhile, or not a kombu message
            raise Empty()
        fault("claimed")
        return self._deliver_raw(source, raw)

    def _deliver_raw(self, key: str, raw: str) -> bool:
        queue = key.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self.connection._deliver(loads(raw), queue)
        return True

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """basic_get: one message, fetched and recorded in one step."""
        keys = [*self._queue_keys([queue]), self.unacked_key, self.unacked_index_key, UNPARSABLE]
        with self.conn_or_acquire() as client:
            reply = self._run(client, keys, "fetch", repr(time()))
        if not reply:
            raise Empty()
        return dict(loads(bytes_to_str(reply[1])))

    # -- recovery -------------------------------------------------------------------------------

    def restore_orphans(self) -> int:
        """Give every dead consumer's in-flight list back to its queue; how many messages.

        One HGETALL and one pipeline of EXISTS per sweep, whatever the farm's size; the
        restore script runs only for the dead (and checks liveness again, atomically)."""
        moved = 0
        with self.conn_or_acquire() as client:
            lists = [(bytes_to_str(field), *bytes_to_str(owner).partition("|")[::2])
                     for field, owner in client.hgetall(INFLIGHT_INDEX).items()]
            lists = [(field, consumer, source) for field, consumer, source in lists
                     if source and consumer != self.consumer_id]
            if not lists:
                return 0
            pipe = client.pipeline(transaction=False)
            for _, consumer, _ in lists:
                pipe.exists(f"_kombu.inflight.alive.{consumer}")
            for (field, consumer, source), alive in zip(lists, pipe.execute(), strict=True):
                if alive:
                    continue
                keys = [field, source, f"_kombu.inflight.alive.{consumer}", INFLIGHT_INDEX]
                moved += max(0, int(self._run(client, keys, "restore", field)))
        if moved:
            kombu_redis.warning("restored %d message(s) from dead consumers' in-flight lists",
                                moved)
        return moved

    def _restore_own_inflight(self) -> None:
        """At close: what our last wait moved in goes back, and we stop claiming liveness."""
        with self.conn_or_acquire() as client:
            for field, owner in client.hgetall(INFLIGHT_INDEX).items():
                field, owner = bytes_to_str(field), bytes_to_str(owner)
                consumer, _, source = owner.partition("|")
                if consumer != self.consumer_id:
                    continue
                client.delete(self.alive_key)
                self._run(client, [field, source, self.alive_key, INFLIGHT_INDEX], "restore",
                          field)

    def close(self) -> None:
        if self.closed:
            # kombu closes a channel on a connection error, then again with its connection: by
            # then it has no pool and no connection, and a raise here stops the worker.
            super().close()
            return
        self._closing = True
        pending = self._pending if self._in_poll else None
        if pending == "fetch":
            # A fetch reply may hold a message already recorded as unacked: give it back now
            # rather than deliver it to a consumer that is going away.
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA")
            except Exception:  # the sweep restores it after the visibility timeout anyway
                reply = None
            if reply:
                message = loads(bytes_to_str(reply[1]))
                qos = cast(ReliableQoS, self.qos)  # the stubs type it as virtual's QoS
                qos.restore_by_tag(message["properties"]["delivery_tag"], leftmost=True)
            self._in_poll = None
        elif pending == "wait":
            # Drop the blocking connection first, so no message can land after our restore.
            self.client.connection.disconnect()
            self._in_poll = None
        if self._waited:
            # Unreachable broker: the heartbeat sweep gives it back once our liveness key expires.
            with contextlib.suppress(*self.connection_errors):
                self._restore_own_inflight()
        self._pending = None
        super().close()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with reliable fetch (see the module's docstring)."""

    Channel = ReliableChannel


class ReliableSentinelChannel(ReliableChannel, kombu_redis.SentinelChannel):
    """Reliable fetch on a master found through Sentinel: kombu's SentinelChannel builds the
    connection pools (the sentinels asked for the master before each new connection), ours
    does the fetching. After a failover the new master has what was replicated: a message whose
    fetch reached it is unacked there (the visibility sweep brings it back), one whose fetch did
    not is still queued; the script is loaded again on the first NOSCRIPT."""

    from_transport_options = (*kombu_redis.SentinelChannel.from_transport_options,
                              "inflight_heartbeat")


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with reliable fetch (``sentinel://`` broker URLs)."""

    Channel = ReliableSentinelChannel
