"""The HTTP port's connection guards, beneath aiohttp's application.

- A request's headers must arrive within `header_seconds` of the connection opening, or of the
  first byte of a later request on it (nginx's client_header_timeout): a client that trickles
  half a header, or connects and says nothing, is disconnected instead of holding a socket.
- aiohttp's own answers to a request it cannot parse (a bad request line or header, before any
  route is matched) come in the protocols' JSON error form, not as plain text.

aiohttp has no hook for either, so this subclasses its connection handler; the tests of both
behaviours (tests/embedder/serving/test_doors_faults.py) fail if an aiohttp release moves them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

# (request path, status, message) -> the JSON answer of the protocol that path belongs to
ErrorAnswer = Callable[[str, int, str], web.Response]


class GuardedRequestHandler(RequestHandler):
    def __init__(self, manager: web.Server, *, header_seconds: float, error_answer: ErrorAnswer,
                 on_late_headers: Callable[[], None], **kwargs):  # fmt: skip
        super().__init__(manager, **kwargs)
        self._header_seconds, self._error_answer = header_seconds, error_answer
        self._on_late_headers = on_late_headers
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a whole request line and headers arrived
            self._disarm()
        elif self._header_timer is None and not self._request_in_progress and not self._messages:
            self._arm()  # the first bytes of a later request on a kept-alive connection

    def close_after_answer(self) -> None:
        """Close the connection once the current answer is sent, without reading the rest of
        the request's body (aiohttp would, for up to its lingering time, and log the error of
        a body it cannot decode as an unhandled exception)."""
        self._lingering_time = 0

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self._loop.call_later(self._header_seconds, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._request_in_progress or self._messages:
            return
        log.debug("closing a connection whose request headers took over %g s",
                  self._header_seconds)  # fmt: skip
        self._on_late_headers()
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:  # fmt: skip
        if status >= 500:
            log.error("HTTP request from %s failed", request.remote, exc_info=exc)
        else:  # a client's malformed request: its answer says what was wrong
            log.debug("malformed HTTP request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("part of the answer was sent already; closing the connection")
        if status >= 500:
            text = "internal error; the server's log has the details"
        else:
            text = message or HTTPStatus(status).phrase
        answer = self._error_answer(request.path, status, f"malformed HTTP request: {text}")
        answer.force_close()
        return answer
