"""A Sentinel-managed pair from the pinned server binary: a master, a replica and three
sentinels (quorum 2), all password-protected, on free loopback ports.

Secrets stay in each server's 0600 config file, never on argv: the data servers' ``requirepass``
and ``masterauth`` (each may become the other's replica), the sentinels' own ``requirepass``,
``sentinel-pass`` (to talk to each other) and ``auth-pass`` (to the master and replica). Timings
are short for tests (down after 1 s); every wait is on a condition, with a deadline.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from workers.embedded_redis import CONF_FILE, EmbeddedRedis, server_binary

MASTER_NAME = "farm"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class DataServer(EmbeddedRedis):
    """A data server whose config file also carries ``conf_lines`` (masterauth, replicaof)."""

    def __init__(self, conf_lines: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conf_lines = list(conf_lines)

    def _write_conf(self) -> None:
        super()._write_conf()
        assert self.dir is not None
        with (self.dir / CONF_FILE).open("a") as f:
            f.writelines(f"{line}\n" for line in self.conf_lines)

    def info(self, section: str) -> dict[str, Any]:
        client = redis.Redis(host="127.0.0.1", port=self.port or 0, password=self.password,
                             socket_timeout=2)
        try:
            return dict(client.info(section))
        finally:
            client.close()


class SentinelServer(EmbeddedRedis):
    """One sentinel watching ``master`` as MASTER_NAME."""

    def __init__(self, master: DataServer, password: str) -> None:
        super().__init__(password=password)
        self.master = master

    def _write_conf(self) -> None:
        super()._write_conf()  # requirepass: the sentinel's own
        assert self.dir is not None
        with (self.dir / CONF_FILE).open("a") as f:
            f.write(f'sentinel sentinel-pass "{self.password}"\n'
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} {QUORUM}\n"
                    f'sentinel auth-pass {MASTER_NAME} "{self.master.password}"\n'
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n")

    def _command(self, port: int) -> list[str]:
        assert self.dir is not None
        return [str(server_binary()), str(self.dir / CONF_FILE), "--sentinel", "--port",
                str(port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--logfile", str(self.dir / "server.log")]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port or 0, password=self.password,
                           socket_timeout=2, decode_responses=True)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Poll until ``predicate`` is true; the seconds it took. Errors count as not yet."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class SentinelGroup:
    """``with SentinelGroup(data_dir) as group:`` a master and a replica (both keeping an
    append-only file, never rewritten: the history of what each accepted), three sentinels."""

    def __init__(self, data_dir: Path) -> None:
        password = secrets.token_urlsafe(24)
        auth = f'masterauth "{password}"'
        # No AOF rewrite (the file stays the whole history); a replica's sync starts at once
        # (diskless sync waits 5 s by default for more replicas to join).
        aof = ["--auto-aof-rewrite-percentage", "0", "--repl-diskless-sync-delay", "0"]
        # appendfsync always on the master: its file holds every write it acknowledged
        self.master = DataServer([auth], data_dir=data_dir / "master", appendonly=True,
                                 extra_args=aof, password=password)
        self.replica: DataServer | None = None
        self.data_dir = data_dir
        self.aof = aof
        self.sentinel_password = secrets.token_urlsafe(24)
        self.sentinels: list[SentinelServer] = []

    def start(self, timeout: float = 60.0) -> SentinelGroup:
        self.master.start()
        self.replica = DataServer(
            [f'masterauth "{self.master.password}"', f"replicaof 127.0.0.1 {self.master.port}"],
            data_dir=self.data_dir / "replica", appendonly=True, appendfsync="everysec",
            extra_args=self.aof, password=self.master.password).start()
        replica = self.replica
        # The replica first: a sentinel learns of it from its first INFO to the master.
        wait_until(lambda: (replica.info("replication").get("master_link_status") == "up"
                            and not replica.info("persistence").get("aof_rewrite_in_progress")
                            and not replica.info("persistence").get("aof_rewrite_scheduled")),
                   timeout, "the replica in sync")
        self.sentinels = [SentinelServer(self.master, self.sentinel_password).start()
                          for _ in range(3)]
        wait_until(self._all_known, timeout, "the sentinels to know the replica and each other")
        return self

    def _all_known(self) -> bool:
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                state = client.sentinel_master(MASTER_NAME)
            finally:
                client.close()
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the sentinels that answer agree on it (None: no agreement)."""
        ports = set()
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                addr = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                ports.add(int(addr[1]))
            except redis.RedisError:
                continue
            finally:
                client.close()
        return ports.pop() if len(ports) == 1 else None

    def env(self, broker_db: int, data_db: int) -> dict[str, str]:
        """FARM_* variables for clients of this group: both URLs without host or port."""
        pw = self.master.password
        return {
            "FARM_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "FARM_SENTINEL_PASSWORD": self.sentinel_password,
            "FARM_BROKER_MASTER": MASTER_NAME,
            "FARM_REDIS_MASTER": MASTER_NAME,
            "FARM_BROKER_URL": f"redis://:{pw}@/{broker_db}",
            "FARM_REDIS_URL": f"redis://:{pw}@/{data_db}",
        }

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            if server is not None:
                server.stop()

    def __enter__(self) -> SentinelGroup:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
