"""Serving the demo web tier with uvicorn: in the foreground (`farm web`) or in a thread beside
the demo's workers (`farm demo --serve`), on loopback only."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

from config.settings import Settings, SettingsError
from workers.commands.flower import is_loopback


def check_address(s: Settings) -> None:
    """A demo with no accounts stays on this machine: loopback only, whatever the password."""
    if not is_loopback(s.web_address):
        raise SettingsError(f"FARM_WEB_ADDRESS: {s.web_address!r} is not a loopback address; "
                            "the demo web tier serves this machine only")


def config(app: Starlette, s: Settings) -> uvicorn.Config:
    check_address(s)
    # No access log: URLs hold user and photo ids only, but the farm's logs stay quiet by default.
    return uvicorn.Config(app, host=s.web_address, port=s.web_port, access_log=False,
                          log_level="warning", lifespan="off", server_header=False)


class WebServer:
    """uvicorn in a daemon thread; :meth:`start` returns once it accepts connections."""

    def __init__(self, app: Starlette, s: Settings) -> None:
        self.server = uvicorn.Server(config(app, s))
        self.s = s
        self.thread = threading.Thread(target=self.server.run, name="farm-web", daemon=True)

    @property
    def url(self) -> str:
        host = self.s.web_address
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.s.web_port}"

    def start(self, timeout: float = 15.0) -> WebServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise SettingsError(f"FARM_WEB_PORT: could not serve on {self.url} "
                                    "(is the port in use?)")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(10)

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
