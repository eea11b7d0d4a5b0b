"""Connection limits of ``ovdet serve``: uvicorn's h11 protocol with a deadline on request headers
and a cap on open connections that makes room by closing the longest-waiting one.

uvicorn reads request headers without a deadline, and its ``limit_concurrency`` counts every open
connection, so a few hundred clients that send half a request lock everyone out with a plain-text
503. Here each connection has ``header_timeout_s`` to deliver a request's headers, from its opening
or from its previous answer (a client that sent part of them gets 408 JSON, then the connection is
closed). At ``max_connections`` a new connection closes the one that has waited longest for its
next request's headers (idle keep-alive or half-sent); a connection whose request is running is
never closed. Only when every connection runs a request does the new one get 503 JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ovdet.config import ServeConfig

__all__ = ["GuardedH11Protocol", "guarded_protocol"]


def _json_body(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail}).encode()


def _timeout_response(detail: str) -> bytes:
    """A whole ``408`` answer with a JSON body, written straight to the socket (no request was parsed)."""
    body = _json_body("header_timeout", detail)
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nx-content-type-options: nosniff\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (see the module).

    Attributes:
        header_timeout_s: seconds a connection has to deliver a request's headers.
        max_connections: open connections at most.
        waiting_since: ``time.monotonic()`` when this connection began waiting for a request's
            headers; None while a request runs.
    """

    header_timeout_s: float = ServeConfig.header_timeout_s
    max_connections: int = ServeConfig.max_connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting_since: float | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaited: object = None  # the request cycle before the one awaited
        self._partial = False  # bytes of the awaited request have arrived

    # -------------------------------------------------------------------- uvicorn's hooks
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_request()
        self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.waiting_since is not None:
            self._partial = True
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.waiting_since is not None and self.cycle is not self._awaited:
            self._stop_waiting()  # a new request's headers are complete: it runs

    def on_response_complete(self) -> None:
        answered = self.cycle
        super().on_response_complete()  # may start a pipelined request
        if not self.transport.is_closing() and self.cycle is answered:
            self._await_request()

    # -------------------------------------------------------------------- the header deadline
    def _await_request(self) -> None:
        self._stop_waiting()
        self.waiting_since = time.monotonic()
        self._awaited, self._partial = self.cycle, False
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _stop_waiting(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self.waiting_since = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        self.close_waiting(
            f"the request headers did not arrive within {self.header_timeout_s:g} s (header_timeout_s); "
            "send the whole request at once, or put a reverse proxy in front of slow clients"
        )

    def close_waiting(self, detail: str) -> None:
        """Close this connection, which waits for a request's headers; a client that sent part of
        them gets 408 JSON with ``detail`` first."""
        self._stop_waiting()
        if self.transport.is_closing():
            return
        if self._partial and self.conn.their_state is h11.IDLE:
            self.transport.write(_timeout_response(detail))
        self.transport.close()

    # -------------------------------------------------------------------- the connection cap
    def _make_room(self) -> None:
        """Over ``max_connections``: close the longest-waiting other connection, or, when all run
        requests, answer this one's request with 503 JSON and close it."""
        live = [c for c in self.connections if not c.transport.is_closing()]
        if len(live) <= self.max_connections:
            return
        waiting = [
            c for c in live if isinstance(c, GuardedH11Protocol) and c is not self and c.waiting_since is not None
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c.waiting_since)
            oldest.close_waiting(
                f"the server holds {self.max_connections} connections (max_connections) and this one had waited "
                "longest for its request headers"
            )
        else:
            self.app = _refuse(self.max_connections)  # this connection's own app: its first request gets 503


def _refuse(limit: int) -> Any:
    """An ASGI app that answers 503 JSON (``Retry-After: 1``) and closes the connection."""
    body = _json_body(
        "busy", f"the server holds {limit} connections, all running requests (max_connections); retry later"
    )

    async def app(scope: dict, receive: Any, send: Any) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


def guarded_protocol(cfg: ServeConfig) -> type[GuardedH11Protocol]:
    """The protocol class to pass as ``uvicorn.run(..., http=...)`` for ``cfg``'s
    ``header_timeout_s`` and ``max_connections``."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": cfg.header_timeout_s, "max_connections": cfg.max_connections},
    )
