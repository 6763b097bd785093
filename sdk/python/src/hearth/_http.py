"""The HTTP transport under the client.

:class:`Http` holds the pooled ``httpx.Client``, the timeouts and the
reconnection budget, and is what every handle (a sandbox, an exec, its
files, a stream) talks to the server through. It sends requests, opens
responses that are read incrementally, and turns what goes wrong into a
:class:`~hearth.errors.HearthError`: an error status through
:func:`~hearth.errors.error_from_response`, a request that got no (full)
answer into :class:`~hearth.errors.ConnectionFailed` or
:class:`~hearth.errors.RequestTimeout` naming the server and where its
URL came from.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Union

import httpx

from .errors import ConnectionFailed, HearthError, RequestTimeout, error_from_response

__all__ = ["Http", "OpenedStream", "json_object", "segment"]

# Server-sent event streams carry a keep-alive comment every 15 s; a read
# that waits much longer than that means the connection is dead.
STREAM_READ_TIMEOUT = 60.0

#: A timeout as a request takes it: seconds, or an ``httpx.Timeout``.
Timeout = Union[None, float, httpx.Timeout]

# Requests that may be sent again when their connection turns out to have
# been closed: the idempotent methods (RFC 9110, 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def segment(value: str) -> str:
    """One URL path segment, escaped."""
    return urllib.parse.quote(value, safe="")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object; :class:`HearthError` (code
    ``bad_response``) when it is not one."""
    try:
        body = response.json()
    except ValueError as exc:
        raise HearthError(
            f"the server answered {response.request.method} {response.request.url.path} "
            f"with something that is not JSON: {response.text[:200]!r}",
            code="bad_response",
            status=response.status_code,
        ) from exc
    if not isinstance(body, dict):
        raise HearthError(
            f"the server answered with JSON that is not an object: {body!r:.200}",
            code="bad_response",
            status=response.status_code,
        )
    return body


class Http:
    """The connection to one server, shared by everything a
    :class:`~hearth.Hearth` hands out.

    Args:
        url: The server's base URL.
        url_source: Where the URL came from, for error messages
            (``"given"``, ``"from $HEARTH_URL"``, ...).
        token: The API token, sent as a bearer token; ``None`` for none.
        timeout: Seconds to wait for an ordinary request.
        create_timeout: Seconds to wait for a sandbox to boot.
        max_reconnects: How often in a row a stream may reconnect.
        transport: An ``httpx`` transport to send requests through.
    """

    def __init__(
        self,
        url: str,
        url_source: str,
        token: str | None,
        *,
        timeout: float,
        create_timeout: float,
        max_reconnects: int,
        transport: httpx.BaseTransport | None,
    ) -> None:
        self.url = url
        self.url_source = url_source
        self.timeout = timeout
        self.create_timeout = create_timeout
        self.max_reconnects = max_reconnects
        headers = {"User-Agent": "hearth-python/0.1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )
        # Streams whose reader was closed by a finalizer, to close later.
        self._deferred: list[contextlib.ExitStack] = []

    def close(self) -> None:
        """Close the connection pool."""
        self._close_deferred()
        self._client.close()

    def _close_deferred(self) -> None:
        while self._deferred:
            try:
                stack = self._deferred.pop()
            except IndexError:  # another thread took the last one
                return
            try:
                stack.close()
            except httpx.HTTPError:
                pass

    def transport_error(self, exc: httpx.TransportError, what: str) -> HearthError:
        """A :class:`HearthError` for a request that got no (full) answer;
        ``what`` says which request, e.g. ``"GET /v1/sandboxes"``."""
        where = f"the Hearth server at {self.url} ({self.url_source})"
        if isinstance(exc, httpx.TimeoutException):
            return RequestTimeout(
                f"{what}: {where} did not answer in time ({type(exc).__name__}: {exc})",
                code="timeout",
            )
        if isinstance(exc, httpx.ConnectError):
            detail = f"cannot connect to {where}: {exc}"
        else:
            detail = f"the connection to {where} failed ({type(exc).__name__}: {exc})"
        return ConnectionFailed(
            f"{what}: {detail}; is `hearth serve` running there? Set HEARTH_URL or pass url= "
            "to point at another server",
            code="connection_failed",
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        content: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
    ) -> httpx.Response:
        """Send a request; return the response, or raise for an error
        status. ``timeout`` defaults to :attr:`timeout` seconds.

        An idempotent request whose body can be sent again (none, or
        bytes) is sent once more if the server closed the connection
        without answering: that is a pooled keep-alive connection the
        server had closed, not a refusal of the request.
        """
        retry = method in _IDEMPOTENT and (content is None or isinstance(content, bytes))
        self._close_deferred()
        while True:
            try:
                response = self._client.request(
                    method,
                    path,
                    params=params,
                    json=json_body,
                    content=content,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.Timeout(self.timeout),
                )
            except httpx.RemoteProtocolError as exc:
                if retry:
                    retry = False
                    continue
                raise self.transport_error(exc, f"{method} {path}") from exc
            except httpx.TransportError as exc:
                raise self.transport_error(exc, f"{method} {path}") from exc
            if response.is_error:
                raise error_from_response(response)
            return response

    def json(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        timeout: Timeout = None,
    ) -> dict[str, Any]:
        """Send a request and return its JSON object answer."""
        response = self.request(method, path, params=params, json_body=json_body, timeout=timeout)
        return json_object(response)

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
    ) -> Iterator[httpx.Response]:
        """Send a request whose response body is read incrementally.

        Raises for an error status (after reading the error body), and
        turns failures to get a response into :class:`HearthError`. Errors
        while the caller reads the body stay ``httpx`` errors, so that
        stream readers can tell a dropped connection from a refusal.
        ``timeout`` defaults to :attr:`timeout` seconds to connect and
        60 s between reads (streams send a keep-alive every 15 s).
        """
        retry = method in _IDEMPOTENT  # as in request()
        self._close_deferred()
        with contextlib.ExitStack() as stack:
            while True:
                try:
                    response = stack.enter_context(
                        self._client.stream(
                            method,
                            path,
                            params=params,
                            json=json_body,
                            headers=headers,
                            timeout=timeout if timeout is not None else self._stream_timeout(),
                        )
                    )
                except httpx.RemoteProtocolError as exc:
                    if retry:
                        retry = False
                        continue
                    raise self.transport_error(exc, f"{method} {path}") from exc
                except httpx.TransportError as exc:
                    raise self.transport_error(exc, f"{method} {path}") from exc
                break
            if response.is_error:
                try:
                    response.read()
                except httpx.TransportError as exc:
                    raise self.transport_error(exc, f"{method} {path}") from exc
                raise error_from_response(response)
            try:
                yield response
            except GeneratorExit:
                # The reader was closed without being finished, which is
                # often a finalizer during garbage collection. That can run
                # while this thread holds the connection pool's lock (in
                # any request), and closing the response takes that lock:
                # a deadlock. So the response is closed by the next request
                # (or close()) instead.
                self._deferred.append(stack.pop_all())
                raise

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)


class OpenedStream:
    """A streamed request that is sent (entered) at once, so that a
    refusal is raised where it was made; entering this again hands out
    its response, and exiting it closes the response."""

    def __init__(self, cm: AbstractContextManager[httpx.Response]) -> None:
        self._cm = cm
        self.response = cm.__enter__()

    def __enter__(self) -> httpx.Response:
        return self.response

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._cm.__exit__(exc_type, exc, tb)
