"""Graceful shutdown: a uvicorn `Server` that drains on SIGTERM/SIGINT before it stops.

First signal: the app starts draining (/readyz 503, new requests 503 with Retry-After, accepted ones
go on) while the socket stays open, so clients get a clean refusal instead of a reset. Once nothing
is in flight, or `drain_timeout_s` has passed, uvicorn's own shutdown runs with the time left as its
`timeout_graceful_shutdown`, then the app's lifespan shutdown stops the engine. A second signal stops
at once (uvicorn's default behaviour).
"""
from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn

from server.state import ServerState

log = logging.getLogger("adamix.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self._signalled = False  # set by the signal handler; acted on by the event loop (on_tick)
        self._deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
        self._signalled = True

    async def on_tick(self, counter: int) -> bool:
        if self._signalled and self._deadline is None:
            self._deadline = time.monotonic() + self.state.settings.drain_timeout_s
            self.state.begin_drain()
        if self._deadline is not None and not self.should_exit:
            left = self._deadline - time.monotonic()
            if self.state.drained or left <= 0:
                if not self.state.drained:
                    log.warning("drain timeout: %d request(s) still in flight", self.state.in_flight)
                self.config.timeout_graceful_shutdown = max(1.0, left)
                self.should_exit = True
        return await super().on_tick(counter)
