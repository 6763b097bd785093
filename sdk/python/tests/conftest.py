"""Fixtures that run the SDK against a real ``hearth serve``.

One server is started for the whole session, in a fresh ``HEARTH_HOME``,
and stopped with SIGTERM at the end (killed if it has not exited within
30 s). Booting a VM takes seconds without KVM, so tests share one sandbox
unless they need their own.

Environment:
    HEARTH_BIN     the hearth binary (default: <repo>/target/debug/hearth)
    HEARTH_IMAGES  the guest images (default: ~/.local/share/hearth/images)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import pytest

from hearth import Hearth, Sandbox

REPO = Path(__file__).resolve().parents[3]
#: Names the session's server resolves to 127.0.0.1 for sandboxes (see
#: ``--egress-hosts``): tests never reach anything but this machine.
TEST_NAMES = ("svc.test", "blocked.test")
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@dataclass
class Server:
    """A running ``hearth serve``."""

    url: str
    token: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's stderr, for failure messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


def _binary() -> Path:
    configured = os.environ.get("HEARTH_BIN")
    if configured:
        return Path(configured)
    for profile in ("debug", "release"):
        candidate = REPO / "target" / profile / "hearth"
        if candidate.exists():
            return candidate
    return REPO / "target" / "debug" / "hearth"


def _images() -> str:
    return os.environ.get(
        "HEARTH_IMAGES", str(Path.home() / ".local" / "share" / "hearth" / "images")
    )


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; the exit code of the
    SIGTERM'd server, or None if it had to be killed."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``hearth serve`` on a free localhost port for the whole run."""
    binary = _binary()
    if not binary.exists():
        pytest.fail(
            f"no hearth binary at {binary}: build it with `cargo build -p hearth` "
            "in the repository, or point HEARTH_BIN at one",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("hearth-home")
    log = home.parent / f"{home.name}-server.log"
    stdout_path = home.parent / f"{home.name}-server.out"
    # Sandboxes' networks reach only this machine in tests: the test names
    # below map to 127.0.0.1, which the operator flag opens.
    hosts = home.parent / f"{home.name}-hosts"
    hosts.write_text(f"127.0.0.1 {' '.join(TEST_NAMES)}\n")
    env = dict(os.environ, HEARTH_HOME=str(home), HEARTH_IMAGES=_images())
    env.pop("HEARTH_URL", None)
    env.pop("HEARTH_TOKEN", None)
    with open(stdout_path, "wb") as out, open(log, "wb") as err:
        process = subprocess.Popen(
            # A small wait=true output limit, so that the 422 path is cheap
            # to test.
            [
                str(binary),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--max-wait-output",
                "1M",
                "--egress-allow-cidr",
                "127.0.0.1/32",
                "--egress-hosts",
                str(hosts),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    try:
        url = _wait_for_url(process, stdout_path, log)
        token = (home / "token").read_text().strip()
        yield Server(url=url, token=token, home=home, log=log, process=process)
    finally:
        code = _stop(process)
    if code != 0:
        pytest.fail(
            f"hearth serve did not exit cleanly on SIGTERM (exit {code}); log:\n"
            + Server("", "", home, log, process).log_tail()
        )


def _wait_for_url(process: subprocess.Popen[bytes], stdout_path: Path, log: Path) -> str:
    """The URL from the server's first stdout line."""
    prefix = "hearth: listening on "
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        first = stdout_path.read_text(errors="replace").split("\n", 1)
        if len(first) == 2 and first[0].startswith(prefix):
            return first[0][len(prefix) :].strip()
        if process.poll() is not None:
            break
        time.sleep(0.05)
    _stop(process)
    pytest.fail(
        f"hearth serve did not start (exit {process.returncode}); stderr:\n"
        + log.read_text(errors="replace")[-4000:],
        pytrace=False,
    )


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[Hearth]:
    """A client of the session's server."""
    with Hearth(server.url, server.token) as hearth:
        yield hearth


@pytest.fixture(scope="session")
def run_id() -> str:
    """A label value unique to this test run."""
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def sandbox(client: Hearth, run_id: str) -> Iterator[Sandbox]:
    """A sandbox shared by the tests that don't need their own."""
    sb = client.sandboxes.create(
        memory="256M",
        timeout="15m",
        env={"HEARTH_TEST_SANDBOX_ENV": "from-sandbox"},
        labels={"suite": run_id, "role": "shared"},
    )
    with sb:
        yield sb


class CutStream(httpx.SyncByteStream):
    """A response body that passes on ``events`` whole server-sent events,
    then fails as a dropped connection would."""

    def __init__(self, inner: httpx.SyncByteStream, events: int) -> None:
        self._inner = inner
        self._events = events
        self.cut = False

    def __iter__(self) -> Iterator[bytes]:
        buffered = b""
        passed = 0
        for chunk in self._inner:
            buffered += chunk
            # The server ends events with a blank line ("\n\n").
            while (end := buffered.find(b"\n\n")) >= 0:
                block, buffered = buffered[: end + 2], buffered[end + 2 :]
                yield block
                if not block.startswith(b":"):  # keep-alive comments don't count
                    passed += 1
                if passed == self._events:
                    self.cut = True
                    self._inner.close()
                    raise httpx.RemoteProtocolError("connection dropped (simulated by the test)")
        if buffered:
            yield buffered

    def close(self) -> None:
        self._inner.close()


class DropOnce(httpx.BaseTransport):
    """A transport that cuts the first response matching ``select`` after
    ``events`` server-sent events; everything else passes through, less
    the response headers named in ``strip`` (as a proxy might drop them)."""

    def __init__(
        self,
        select: Callable[[httpx.Request], bool],
        events: int,
        strip: Collection[str] = (),
    ) -> None:
        self._inner = httpx.HTTPTransport()
        self._select = select
        self._events = events
        self._strip = {name.lower() for name in strip}
        self.requests: list[str] = []
        self.stream: CutStream | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        response = self._inner.handle_request(request)
        cut = self.stream is None and response.status_code == 200 and self._select(request)
        if not cut and not self._strip:
            return response
        stream = response.stream
        if cut:
            assert isinstance(stream, httpx.SyncByteStream)
            stream = self.stream = CutStream(stream, self._events)
        headers = [(k, v) for k, v in response.headers.multi_items() if k not in self._strip]
        return httpx.Response(
            status_code=response.status_code,
            headers=headers,
            stream=stream,
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()
