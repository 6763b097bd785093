"""Commands running in a sandbox: :class:`ExecStream` and :class:`Process`.

An exec is one command. :meth:`hearth.Sandbox.exec_stream` starts one and
returns an :class:`ExecStream` over its events as they happen;
:meth:`hearth.Sandbox.exec_background` starts one that runs on its own and
returns a :class:`Process`. Both know their exec id at once, so both can
feed stdin (when started with ``stdin_open=True``) and kill the command.

An exec's events (``started``, ``stdout``, ``stderr``, ``gap``, then
``exit`` or ``error``) are numbered from 1 and kept on the server while
the exec is listed, so a stream resumes after the last id it delivered
with ``GET .../execs/{exec_id}/events`` and misses nothing.
"""

from __future__ import annotations

import json
from collections import deque
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import httpx

from ._http import Http, OpenedStream, segment
from ._resumable import ResumableStream
from .errors import HearthError, StreamLost
from .models import (
    Error,
    ExecEvent,
    ExecInfo,
    ExecResult,
    Exit,
    ExitInfo,
    Started,
    Stderr,
    Stdout,
    exec_event_from_sse,
)
from .sse import ServerSentEvent

if TYPE_CHECKING:
    from .sandboxes import Sandbox

__all__ = ["EXEC_ID_HEADER", "ExecStream", "Process"]

#: Response header naming the exec of a streamed ``POST .../exec``.
EXEC_ID_HEADER = "X-Hearth-Exec-Id"


class _ExecControl:
    """Feeding and killing an exec whose id is known: the part that
    :class:`ExecStream` and :class:`Process` share."""

    _http: Http

    @property
    def _exec_path(self) -> str:
        """``/v1/sandboxes/{id}/execs/{exec_id}``."""
        raise NotImplementedError

    def write_stdin(self, data: bytes | str, *, close: bool = False) -> None:
        """Write to the command's stdin (it must have been started with
        ``stdin_open=True``); ``close=True`` closes stdin afterwards, so the
        command sees end of input. Text is sent as UTF-8.

        Raises :class:`Conflict` (code ``stdin_closed``) when stdin was not
        kept open or is closed already.
        """
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._http.request(
            "POST",
            f"{self._exec_path}/stdin",
            params={"close": "true" if close else "false"},
            content=payload,
            headers={"Content-Type": "application/octet-stream"},
        )

    def close_stdin(self) -> None:
        """Close the command's stdin, so it sees end of input."""
        self.write_stdin(b"", close=True)

    def kill(self) -> ExecInfo:
        """Kill the command and its child processes; returns the exec as
        the kill was sent. Its end (reason ``killed``, code 137) arrives on
        its event stream. Killing an ended exec is harmless."""
        return ExecInfo.from_json(self._http.json("POST", f"{self._exec_path}/kill"))


