"""Exceptions raised by the Hearth client.

Every error the server answers with has the shape
``{"error": {"code": ..., "message": ..., "field": ...}}``; it becomes a
:class:`HearthError` (or the subclass for its HTTP status) that keeps the
status, the stable machine-readable ``code``, the human ``message`` and, for
invalid arguments, the request ``field`` at fault. Failures that never reach
the server (nothing listening, a dropped connection, a timeout) are
:class:`ConnectionFailed` or :class:`RequestTimeout`, so one
``except HearthError`` catches everything this package raises on purpose.
"""

from __future__ import annotations

import json

import httpx

__all__ = [
    "CapacityExceeded",
    "Conflict",
    "ConnectionFailed",
    "HearthError",
    "InvalidArgument",
    "NotFound",
    "OutputTooLarge",
    "RequestTimeout",
    "RunCancelled",
    "RunFailed",
    "StreamLost",
    "TooLarge",
    "Unauthorized",
]


class HearthError(Exception):
    """An error from the Hearth server, or from talking to it.

    Attributes:
        status: The HTTP status, or ``None`` when no answer came back.
        code: Stable class of the error (``not_found``, ``invalid_argument``,
            ``sandbox_not_running``, ...); branch on this, not on the text.
        message: What happened and, where there is one, what to do.
        field: The request field at fault, for invalid arguments.
        request_id: The request's id (``x-request-id``): the server's log
            has the error's full detail under it.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        field: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (field {self.field!r})" if self.field else ""
        status = f"{self.status} " if self.status is not None else ""
        request = f" [request {self.request_id}]" if self.request_id else ""
        return f"[{status}{self.code}] {self.message}{where}{request}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, field={self.field!r})"
        )


class InvalidArgument(HearthError):
    """400: the request was malformed; ``field`` names the culprit when known."""


class Unauthorized(HearthError):
    """401: no token, or a wrong one (it may have been rotated)."""


class NotFound(HearthError):
    """404: no such sandbox, exec, file, run or route."""


class Conflict(HearthError):
    """409: the request clashes with the current state.

    Examples: the sandbox is not running (``sandbox_not_running``,
    ``sandbox_ended``), a path is a directory (``is_a_directory``), stdin
    was already closed (``stdin_closed``), a directory is not empty, a
    signal came after its run had ended (``run_ended``), another node runs
    the run (``run_busy``), a cancel came after the run had ended or a
    resolve to a run or step that waits for no decision (``conflict``).
    """


class TooLarge(HearthError):
    """413: the request body (e.g. an upload) is over the server's limit."""


class OutputTooLarge(HearthError):
    """422: a ``wait=true`` exec wrote more than the server collects; it was
    killed. Use :meth:`hearth.Sandbox.exec_stream` for large output."""


class CapacityExceeded(HearthError):
    """429: the host cannot hold another sandbox of that size right now."""


class ConnectionFailed(HearthError):
    """The server could not be reached, or the connection broke mid-request."""


class RequestTimeout(HearthError):
    """The server did not answer within the client's timeout."""


class StreamLost(HearthError):
    """A stream broke and could not be resumed (after retrying)."""


class RunFailed(HearthError):
    """A durable run this client waited for ended ``failed``.

    ``code`` and ``message`` are the run's error (``restarts_exhausted``,
    ``deadline``, ``non_determinism``, the class of a step's error, ...),
    not an HTTP error's: the requests themselves succeeded.

    Attributes:
        run_id: The run.
    """

    def __init__(self, run_id: str, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.run_id = run_id

    def __str__(self) -> str:
        return f"run {self.run_id} failed: [{self.code}] {self.message}"


class RunCancelled(HearthError):
    """A durable run this client waited for was cancelled (code
    ``cancelled``).

    Attributes:
        run_id: The run.
        cancelled_by: Who cancelled it, as recorded (``api`` by default).
    """

    def __init__(self, run_id: str, cancelled_by: str | None) -> None:
        by = f" by {cancelled_by}" if cancelled_by else ""
        super().__init__(f"run {run_id} was cancelled{by}", code="cancelled")
        self.run_id = run_id
        self.cancelled_by = cancelled_by

    def __str__(self) -> str:
        return self.message


_BY_STATUS: dict[int, type[HearthError]] = {
    400: InvalidArgument,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: OutputTooLarge,
    429: CapacityExceeded,
}


def error_from_response(response: httpx.Response) -> HearthError:
    """Turn an error response into the matching :class:`HearthError`.

    The body must already be read. A body that is not Hearth's error JSON
    (say, from a proxy in between) still gives an error with the status
    and the start of the body as its message.
    """
    status = response.status_code
    cls = _BY_STATUS.get(status, HearthError)
    code = f"http_{status}"
    message = response.reason_phrase or "request failed"
    field: str | None = None
    request_id = response.headers.get("x-request-id")
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code = str(detail.get("code") or code)
        message = str(detail.get("message") or message)
        raw_field = detail.get("field")
        field = str(raw_field) if raw_field is not None else None
        request_id = str(detail.get("request_id") or request_id or "") or None
    elif response.content:
        text = response.content[:500].decode("utf-8", errors="replace").strip()
        if text:
            message = f"{message}: {text}"
    return cls(message, code=code, status=status, field=field, request_id=request_id)
