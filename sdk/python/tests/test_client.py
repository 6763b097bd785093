"""The client itself: finding the server and token, authentication,
connection failures, and the server-wide routes."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from hearth import ConnectionFailed, Hearth, HearthError, Unauthorized

from .conftest import Server


def test_health_metrics_and_openapi(client: Hearth) -> None:
    health = client.health()
    assert health.status == "ok"
    assert health.version
    assert "hearth_sandboxes" in client.metrics()
    paths = client.openapi()["paths"]
    assert "/v1/sandboxes" in paths
    assert "/v1/sandboxes/{id}/exec" in paths


def test_defaults_come_from_hearth_home(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server wrote server.json (url) and token into its home.
    monkeypatch.delenv("HEARTH_URL", raising=False)
    monkeypatch.delenv("HEARTH_TOKEN", raising=False)
    monkeypatch.setenv("HEARTH_HOME", str(server.home))
    with Hearth() as hearth:
        assert hearth.url == server.url
        assert isinstance(hearth.sandboxes.list(limit=1), list)


def test_environment_wins_over_hearth_home(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))  # empty: no server.json, no token
    monkeypatch.setenv("HEARTH_URL", server.url + "/")
    monkeypatch.setenv("HEARTH_TOKEN", server.token + "\n")
    with Hearth() as hearth:
        assert hearth.url == server.url
        hearth.sandboxes.list(limit=1)


def test_wrong_token_is_unauthorized(server: Server) -> None:
    with (
        Hearth(server.url, token="not-the-token") as hearth,
        pytest.raises(Unauthorized) as caught,
    ):
        hearth.sandboxes.list()
    assert caught.value.status == 401
    assert caught.value.code == "unauthorized"
    assert "token" in caught.value.message
    # /healthz needs no token.
    with Hearth(server.url, token="not-the-token") as hearth:
        assert hearth.health().status == "ok"


def test_missing_token_is_unauthorized(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))
    monkeypatch.delenv("HEARTH_TOKEN", raising=False)
    with Hearth(server.url) as hearth, pytest.raises(Unauthorized, match="Authorization"):
        hearth.sandboxes.get("sb-whatever")


def test_nothing_listening_is_connection_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with Hearth(url, token="t") as hearth, pytest.raises(ConnectionFailed) as caught:
        hearth.sandboxes.list()
    error = caught.value
    assert isinstance(error, HearthError)
    assert error.status is None
    assert url in str(error)
    assert "hearth serve" in str(error)


def test_a_connection_closed_under_a_request_is_retried_only_if_idempotent() -> None:
    # A pooled keep-alive connection the server has closed fails the next
    # request on it without an answer; GET (or PUT, DELETE) is sent again,
    # POST is not, since the server may have acted on it.
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        if len(sent) % 2 == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"status": "ok", "version": "test"})

    with Hearth("http://hearth.test", token="t", transport=httpx.MockTransport(handler)) as hearth:
        assert hearth.health().status == "ok"
        assert sent == ["GET", "GET"]
        sent.clear()
        with pytest.raises(ConnectionFailed):
            hearth.sandboxes.create()
        assert sent == ["POST"]


def test_a_stream_abandoned_to_a_finalizer_is_closed_by_the_next_request() -> None:
    # A finalizer (garbage collection) can close a stream's reader while a
    # request holds the connection pool's lock, and closing the response
    # takes that lock: the close is left to the next request instead.
    closed: list[str] = []

    class Body(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b"data: 1\n\n"

        def close(self) -> None:
            closed.append("stream")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/stream":
            return httpx.Response(200, stream=Body())
        return httpx.Response(200, json={"status": "ok", "version": "test"})

    with Hearth("http://hearth.test", token="t", transport=httpx.MockTransport(handler)) as hearth:
        http = hearth._http

        def reader():  # type: ignore[no-untyped-def]
            with http.stream("GET", "/stream") as response:
                yield from response.iter_bytes()

        gen = reader()
        assert next(gen) == b"data: 1\n\n"
        gen.close()  # as a finalizer would
        assert closed == [], "not closed inside the finalizer"
        assert hearth.health().status == "ok"
        assert closed == ["stream"], "closed by the next request"