class ExecStream(_ExecControl, ResumableStream[ExecEvent]):
    """The events of one exec: :class:`Started`, :class:`Stdout`,
    :class:`Stderr`, :class:`Gap`, then :class:`Exit` or :class:`Error`.

    Iterate it; every event has an increasing ``id``, and the iteration
    ends after the :class:`Exit` or :class:`Error`. A dropped connection
    is resumed after the last event delivered. Use it as a context manager
    (or call :meth:`close`) to drop the connection early.

    A stream from :meth:`Sandbox.exec_stream` knows its :attr:`exec_id`
    from the start, so :meth:`write_stdin` (for ``stdin_open=True``) and
    :meth:`kill` work before the first event is read.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        exec_id: str | None,
        after: int = 0,
        first: OpenedStream | None = None,
    ) -> None:
        super().__init__(sandbox._http, after)
        self._sandbox = sandbox
        self._exec_id = exec_id
        self._first = first
        if first is not None:
            self._connected = True
        # Events read to learn the exec id, not yet delivered.
        self._ahead: deque[ExecEvent] = deque()
        self._delivered = after

    def __next__(self) -> ExecEvent:
        item = self._ahead.popleft() if self._ahead else super().__next__()
        self._delivered = item.id
        return item

    def close(self) -> None:
        """Stop reading and drop the connection."""
        super().close()
        if self._first is not None:
            # Never iterated: release the response of the starting request.
            first, self._first = self._first, None
            first.__exit__(None, None, None)

    @property
    def last_event_id(self) -> int:
        """The id of the last event delivered (the ``after`` to resume from)."""
        return self._delivered

    @property
    def exec_id(self) -> str:
        """The exec id, e.g. to resume with :meth:`Sandbox.exec_events`.

        It comes from the ``X-Hearth-Exec-Id`` header of the starting
        response. Should that be missing (a proxy may drop it), the
        ``started`` event names the exec too: the stream then reads ahead
        to it, keeping the events read for the iteration.
        """
        while self._exec_id is None:
            try:
                self._ahead.append(super().__next__())
            except StopIteration:
                break
        if self._exec_id is None:
            raise StreamLost(
                f"the exec stream of sandbox {self._sandbox.id} ended without naming its exec",
                code="stream_lost",
            )
        return self._exec_id

    @property
    def _exec_path(self) -> str:
        return f"{self._sandbox._path}/execs/{segment(self.exec_id)}"

    def _open(self) -> AbstractContextManager[httpx.Response]:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._exec_id is None:
            raise StreamLost(
                f"the exec stream of sandbox {self._sandbox.id} broke before it named its "
                "exec, so it cannot be resumed",
                code="stream_lost",
            )
        return self._http.stream(
            "GET",
            f"{self._sandbox._path}/execs/{segment(self._exec_id)}/events",
            params={"encoding": "base64"},
            headers={"Last-Event-ID": str(self._last_id)},
        )

    def _accept(self, event: ServerSentEvent) -> ExecEvent | None:
        event_id = int(event.id) if event.id and event.id.isdigit() else self._last_id + 1
        if event_id <= self._last_id:
            return None  # already delivered before a reconnection
        self._last_id = event_id
        try:
            data = json.loads(event.data)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        item = exec_event_from_sse(event_id, event.event, data)
        if isinstance(item, Started) and item.exec_id and self._exec_id is None:
            self._exec_id = item.exec_id
        return item

    def _is_last(self, item: ExecEvent) -> bool:
        return isinstance(item, (Exit, Error))

    def _ended_early(self) -> bool:
        # The server ends every exec's events with exit or error (error
        # also when the guest stopped reporting without an exit), keeps it
        # while the exec is listed, and marks the exec ended only once it
        # is there. So a stream that ended without one, of an exec that
        # has ended, was opened after it (resumed past the end): nothing
        # is left. Of a running exec, it was cut short: resume.
        if self._exec_id is None:
            return False  # _open says why it cannot resume
        return self._sandbox.get_exec(self._exec_id).info.state != "running"

    def collect(self) -> ExecResult[bytes]:
        """Read the rest of the stream; return the output read (from here
        on) and the exit. Raises :class:`HearthError` on an error event."""
        out: list[bytes] = []
        err: list[bytes] = []
        for event in self:
            if isinstance(event, Stdout):
                out.append(event.data)
            elif isinstance(event, Stderr):
                err.append(event.data)
            elif isinstance(event, Exit):
                return ExecResult(self.exec_id, b"".join(out), b"".join(err), event.exit)
            elif isinstance(event, Error):
                raise HearthError(event.message, code=event.code)
        raise StreamLost("the exec stream ended without an exit event", code="stream_lost")


class Process(_ExecControl):
    """A command started with :meth:`Sandbox.exec_background` (or found
    with :meth:`Sandbox.get_exec`)."""

    def __init__(self, sandbox: Sandbox, info: ExecInfo) -> None:
        self.sandbox = sandbox
        self._http = sandbox._http
        self._info = info

    def __repr__(self) -> str:
        return f"Process(exec_id={self.exec_id!r}, state={self._info.state!r})"

    @property
    def exec_id(self) -> str:
        """The exec id (unique within its sandbox)."""
        return self._info.exec_id

    @property
    def info(self) -> ExecInfo:
        """The exec as last seen."""
        return self._info

    @property
    def _exec_path(self) -> str:
        return f"{self.sandbox._path}/execs/{segment(self.exec_id)}"

    def refresh(self) -> ExecInfo:
        """Fetch the exec's current state."""
        self._info = ExecInfo.from_json(self._http.json("GET", self._exec_path))
        return self._info

    def kill(self) -> ExecInfo:
        """Kill the command and its child processes. Its end (reason
        ``killed``) arrives on its event stream."""
        self._info = super().kill()
        return self._info

    def events(self, *, after: int = 0) -> ExecStream:
        """Follow the command's events after event id ``after``: what it
        printed so far (as far as the server kept it), then live."""
        return self.sandbox.exec_events(self.exec_id, after=after)

    def wait(self) -> ExitInfo:
        """Wait for the command to end and return how it ended.

        Raises :class:`HearthError` (code ``exec_failed``) if it ended
        without an exit report (for instance because its sandbox went
        away).
        """
        with self.events() as stream:
            for event in stream:
                if isinstance(event, Exit):
                    return event.exit
                if isinstance(event, Error):
                    raise HearthError(event.message, code=event.code)
        raise StreamLost(
            f"the events of exec {self.exec_id} ended without its exit", code="stream_lost"
        )
