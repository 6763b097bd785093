"""Server-sent event streams that survive a dropped connection.

:class:`ResumableStream` reads a ``text/event-stream`` response and, when
the connection drops or the response ends before the stream's last event,
opens it again after the last event id it delivered, so the caller sees
every event exactly once. The exec stream (:mod:`hearth.execs`) and the
sandbox event stream (:mod:`hearth.events`) are built on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

import httpx

from ._http import Http
from .errors import ConnectionFailed, RequestTimeout, StreamLost
from .sse import ServerSentEvent, SSEDecoder

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ResumableStream"]

_T = TypeVar("_T")


class ResumableStream(Generic[_T]):
    """Iterator over a server-sent event stream that reconnects after a
    dropped connection, resuming after the last event id delivered.

    Subclasses say how to open the stream (:meth:`_open`), how to turn an
    event into an item (:meth:`_accept`), which item is the last
    (:meth:`_is_last`) and what a stream that ended early means
    (:meth:`_ended_early`).
    """

    def __init__(self, http: Http, after: int) -> None:
        self._http = http
        self._last_id = after
        self._connected = False
        self._gen: Iterator[_T] | None = None

    @property
    def last_event_id(self) -> int:
        """The id of the last event delivered (the ``after`` to resume from)."""
        return self._last_id

    def __iter__(self) -> Iterator[_T]:
        return self

    def __next__(self) -> _T:
        if self._gen is None:
            self._gen = self._run()
        return next(self._gen)

    def close(self) -> None:
        """Stop reading and drop the connection."""
        if self._gen is not None:
            close = getattr(self._gen, "close", None)
            if close is not None:
                close()
        # Closed here, by the caller (not by a finalizer): the connection
        # can go now.
        self._http._close_deferred()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Hooks.
    def _open(self) -> AbstractContextManager[httpx.Response]:
        """Open the stream after :attr:`_last_id`."""
        raise NotImplementedError

    def _accept(self, event: ServerSentEvent) -> _T | None:
        """The item for an event, or ``None`` to skip it (a repeat, or a
        kind this client does not know). Advances :attr:`_last_id`."""
        raise NotImplementedError

    def _is_last(self, item: _T) -> bool:
        """Whether the stream ends after this item."""
        raise NotImplementedError

    def _ended_early(self) -> bool:
        """The stream ended without its last event: return ``True`` if the
        iteration is over anyway, ``False`` to reconnect (or raise)."""
        return False

    def _run(self) -> Iterator[_T]:
        failures = 0
        while True:
            try:
                with self._open() as response:
                    self._connected = True
                    decoder = SSEDecoder()
                    for chunk in response.iter_bytes():
                        for sse in decoder.feed(chunk):
                            item = self._accept(sse)
                            if item is None:
                                continue
                            failures = 0
                            yield item
                            if self._is_last(item):
                                return
                if self._ended_early():
                    return
                cause = "the stream ended before its last event"
            except (httpx.TransportError, ConnectionFailed, RequestTimeout) as exc:
                if not self._connected:
                    # Never got a response: nothing to resume.
                    if isinstance(exc, httpx.TransportError):
                        raise self._http.transport_error(exc, "opening a stream") from exc
                    raise
                cause = f"{type(exc).__name__}: {exc}"
            failures += 1
            if failures > self._http.max_reconnects:
                raise StreamLost(
                    f"the stream broke {failures} times in a row without progress "
                    f"(last: {cause}); resume it with after={self._last_id}",
                    code="stream_lost",
                )
            time.sleep(min(0.1 * 2 ** (failures - 1), 2.0))
