"""The synchronous Hearth client.

:class:`Hearth` talks to a ``hearth serve`` over its REST API with one
pooled ``httpx.Client``. Sandboxes are reached through
``client.sandboxes`` (:mod:`hearth.sandboxes`); a :class:`Sandbox` runs
commands (:mod:`hearth.execs`), moves files (:mod:`hearth.files`) and
reports its events (:mod:`hearth.events`). Durable runs, programs whose
steps are journaled and that survive crashes, are reached through
``client.runs`` (:mod:`hearth.runs`).

Streams (exec output, sandbox events) are read as server-sent events and
survive a dropped connection: the stream reconnects and resumes after the
last event id it delivered, so the caller sees every event exactly once.

This module finds the server and its token; the requests themselves go
through :class:`hearth._http.Http`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from ._http import Http
from .models import Health, NodeInfo
from .runs import Runs
from .sandboxes import Sandboxes

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_URL", "Hearth"]

#: Where a server listens when nothing else says.
DEFAULT_URL = "http://127.0.0.1:7070"


def _default_home() -> Path:
    home = os.environ.get("HEARTH_HOME")
    if home:
        return Path(home)
    return Path.home() / ".local" / "share" / "hearth"


def _resolve_url(url: str | None) -> tuple[str, str]:
    """The server URL and where it came from (for error messages)."""
    if url:
        return url.rstrip("/"), "given"
    env = os.environ.get("HEARTH_URL")
    if env:
        return env.rstrip("/"), "from $HEARTH_URL"
    server_file = _default_home() / "server.json"
    try:
        info = json.loads(server_file.read_text())
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and isinstance(info.get("url"), str) and info["url"]:
        return str(info["url"]).rstrip("/"), f"from {server_file}"
    return DEFAULT_URL, "the default"


def _resolve_token(token: str | None) -> str | None:
    if token:
        return token
    env = os.environ.get("HEARTH_TOKEN")
    if env:
        return env.strip()
    try:
        text = (_default_home() / "token").read_text().strip()
    except OSError:
        return None
    return text or None


class Hearth:
    """A client of one Hearth server.

    Args:
        url: The server, e.g. ``http://127.0.0.1:7070``. Default: ``$HEARTH_URL``,
            else the ``url`` in ``$HEARTH_HOME/server.json`` (written by a
            running ``hearth serve``), else ``http://127.0.0.1:7070``.
        token: The API token. Default: ``$HEARTH_TOKEN``, else the contents of
            ``$HEARTH_HOME/token``. ``HEARTH_HOME`` defaults to
            ``~/.local/share/hearth``.
        timeout: Seconds to wait for an ordinary request.
        create_timeout: Seconds to wait for a sandbox to boot (slow without KVM).
        max_reconnects: How often in a row a stream may reconnect before it
            gives up with :class:`StreamLost`.
        transport: An ``httpx`` transport to send requests through (tests,
            proxies, unix sockets).

    Use it as a context manager, or call :meth:`close`, to release its
    connections.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        create_timeout: float = 120.0,
        max_reconnects: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        resolved, source = _resolve_url(url)
        self._http = Http(
            resolved,
            source,
            _resolve_token(token),
            timeout=timeout,
            create_timeout=create_timeout,
            max_reconnects=max_reconnects,
            transport=transport,
        )
        self.sandboxes = Sandboxes(self._http)
        self.runs = Runs(self._http)

    def __repr__(self) -> str:
        return f"Hearth(url={self.url!r})"

    @property
    def url(self) -> str:
        """The server's base URL, without a trailing slash."""
        return self._http.url

    @property
    def timeout(self) -> float:
        """Seconds to wait for an ordinary request (settable)."""
        return self._http.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._http.timeout = value

    @property
    def create_timeout(self) -> float:
        """Seconds to wait for a sandbox to boot (settable)."""
        return self._http.create_timeout

    @create_timeout.setter
    def create_timeout(self, value: float) -> None:
        self._http.create_timeout = value

    @property
    def max_reconnects(self) -> int:
        """How often in a row a stream may reconnect (settable)."""
        return self._http.max_reconnects

    @max_reconnects.setter
    def max_reconnects(self, value: int) -> None:
        self._http.max_reconnects = value

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- server-wide routes ------------------------------------------------

    def health(self) -> Health:
        """``GET /healthz``: whether the server is up, and its version."""
        return Health.from_json(self._http.json("GET", "/healthz"))

    def nodes(self) -> list[NodeInfo]:
        """``GET /v1/nodes``: every node sharing this server's store, with its
        lease, capacity and load."""
        body = self._http.json("GET", "/v1/nodes")
        return [NodeInfo.from_json(item) for item in body.get("nodes", [])]

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text exposition."""
        return self._http.request("GET", "/metrics").text

    def openapi(self) -> dict[str, Any]:
        """``GET /v1/openapi.json``: the API description."""
        return self._http.json("GET", "/v1/openapi.json")
