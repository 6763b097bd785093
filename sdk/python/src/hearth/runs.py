"""Durable runs: :class:`Runs` (``client.runs``) to start, find and steer
them, and :class:`Run`, one run as last seen.

A durable run is a program in its own microVM whose steps, tool calls,
sleeps and signal waits are journaled (the program uses the ``hearth_run``
module of the guest image). When its VM, its program or the server dies
it is relaunched in a fresh VM, replays its journal and goes on where it
was; it holds no VM while it waits for a signal, a timer or a child. The
program's files are sent when the run starts and pinned: every relaunch
runs the same bytes.

A run ends ``completed`` (with the output the program passed to
``ctx.complete``), ``failed`` (with an error code such as
``restarts_exhausted``) or ``cancelled``. On the way it may be
``pending``, ``running``, ``waiting`` or ``needs_attention``: a step whose
outcome is unknown after a crash and that is not safe to repeat waits for
a person's :meth:`Runs.resolve`.
"""

from __future__ import annotations

import base64
import builtins
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import httpx

from ._http import Http, segment
from .errors import RunCancelled, RunFailed
from .models import Network, RunError, RunInfo, RunResult, Step

__all__ = ["Program", "Run", "Runs"]

#: A program as :meth:`Runs.start` takes it: a file or directory path, or
#: its files as a mapping of relative path to contents.
Program = Union[str, os.PathLike[str], Mapping[str, Union[bytes, str]]]

#: The entry a directory program runs when none is named.
DEFAULT_ENTRY = "main.py"

#: Longest ``wait`` the server takes on a result request.
MAX_RESULT_WAIT = 3600.0

#: Longest one request of :meth:`Runs.wait` waits; shorter than the server's
#: cap, so that no proxy in between sees a connection idle for long.
_WAIT_STEP = 60.0


class _Unset:
    """The type of :data:`_UNSET`."""

    def __repr__(self) -> str:
        return "<unset>"


#: ``skip_with`` not given (``None`` is a valid JSON result to skip with).
_UNSET = _Unset()


def _skip(name: str) -> bool:
    """Whether a directory program leaves this file or directory out."""
    return name.startswith(".") or name == "__pycache__"


def _read_program(program: Program, entry: str | None) -> tuple[dict[str, bytes], str]:
    """The files of a program and its entry; ``ValueError`` for a program
    that cannot be sent, before any request."""
    if isinstance(program, Mapping):
        if entry is None:
            raise ValueError(
                "a program given as a dict of files needs entry=, the file to run "
                f"(one of {sorted(program)!r})"
            )
        files: dict[str, bytes] = {}
        for name, data in program.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"program file names must be non-empty paths, got {name!r}")
            if isinstance(data, str):
                files[name] = data.encode("utf-8")
            elif isinstance(data, (bytes, bytearray, memoryview)):
                files[name] = bytes(data)
            else:
                raise TypeError(
                    f"program file {name!r} must be bytes or str, got {type(data).__name__}"
                )
        if entry not in files:
            raise ValueError(
                f"the program has no file {entry!r} to run; its files are {sorted(files)!r}"
            )
        return files, entry
    if isinstance(program, (bytes, bytearray)):
        raise TypeError("program must be a path or a dict of files, not bytes")
    path = Path(os.fspath(program))
    if path.is_file():
        if entry is not None and entry != path.name:
            raise ValueError(
                f"entry={entry!r} names another file than the program {path}: "
                "a file program runs itself; give a directory to choose the entry"
            )
        try:
            return {path.name: path.read_bytes()}, path.name
        except OSError as exc:
            raise ValueError(f"cannot read the program {path}: {exc}") from exc
    if not path.is_dir():
        raise ValueError(f"cannot read the program {path}: no such file or directory")
    files = {}
    for current, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not _skip(d))
        for name in sorted(names):
            if _skip(name):
                continue
            full = Path(current) / name
            if not full.is_file():
                continue
            try:
                files[full.relative_to(path).as_posix()] = full.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {full}: {exc}") from exc
    entry = DEFAULT_ENTRY if entry is None else entry
    if entry not in files:
        raise ValueError(
            f"the program directory {path} has no {entry}; name the file to run with entry="
        )
    return files, entry


