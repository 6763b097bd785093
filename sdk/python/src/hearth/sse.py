"""A small incremental parser for server-sent events (``text/event-stream``).

It follows the WHATWG HTML "event stream interpretation" rules that matter
for a client: lines end in CRLF, LF or CR (a CRLF may be split across
chunks); a line starting with ``:`` is a comment (servers send them as
keep-alives); ``field: value`` loses one space after the colon; ``data``
lines accumulate joined by newlines; ``id`` persists to later events and is
ignored if it contains NUL; a blank line dispatches the event, unless no
data was given; an unfinished event at the end of the stream is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "ServerSentEvent"]


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event."""

    #: The ``event`` field, ``"message"`` when none was given.
    event: str
    #: The ``data`` lines joined by ``"\\n"``.
    data: str
    #: The last event id seen so far in the stream (it persists), if any.
    id: str | None
    #: Reconnection delay the server asked for, ms.
    retry: int | None


class SSEDecoder:
    """Turns chunks of an event stream's bytes into events.

    Feed it the body chunk by chunk with :meth:`feed`; each call returns
    the events completed by that chunk.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._started = False
        self._pending_cr = False
        self._event = ""
        self._data: list[str] = []
        self._has_data = False
        self._last_id: str | None = None
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str | None:
        """The stream's last event id so far (what ``Last-Event-ID``
        should carry on reconnection)."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Add bytes of the stream; return the events they complete."""
        if self._pending_cr and chunk.startswith(b"\n"):
            # The second half of a CRLF whose CR ended the last chunk.
            chunk = chunk[1:]
        self._pending_cr = False
        data = self._buffer + chunk
        events: list[ServerSentEvent] = []
        start = 0
        length = len(data)
        while start < length:
            cr = data.find(b"\r", start)
            lf = data.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                end, next_start = cr, cr + 1
                if next_start < length:
                    if data[next_start : next_start + 1] == b"\n":
                        next_start += 1
                else:
                    self._pending_cr = True
            else:
                end, next_start = lf, lf + 1
            event = self._line(data[start:end])
            if event is not None:
                events.append(event)
            start = next_start
        self._buffer = data[start:]
        return events

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        line = raw.decode("utf-8", errors="replace")
        if not self._started:
            self._started = True
            line = line.removeprefix("\ufeff")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        # Any other field is ignored, as the standard says.
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event_name = self._event or "message"
        data = "\n".join(self._data)
        has_data = self._has_data
        self._event = ""
        self._data = []
        self._has_data = False
        if not has_data:
            return None
        return ServerSentEvent(event=event_name, data=data, id=self._last_id, retry=self._retry)
