"""Redis Lua scripts, each kept in a ``.lua`` file beside the domain that owns it.

A :class:`Script` names its file; the source is read once per process and registered once per
client (``register_script``), so every call is an EVALSHA and redis-py reloads the script by
itself after a server restart (NOSCRIPT). Scripts are whole files: never assembled from pieces.
A file may hold several related entry points, chosen by its first argument, where they share
helpers (Lua in Redis has no imports).

On a pipeline, redis-py's script objects first send SCRIPT EXISTS for every script queued: a
round trip of its own on every ``execute``. ``Script.queue`` puts a bare EVALSHA on the pipeline
instead, for hot reads; its caller loads the script and tries again on NoScriptError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script as RedisScript

from tasks.core.process_local import ProcessLocal

_registered: ProcessLocal[tuple[int, str], RedisScript] = ProcessLocal("registered scripts")


class Script:
    """One ``.lua`` file of a package: ``Script(__package__, "trim.lua")``."""

    def __init__(self, package: str | None, filename: str) -> None:
        if not package:
            raise ValueError("Script needs the owning package (pass __package__)")
        self.package, self.filename = package, filename
        self.source = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()  # what EVALSHA names

    def on(self, client: redis.Redis) -> RedisScript:
        """This script registered on ``client`` (once: the registration holds its client, so a
        cached client id is never reused while it lives)."""
        return _registered.get((id(client), self.filename + "@" + self.package),
                               lambda: client.register_script(self.source))

    def __call__(self, client: redis.Redis, keys: Sequence[Any] = (), args: Sequence[Any] = (),
                 pipe: Pipeline | None = None) -> Any:
        """Run it on ``client`` (EVALSHA), or queue it on ``pipe`` (a pipeline of ``client``)."""
        return self.on(client)(keys=list(keys), args=list(args), client=pipe)

    def queue(self, pipe: Pipeline, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> None:
        """Queue a bare EVALSHA on ``pipe``: no SCRIPT EXISTS first. A server without the script
        fails the pipeline with NoScriptError; ``load`` it and run the pipeline again."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def load(self, client: redis.Redis) -> None:
        client.script_load(self.source)

    def __repr__(self) -> str:
        return f"Script({self.package}/{self.filename})"
