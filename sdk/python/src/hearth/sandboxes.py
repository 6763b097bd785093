"""Sandboxes: :class:`Sandboxes` (``client.sandboxes``) to create, find
and list them, and :class:`Sandbox`, one microVM that runs commands
(collected, streamed or in the background), keeps files and reports its
events.
"""

from __future__ import annotations

import base64
import builtins
import warnings
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Union, overload

import httpx

from ._http import Http, OpenedStream, segment
from .errors import HearthError
from .events import EventStream
from .execs import EXEC_ID_HEADER, ExecStream, Process
from .files import Files
from .models import ExecInfo, ExecResult, ExitInfo, Network, SandboxEvent, SandboxInfo

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Duration", "Sandbox", "Sandboxes", "Size"]

#: A duration as the API takes it: seconds, or text like ``"90s"``, ``"5m"``.
Duration = Union[int, float, str]
#: A size as the API takes it: bytes, or text like ``"512M"``, ``"1G"``.
Size = Union[int, str]


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, (str, bytes)):
        raise TypeError(
            "argv must be a list of strings, e.g. ['sh', '-c', 'echo hi'], not one string"
        )
    return [str(a) for a in argv]


class Sandboxes:
    """The sandboxes of a server: ``client.sandboxes``."""

    def __init__(self, http: Http) -> None:
        self._http = http

    def create(
        self,
        *,
        image: str | None = None,
        vcpus: int | None = None,
        memory: Size | None = None,
        disk: Size | None = None,
        timeout: Duration | None = None,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        node: str | None = None,
        privileged: bool = False,
        network: Network | str | None = None,
    ) -> Sandbox:
        """Create a sandbox and wait until it runs.

        Args:
            image: Guest image name (server default ``default``).
            vcpus: Virtual CPUs (default 1).
            memory: Guest memory, bytes or text like ``"512M"`` (default 512M).
            disk: Writable disk, bytes or text like ``"1G"`` (default 1G).
            timeout: Lifetime once running, seconds or text like ``"5m"``
                (default 10 minutes); extend with :meth:`Sandbox.set_timeout`.
            env: Environment for every command run in it.
            labels: Labels to find it by with :meth:`list`.
            node: Run it on this node (see :meth:`Hearth.nodes`); by default
                the server places it on the live node with the most room.
            privileged: Give commands full root in the guest: no namespace of
                their own, no capabilities dropped, ``/sys`` and cgroups
                writable (recorded in the ``sandbox.creating`` event). By
                default commands run as root but cannot reach the guest agent
                or its cgroups.
            network: What its programs may reach (default: nothing): a
                :class:`Network`, or its text form such as ``"open"`` or
                ``"allow:pypi.org,*.pythonhosted.org"``. Programs that honour
                ``HTTP_PROXY`` and those that open plain sockets are both
                held to it.

        Returns a :class:`Sandbox`; use it in a ``with`` block to have it
        destroyed at the end.
        """
        body: dict[str, Any] = {}
        for key, value in (
            ("image", image),
            ("vcpus", vcpus),
            ("memory", memory),
            ("disk", disk),
            ("timeout", timeout),
            ("node", node),
        ):
            if value is not None:
                body[key] = value
        if env:
            body["env"] = dict(env)
        if labels:
            body["labels"] = dict(labels)
        if privileged:
            body["privileged"] = True
        if network is not None:
            if isinstance(network, str):
                network = Network.parse(network)
            if network.mode != "none" or network.allow:
                body["network"] = network.to_json()
        data = self._http.json(
            "POST",
            "/v1/sandboxes",
            json_body=body,
            timeout=httpx.Timeout(self._http.timeout, read=self._http.create_timeout),
        )
        return Sandbox(self._http, SandboxInfo.from_json(data))

    def get(self, sandbox_id: str) -> Sandbox:
        """The sandbox with this id (running or ended); :class:`NotFound` if none."""
        data = self._http.json("GET", f"/v1/sandboxes/{segment(sandbox_id)}")
        return Sandbox(self._http, SandboxInfo.from_json(data))

    def list(
        self,
        *,
        state: None | str | Iterable[str] = None,
        labels: Mapping[str, str] | None = None,
        node: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[Sandbox]:
        """Sandboxes of every node, newest first.

        Args:
            state: Only these states, e.g. ``"running"`` or
                ``["running", "creating"]``.
            labels: Only sandboxes carrying all of these labels.
            node: Only those of this node.
            limit: At most this many (server default and maximum 1000).
        """
        params: list[tuple[str, str]] = []
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            params.append(("state", ",".join(states)))
        for key, value in (labels or {}).items():
            params.append(("label", f"{key}={value}"))
        if node is not None:
            params.append(("node", node))
        if limit is not None:
            params.append(("limit", str(limit)))
        body = self._http.json("GET", "/v1/sandboxes", params=params)
        return [
            Sandbox(self._http, SandboxInfo.from_json(item)) for item in body.get("sandboxes", [])
        ]


class Sandbox:
    """One sandbox: a microVM to run commands and keep files in.

    Attributes describe the sandbox as last seen (:attr:`info`); call
    :meth:`refresh` for the current state. As a context manager it
    destroys the sandbox on exit, also when the block raised.
    """

    def __init__(self, http: Http, info: SandboxInfo) -> None:
        self._http = http
        self._info = info
        self.files = Files(self)

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, state={self.state!r})"

    @property
    def id(self) -> str:
        """The sandbox id."""
        return self._info.id

    @property
    def info(self) -> SandboxInfo:
        """The sandbox as last seen by this object."""
        return self._info

    @property
    def state(self) -> str:
        """The state as last seen (``running``, ``stopped``, ...)."""
        return self._info.state

    @property
    def _path(self) -> str:
        return f"/v1/sandboxes/{segment(self.id)}"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.destroy()
            return
        # Don't let a failed cleanup hide the error that ended the block.
        try:
            self.destroy()
        except HearthError as cleanup:
            warnings.warn(
                f"destroying sandbox {self.id} after an error failed: {cleanup}",
                RuntimeWarning,
                stacklevel=2,
            )

    # --- lifecycle -------------------------------------------------------

    def refresh(self) -> SandboxInfo:
        """Fetch the sandbox's current state."""
        self._info = SandboxInfo.from_json(self._http.json("GET", self._path))
        return self._info

    def destroy(self) -> SandboxInfo:
        """Destroy the sandbox (its VM and every file in it); returns the
        final state. Destroying an ended sandbox is harmless."""
        self._info = SandboxInfo.from_json(self._http.json("DELETE", self._path))
        return self._info

    def set_timeout(self, timeout: Duration) -> SandboxInfo:
        """Let the sandbox live ``timeout`` from now (seconds or text like
        ``"5m"``)."""
        data = self._http.json("POST", f"{self._path}/timeout", json_body={"timeout": timeout})
        self._info = SandboxInfo.from_json(data)
        return self._info

    # --- commands ----------------------------------------------------------

    @staticmethod
    def _exec_body(
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: Duration | None,
        stdin: None | str | bytes,
        stdin_open: bool = False,
        background: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"argv": _check_argv(argv)}
        if env:
            body["env"] = dict(env)
        if cwd is not None:
            body["cwd"] = cwd
        if timeout is not None:
            body["timeout"] = timeout
        if isinstance(stdin, str):
            body["stdin"] = stdin
        elif stdin is not None:
            body["stdin_base64"] = base64.b64encode(bytes(stdin)).decode("ascii")
        if stdin_open:
            body["stdin_open"] = True
        if background:
            body["background"] = True
        return body

    @overload
    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        timeout: Duration | None = ...,
        stdin: None | str | bytes = ...,
        text: Literal[True] = ...,
        request_timeout: float | None = ...,
    ) -> ExecResult[str]: ...

    @overload
    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        timeout: Duration | None = ...,
        stdin: None | str | bytes = ...,
        text: Literal[False],
        request_timeout: float | None = ...,
    ) -> ExecResult[bytes]: ...

    @overload
    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        timeout: Duration | None = ...,
        stdin: None | str | bytes = ...,
        text: bool = ...,
        request_timeout: float | None = ...,
    ) -> ExecResult[str] | ExecResult[bytes]: ...

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: Duration | None = None,
        stdin: None | str | bytes = None,
        text: bool = True,
        request_timeout: float | None = None,
    ) -> ExecResult[str] | ExecResult[bytes]:
        """Run a command to its end and return its output and exit.

        Args:
            argv: Program and arguments; the program is looked up on PATH.
                For a shell line use ``["sh", "-c", "..."]``.
            env: Environment added to the sandbox's.
            cwd: Absolute working directory (default ``/root``).
            timeout: Kill the command after this long (seconds or ``"30s"``);
                it then ends with reason ``timed_out``.
            stdin: Everything the command reads on stdin (text or bytes).
            text: ``True`` for ``str`` output (invalid UTF-8 replaced, and
                ``stdout_lossy``/``stderr_lossy`` set when it was);
                ``False`` for the exact ``bytes``.
            request_timeout: Seconds to wait for the answer. Default: no
                limit, or ``timeout`` plus 30 s when ``timeout`` is a number.

        A command that fails is not an error: check ``result.exit_code``.
        Output over the server's collection limit (16 MiB by default) raises
        :class:`OutputTooLarge`; stream it with :meth:`exec_stream` instead.
        """
        body = self._exec_body(argv, env, cwd, timeout, stdin)
        if request_timeout is None and isinstance(timeout, (int, float)):
            request_timeout = float(timeout) + 30.0
        data = self._http.json(
            "POST",
            f"{self._path}/exec",
            params={"wait": "true", "encoding": "utf8" if text else "base64"},
            json_body=body,
            timeout=httpx.Timeout(self._http.timeout, read=request_timeout),
        )
        exit_info = ExitInfo.from_json(data["exit"])
        exec_id = str(data["exec_id"])
        out = str(data.get("stdout", ""))
        err = str(data.get("stderr", ""))
        if text:
            return ExecResult(
                exec_id,
                out,
                err,
                exit_info,
                stdout_lossy=bool(data.get("stdout_lossy", False)),
                stderr_lossy=bool(data.get("stderr_lossy", False)),
            )
        return ExecResult(exec_id, base64.b64decode(out), base64.b64decode(err), exit_info)

    def exec_stream(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: Duration | None = None,
        stdin: None | str | bytes = None,
        stdin_open: bool = False,
    ) -> ExecStream:
        """Run a command and return an iterator over its events as they
        happen: :class:`Started`, :class:`Stdout` / :class:`Stderr` chunks
        (exact bytes), then :class:`Exit` (or :class:`Error`).

        The request is sent at once, and the stream knows its
        :attr:`~ExecStream.exec_id` from the answer. With
        ``stdin_open=True`` (after any ``stdin`` given here) the command's
        stdin stays open for :meth:`ExecStream.write_stdin`; close it with
        ``close=True`` when done. :meth:`ExecStream.kill` ends the command.

        If the connection drops, the stream reconnects and resumes after
        the last event it yielded. If the stream is closed (or abandoned)
        before the end, the server kills the command when no client has
        come back for its detach grace (30 s by default).
        """
        body = self._exec_body(argv, env, cwd, timeout, stdin, stdin_open=stdin_open)
        # Send the request now, so that the command starts (and a refusal
        # is raised) here rather than at the first next().
        opened = OpenedStream(
            self._http.stream(
                "POST", f"{self._path}/exec", params={"encoding": "base64"}, json_body=body
            )
        )
        exec_id = opened.response.headers.get(EXEC_ID_HEADER)
        return ExecStream(self, exec_id=exec_id or None, first=opened)

    def exec_background(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: Duration | None = None,
        stdin: None | str | bytes = None,
        stdin_open: bool = False,
    ) -> Process:
        """Start a command that runs on its own, and return at once.

        Its output is kept on the server for :meth:`Process.events`; with
        ``stdin_open=True`` feed it with :meth:`Process.write_stdin`.
        Unlike a streamed exec it is not killed when no client watches; it
        runs until it ends, is killed, times out or its sandbox ends.
        """
        body = self._exec_body(
            argv, env, cwd, timeout, stdin, stdin_open=stdin_open, background=True
        )
        data = self._http.json("POST", f"{self._path}/exec", json_body=body)
        return Process(self, ExecInfo.from_json(data))

    def execs(self) -> list[ExecInfo]:
        """The sandbox's execs, oldest first: the running ones and the last
        finished ones (none once the sandbox has ended)."""
        body = self._http.json("GET", f"{self._path}/execs")
        return [ExecInfo.from_json(item) for item in body.get("execs", [])]

    def get_exec(self, exec_id: str) -> Process:
        """A handle on one exec, e.g. to follow or kill it."""
        data = self._http.json("GET", f"{self._path}/execs/{segment(exec_id)}")
        return Process(self, ExecInfo.from_json(data))

    def exec_events(self, exec_id: str, *, after: int = 0) -> ExecStream:
        """Follow an exec's events after event id ``after`` (0 for all
        that are kept). Resumes on a dropped connection like
        :meth:`exec_stream`."""
        return ExecStream(self, exec_id=exec_id, after=after)

    # --- events ----------------------------------------------------------

    def events(self, *, after: int = 0, limit: int | None = None) -> list[SandboxEvent]:
        """The sandbox's event log after ``after``, oldest first.

        With ``limit`` one page of at most that many; without, the whole
        history (fetched page by page).
        """
        collected: list[SandboxEvent] = []
        while True:
            page_size = 1000 if limit is None else min(limit - len(collected), 1000)
            body = self._http.json(
                "GET",
                f"{self._path}/events",
                params={"after": str(after), "limit": str(page_size)},
            )
            page = [SandboxEvent.from_json(item) for item in body.get("events", [])]
            collected.extend(page)
            after = int(body.get("next_after", after))
            if len(page) < page_size or (limit is not None and len(collected) >= limit):
                return collected

    def watch_events(self, *, after: int = 0) -> EventStream:
        """Follow the sandbox's events live: first those after ``after``,
        then each new one as it happens. The iterator ends after the
        sandbox's final event (``sandbox.stopped``, ``sandbox.failed``,
        ``sandbox.timed_out`` or ``sandbox.lost``)."""
        return EventStream(self, after=after)