def _seconds(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    return float(value)


class Runs:
    """The durable runs of a server: ``client.runs``.

    Methods take a run id; the :class:`Run` they return has the same
    methods bound to its run.
    """

    def __init__(self, http: Http) -> None:
        self._http = http

    @staticmethod
    def _path(run_id: str) -> str:
        return f"/v1/runs/{segment(run_id)}"

    def start(
        self,
        program: Program,
        *,
        input: Any = None,
        name: str | None = None,
        entry: str | None = None,
        image: str | None = None,
        memory_mib: int | None = None,
        vcpus: int | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        max_restarts: int | None = None,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        workspace: str | None = None,
        network: Network | str | None = None,
    ) -> Run:
        """Start a durable run and return it (``pending``: a VM is being
        launched for it).

        Args:
            program: A file (it is the whole program and runs itself); a
                directory (every file under it, less dot-files and
                ``__pycache__``; it runs ``entry``, default ``main.py``); or
                a dict of relative path to contents (``bytes`` or ``str``),
                which needs ``entry``.
            input: Any JSON value; the program reads it as ``ctx.input``.
            name: A name for people (1 to 256 bytes).
            entry: The file to run, relative to the program.
            image: Guest image (server default ``default``).
            memory_mib: Guest memory of each launch, MiB (default 512).
            vcpus: Virtual CPUs of each launch (default 1).
            timeout: Longest one launch may run, seconds.
            deadline: The run fails (code ``deadline``) if it has not ended
                this many seconds from now.
            max_restarts: Relaunches allowed after a crash (default 3);
                ``0`` fails the run (``restarts_exhausted``) the first time
                its program exits without completing.
            command: The command to run instead of the entry's default
                (``python3 ENTRY`` for Python).
            env: Environment of the program.
            workspace: ``"durable"`` checkpoints the VM's files at every
                step's end, so a relaunch (or a fork at step N) boots on the
                files as they stood at the last recorded step (at step N);
                ``"ephemeral"`` (the default) keeps only persisted files.
            network: What each launch's programs may reach (default:
                nothing): a :class:`Network` or its text form, as for
                sandboxes; its limits apply to each launch's VM.

        The program is read here: a path that does not exist, a directory
        without its entry, or a dict without ``entry`` raise ``ValueError``
        before anything is sent.
        """
        files, entry = _read_program(program, entry)
        body: dict[str, Any] = {
            "program": {
                "files": {
                    path: base64.b64encode(data).decode("ascii") for path, data in files.items()
                },
                "entry": entry,
            },
        }
        if input is not None:
            body["input"] = input
        if command is not None:
            if isinstance(command, (str, bytes)):
                raise TypeError(
                    "command must be a list of strings, e.g. ['python3', '-u', 'main.py'], "
                    "not one string"
                )
            body["command"] = [str(a) for a in command]
        for key, value in (
            ("name", name),
            ("image", image),
            ("memory_mib", memory_mib),
            ("vcpus", vcpus),
            ("timeout_seconds", _seconds("timeout", timeout)),
            ("deadline_seconds", _seconds("deadline", deadline)),
            ("max_restarts", max_restarts),
            ("workspace", workspace),
        ):
            if value is not None:
                body[key] = value
        if env:
            body["env"] = dict(env)
        if network is not None:
            if isinstance(network, str):
                network = Network.parse(network)
            if network.mode != "none" or network.allow:
                body["network"] = network.to_json()
        data = self._http.json("POST", "/v1/runs", json_body=body)
        return Run(self, RunInfo.from_json(data))

    def get(self, run_id: str) -> Run:
        """The run with this id, with its journal (:attr:`Run.steps`);
        :class:`NotFound` if none."""
        return Run(self, self._get(run_id))

    def _get(self, run_id: str) -> RunInfo:
        return RunInfo.from_json(self._http.json("GET", self._path(run_id)))

    def list(
        self,
        state: None | str | Iterable[str] = None,
        parent: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[Run]:
        """Runs, newest first (without their journals).

        Args:
            state: Only these states, e.g. ``"waiting"`` or
                ``["pending", "running"]``.
            parent: Only the children of this run.
            limit: At most this many.
        """
        params: list[tuple[str, str]] = []
        if state is not None:
            states = [state] if isinstance(state, str) else builtins.list(state)
            params.append(("state", ",".join(states)))
        if parent is not None:
            params.append(("parent", parent))
        if limit is not None:
            params.append(("limit", str(limit)))
        body = self._http.json("GET", "/v1/runs", params=params)
        return [Run(self, RunInfo.from_json(item)) for item in body.get("runs", [])]

    def signal(self, run_id: str, name: str, data: Any = None) -> int:
        """Send signal ``name`` with ``data`` (any JSON value) to a run and
        return the signal's id. A run waiting in ``ctx.wait_signal(name)``
        is relaunched and gets ``data``; a signal sent before the program
        waits for it is kept until it does. :class:`Conflict` (code
        ``run_ended``) if the run has ended."""
        body = self._http.json(
            "POST",
            f"{self._path(run_id)}/signals/{segment(name)}",
            json_body={"data": data},
        )
        return int(body["id"])

    def cancel(self, run_id: str, by: str | None = None) -> Run:
        """Cancel a run and its unfinished children; a VM running it is
        killed at once. ``by`` is recorded as who cancelled (default
        ``api``). :class:`Conflict` if it has ended (code ``conflict``), or
        if another node runs it (``run_busy``: ask that node; a node may
        also be claiming a run that was just started)."""
        body: dict[str, Any] = {}
        if by is not None:
            body["by"] = by
        data = self._http.json("POST", f"{self._path(run_id)}/cancel", json_body=body)
        return Run(self, RunInfo.from_json(data))

    def fork(self, run_id: str, at_step: int, name: str | None = None) -> Run:
        """Start a new run of this run's program, input and spec whose
        journal is its first ``at_step`` steps: the fork replays them
        without running them, and runs step ``at_step`` and what follows
        afresh. Both runs then go on independently. :class:`InvalidArgument`
        if the journal is shorter, one of those steps has not finished, or
        they spawn a child whose result they do not hold."""
        body: dict[str, Any] = {"at_step": at_step}
        if name is not None:
            body["name"] = name
        data = self._http.json("POST", f"{self._path(run_id)}/fork", json_body=body)
        return Run(self, RunInfo.from_json(data))

    def resolve(
        self,
        run_id: str,
        step: int,
        *,
        retry: bool = False,
        skip_with: Any = _UNSET,
        fail: bool | str | None = None,
    ) -> Run:
        """Decide about step ``step`` of a run in ``needs_attention`` (an
        unsafe step whose outcome is unknown after a crash), and let the
        run go on (it becomes ``pending``). Give exactly one decision:

        Args:
            retry: Run the step again (it may then happen twice).
            skip_with: Do not run it again; the step returns this JSON
                value (e.g. what the call did, checked by hand).
            fail: Fail the step; a string says why. The program sees the
                step raise.

        :class:`Conflict` if the run or that step does not wait for a
        decision.
        """
        decisions = [retry is True, not isinstance(skip_with, _Unset), fail not in (None, False)]
        if sum(decisions) != 1:
            raise ValueError(
                "resolve needs exactly one decision: retry=True, skip_with=RESULT or "
                "fail=True / fail='why'"
            )
        body: dict[str, Any] = {"step": step}
        if retry is True:
            body["decision"] = "retry"
        elif not isinstance(skip_with, _Unset):
            body["decision"] = "skip"
            body["result"] = skip_with
        else:
            body["decision"] = "fail"
            if isinstance(fail, str):
                body["message"] = fail
        data = self._http.json("POST", f"{self._path(run_id)}/resolve", json_body=body)
        return Run(self, RunInfo.from_json(data))

    def result(self, run_id: str, wait: float | None = None) -> RunResult:
        """A run's state and, once it has ended, its output or error.

        Args:
            wait: Seconds to wait for the run to end first (the server
                waits at most 3600); by default answer at once. A run that
                has not ended in that time comes back with its current
                state (check :attr:`RunResult.is_final`).
        """
        params: dict[str, str] = {}
        timeout: httpx.Timeout | None = None
        if wait is not None:
            wait = _seconds("wait", wait)
            assert wait is not None
            params["wait"] = repr(wait)
            timeout = httpx.Timeout(self._http.timeout, read=wait + self._http.timeout)
        data = self._http.json(
            "GET", f"{self._path(run_id)}/result", params=params, timeout=timeout
        )
        return RunResult.from_json(data)

    def wait(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for a run to end and return its output.

        Raises :class:`RunFailed` (with the run's error ``code`` and
        ``message``) if it failed, :class:`RunCancelled` if it was
        cancelled, and ``TimeoutError`` if it has not ended after
        ``timeout`` seconds (default: wait as long as it takes; a run in
        ``needs_attention`` waits for :meth:`resolve`). The run goes on
        after a ``TimeoutError``.
        """
        limit = None if timeout is None else time.monotonic() + float(timeout)
        state = "not yet asked"
        while True:
            step = _WAIT_STEP
            if limit is not None:
                left = limit - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"run {run_id} has not ended within {timeout} seconds (it is {state})"
                    )
                step = min(step, left)
            outcome = self.result(run_id, wait=step)
            if outcome.is_final:
                return self._output(run_id, outcome)
            state = outcome.state

    def _output(self, run_id: str, outcome: RunResult) -> Any:
        """The output of an ended run, or the exception for its end."""
        if outcome.state == "completed":
            return outcome.output
        if outcome.state == "cancelled":
            raise RunCancelled(run_id, self._get(run_id).cancelled_by)
        error = outcome.error or RunError("error", "the run failed without an error")
        raise RunFailed(run_id, error.code, error.message)

    def events(self, run_id: str, after: int = 0) -> builtins.list[dict[str, Any]]:
        """The run's events after event id ``after``, oldest first (state
        changes, launches, steps, signals), each as its JSON object
        (``seq``, ``run_id``, ``at_ms``, ``kind``, ``data``, ...)."""
        collected: builtins.list[dict[str, Any]] = []
        while True:
            body = self._http.json(
                "GET", f"{self._path(run_id)}/events", params={"after": str(after)}
            )
            page = [dict(e) for e in body.get("events", []) if isinstance(e, Mapping)]
            if not page:
                return collected
            collected.extend(page)
            after = int(page[-1]["seq"])

    def logs(self, run_id: str) -> str:
        """The program's output of every launch, each line labelled by its
        launch (``[launch 1] ...``), interleaved with the run's events
        (``--- kind {data}``). A launch's output is there once its VM is
        gone (event ``run.exited``), which can be a moment after the run
        has ended."""
        return self._http.request("GET", f"{self._path(run_id)}/logs").text


class Run:
    """One durable run as last seen (:attr:`info`); :meth:`refresh` for
    its current state. Its methods are those of :class:`Runs` for this
    run."""

    def __init__(self, runs: Runs, info: RunInfo) -> None:
        self._runs = runs
        self._info = info

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, state={self.state!r})"

    @property
    def info(self) -> RunInfo:
        """The run as last seen by this object."""
        return self._info

    # --- the fields of info ---------------------------------------------

    @property
    def id(self) -> str:
        """The run id (``run-...``)."""
        return self._info.id

    @property
    def name(self) -> str | None:
        """Its name, if it was given one."""
        return self._info.name

    @property
    def state(self) -> str:
        """The state as last seen (see :attr:`RunInfo.state`)."""
        return self._info.state

    @property
    def is_final(self) -> bool:
        """Whether it had ended when last seen."""
        return self._info.is_final

    @property
    def program(self) -> str:
        """Digest of its pinned program."""
        return self._info.program

    @property
    def input(self) -> Any:
        """Its input."""
        return self._info.input

    @property
    def output(self) -> Any:
        """Its output, once completed."""
        return self._info.output

    @property
    def error(self) -> RunError | None:
        """Why it failed, once failed."""
        return self._info.error

    @property
    def parent_id(self) -> str | None:
        """The run that spawned it."""
        return self._info.parent_id

    @property
    def launches(self) -> int:
        """VMs it has had."""
        return self._info.launches

    @property
    def restarts(self) -> int:
        """Relaunches after a crash."""
        return self._info.restarts

    @property
    def waiting_for(self) -> dict[str, Any] | None:
        """What it waits for, while waiting."""
        return self._info.waiting_for

    @property
    def wake_ms(self) -> int | None:
        """When a waiting or pending run is next launched."""
        return self._info.wake_ms

    @property
    def deadline_ms(self) -> int | None:
        """When it fails if it has not ended."""
        return self._info.deadline_ms

    @property
    def sandbox_id(self) -> str | None:
        """The sandbox of its current or last launch."""
        return self._info.sandbox_id

    @property
    def node_id(self) -> str | None:
        """The node that runs it."""
        return self._info.node_id

    @property
    def cancelled_by(self) -> str | None:
        """Who cancelled it."""
        return self._info.cancelled_by

    @property
    def created_ms(self) -> int:
        """When it started."""
        return self._info.created_ms

    @property
    def ended_ms(self) -> int | None:
        """When it ended."""
        return self._info.ended_ms

    @property
    def spec(self) -> dict[str, Any]:
        """How its launches are shaped."""
        return self._info.spec

    @property
    def steps(self) -> builtins.list[Step] | None:
        """Its journal as last fetched by :meth:`Runs.get` or
        :meth:`refresh`; ``None`` if this object came from elsewhere."""
        return self._info.steps

    # --- requests ----------------------------------------------------------

    def refresh(self) -> RunInfo:
        """Fetch the run's current state and journal."""
        self._info = self._runs._get(self.id)
        return self._info

    def signal(self, name: str, data: Any = None) -> int:
        """Send it a signal; see :meth:`Runs.signal`."""
        return self._runs.signal(self.id, name, data)

    def fork(self, at_step: int, name: str | None = None) -> Run:
        """Fork it at step ``at_step``; see :meth:`Runs.fork`. Returns the
        fork."""
        return self._runs.fork(self.id, at_step, name)

    def cancel(self, by: str | None = None) -> RunInfo:
        """Cancel it; see :meth:`Runs.cancel`. Returns its final state."""
        self._info = self._runs.cancel(self.id, by).info
        return self._info

    def resolve(
        self,
        step: int,
        *,
        retry: bool = False,
        skip_with: Any = _UNSET,
        fail: bool | str | None = None,
    ) -> RunInfo:
        """Decide about a step; see :meth:`Runs.resolve`."""
        self._info = self._runs.resolve(
            self.id, step, retry=retry, skip_with=skip_with, fail=fail
        ).info
        return self._info

    def result(self, wait: float | None = None) -> RunResult:
        """Its state and outcome; see :meth:`Runs.result`."""
        return self._runs.result(self.id, wait)

    def wait(self, timeout: float | None = None) -> Any:
        """Wait for it to end and return its output; see :meth:`Runs.wait`."""
        return self._runs.wait(self.id, timeout)

    def events(self, after: int = 0) -> builtins.list[dict[str, Any]]:
        """Its events; see :meth:`Runs.events`."""
        return self._runs.events(self.id, after)

    def logs(self) -> str:
        """Its program's output and events, as text; see :meth:`Runs.logs`."""
        return self._runs.logs(self.id)
