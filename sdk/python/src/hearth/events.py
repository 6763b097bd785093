"""A sandbox's event log, followed live: :class:`EventStream`.

``GET /v1/sandboxes/{id}/events`` with ``Accept: text/event-stream``
sends the events after ``Last-Event-ID`` (the sequence number ``seq``),
then each new one as it happens, and ends after the sandbox's final event.
Get one with :meth:`hearth.Sandbox.watch_events`; for the history as a
list use :meth:`hearth.Sandbox.events`.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import httpx

from ._resumable import ResumableStream
from .models import SandboxEvent
from .sse import ServerSentEvent

if TYPE_CHECKING:
    from .sandboxes import Sandbox

__all__ = ["EventStream"]


class EventStream(ResumableStream[SandboxEvent]):
    """A sandbox's events, live; ends after its final event
    (``sandbox.stopped``, ``sandbox.failed``, ``sandbox.timed_out`` or
    ``sandbox.lost``).

    A dropped connection is resumed after the last event delivered, so
    every event comes once; :attr:`last_event_id` is the ``seq`` to pass
    as ``after`` to resume by hand.
    """

    def __init__(self, sandbox: Sandbox, *, after: int) -> None:
        super().__init__(sandbox._http, after)
        self._sandbox = sandbox

    def _open(self) -> AbstractContextManager[httpx.Response]:
        return self._http.stream(
            "GET",
            f"{self._sandbox._path}/events",
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(self._last_id)},
        )

    def _accept(self, event: ServerSentEvent) -> SandboxEvent | None:
        try:
            data = json.loads(event.data)
        except ValueError:
            return None
        if not isinstance(data, dict) or "seq" not in data:
            return None
        item = SandboxEvent.from_json(data)
        if item.seq <= self._last_id:
            return None
        self._last_id = item.seq
        return item

    def _is_last(self, item: SandboxEvent) -> bool:
        return item.is_final

    def _ended_early(self) -> bool:
        # The server ends a stream resumed after the final event at once.
        return self._sandbox.refresh().is_final
