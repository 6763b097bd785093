"""A sandbox's network: the policy a create gives it, what its programs
reach through it, and the audit trail in its events. Every server here is
the test's own on 127.0.0.1, reached through names the session's server
maps there (``TEST_NAMES`` in conftest)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from hearth import Hearth, InvalidArgument, Network


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        body = b"hello from the test\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def web() -> Iterator[int]:
    """An HTTP server on 127.0.0.1; its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_network_forms() -> None:
    assert Network.parse("allow:pypi.org, *.pythonhosted.org:443") == Network(
        mode="allowlist", allow=("pypi.org", "*.pythonhosted.org:443")
    )
    assert Network.parse("open").to_json() == {"mode": "open", "allow": []}
    assert Network.allowlist("a.test", rate="1M", max_connections=4).to_json() == {
        "mode": "allowlist",
        "allow": ["a.test"],
        "rate": "1M",
        "max_connections": 4,
    }
    with pytest.raises(ValueError, match="allow:NAME"):
        Network.parse("everything")
    with pytest.raises(ValueError, match="at least one"):
        Network.allowlist()


def test_a_bad_entry_is_named(client: Hearth) -> None:
    with pytest.raises(InvalidArgument) as error:
        client.sandboxes.create(network="allow:svc.test,bad*name")
    assert error.value.field == "network.allow"
    assert "bad*name" in str(error.value)


PROBE = r"""
import socket, sys, urllib.request
port = int(sys.argv[1])
for name in ("svc.test", "blocked.test"):
    try:
        print(name, urllib.request.urlopen(f"http://{name}:{port}/", timeout=20).read().decode().strip())
    except Exception as e:
        print(name, "refused", getattr(e, "code", type(e).__name__))
"""


def test_an_allowlisted_sandbox_reaches_only_its_names_and_each_attempt_is_an_event(
    client: Hearth, web: int
) -> None:
    network = Network.allowlist(f"svc.test:{web}", max_connections=8)
    with client.sandboxes.create(memory="256M", timeout="5m", network=network) as sb:
        result = sb.exec(["python3", "-c", PROBE, str(web)])
        assert result.stdout.splitlines() == [
            "svc.test hello from the test",
            "blocked.test refused 403",
        ], result.stderr
        events = []
        for _ in range(50):
            events = [e for e in sb.events() if e.kind == "net.connection"]
            if len(events) >= 2:
                break
            time.sleep(0.1)
        verdicts = {e.data["host"]: e.data for e in events}
        assert verdicts["svc.test"]["allowed"] is True
        assert verdicts["svc.test"]["bytes_down"] > 0
        assert verdicts["blocked.test"]["allowed"] is False
        assert "not on the allowlist" in verdicts["blocked.test"]["reason"]
        creating = next(e for e in sb.events() if e.kind == "sandbox.creating")
        assert creating.data["network"]["mode"] == "allowlist"
        assert creating.data["network"]["max_connections"] == 8


def test_a_bad_network_refuses_a_run_at_its_start(client: Hearth) -> None:
    with pytest.raises(InvalidArgument) as error:
        client.runs.start({"main.py": "print(1)"}, entry="main.py", network="allow:*bad")
    assert error.value.field == "network.allow"
    assert "*bad" in str(error.value)
