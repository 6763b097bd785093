"""Typed views of what the Hearth server returns.

Each class mirrors one JSON object of the REST API and has a ``from_json``
constructor. The constructors read the fields they know and ignore the
rest, so a newer server that adds fields does not break an older client.
Times are milliseconds since the Unix epoch (``*_ms``), as on the wire.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, AnyStr, Generic

__all__ = [
    "FINAL_EVENT_KINDS",
    "FINAL_RUN_STATES",
    "FINAL_SANDBOX_STATES",
    "Attempt",
    "Error",
    "ExecEvent",
    "ExecInfo",
    "ExecResult",
    "Exit",
    "ExitInfo",
    "FileEntry",
    "Gap",
    "Health",
    "Limits",
    "RunError",
    "RunInfo",
    "RunResult",
    "SandboxEvent",
    "SandboxInfo",
    "Started",
    "Stderr",
    "Stdout",
    "Step",
    "StepError",
    "WriteResult",
]

#: Sandbox states after which nothing changes any more.
FINAL_SANDBOX_STATES = frozenset({"stopped", "failed", "timed_out", "lost"})

#: Event kinds that are a sandbox's last; a live event stream ends after one.
FINAL_EVENT_KINDS = frozenset(
    {"sandbox.stopped", "sandbox.failed", "sandbox.timed_out", "sandbox.lost"}
)


#: Run states after which nothing changes any more.
FINAL_RUN_STATES = frozenset({"completed", "failed", "cancelled"})


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True)
class Network:
    """What a sandbox's programs may reach, and how much.

    ``mode`` is ``"none"`` (no network, the default), ``"allowlist"`` (only
    the ``allow`` entries: host names like ``"pypi.org"``, wildcards like
    ``"*.pythonhosted.org:443"`` and CIDRs, each with an optional port) or
    ``"open"`` (any public destination). Loopback, private, link-local and
    cloud metadata addresses stay refused in every mode unless the server's
    operator opened the range. Every connection attempt is a
    ``net.connection`` event in the sandbox's log.

    Build one with :meth:`allowlist`, :meth:`open` or :meth:`parse`, or
    pass the text form (``"allow:pypi.org,*.pythonhosted.org"``) straight
    to ``create(network=...)``.
    """

    mode: str = "none"
    allow: tuple[str, ...] = ()
    #: Most bytes per second, both ways together (bytes or text like ``"1M"``).
    rate: int | str | None = None
    #: Most bytes over the sandbox's life; past it connections end.
    max_bytes: int | str | None = None
    #: Most connections open at once (server default 256).
    max_connections: int | None = None

    @classmethod
    def allowlist(cls, *entries: str, **limits: Any) -> Network:
        """Only ``entries``, e.g. ``Network.allowlist("pypi.org", "*.pythonhosted.org")``."""
        if not entries:
            raise ValueError("an allowlist needs at least one entry, e.g. 'pypi.org'")
        return cls(mode="allowlist", allow=tuple(entries), **limits)

    @classmethod
    def open(cls, **limits: Any) -> Network:
        """Any public destination."""
        return cls(mode="open", **limits)

    @classmethod
    def parse(cls, text: str) -> Network:
        """The command line's form: ``none``, ``open`` or ``allow:ENTRY,...``."""
        if text in ("none", "open"):
            return cls(mode=text)
        if text.startswith("allow:"):
            entries = tuple(e.strip() for e in text[len("allow:") :].split(","))
            return cls(mode="allowlist", allow=entries)
        raise ValueError(
            f"network {text!r}: use 'none', 'open' or 'allow:NAME,...' "
            "(e.g. 'allow:pypi.org,*.pythonhosted.org')"
        )

    def to_json(self) -> dict[str, Any]:
        """The ``network`` object of a create request."""
        body: dict[str, Any] = {"mode": self.mode, "allow": list(self.allow)}
        for key in ("rate", "max_bytes", "max_connections"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body


@dataclass(frozen=True)
class Limits:
    """The resources a sandbox was given."""

    vcpus: int
    memory_bytes: int
    disk_bytes: int
    #: Lifetime last set, in ms; ``None`` when it has none.
    timeout_ms: int | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Limits:
        """Build from the ``limits`` object of a sandbox."""
        return cls(
            vcpus=int(data["vcpus"]),
            memory_bytes=int(data["memory_bytes"]),
            disk_bytes=int(data["disk_bytes"]),
            timeout_ms=_opt_int(data.get("timeout_ms")),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """A snapshot of one sandbox as the server last reported it."""

    id: str
    #: ``creating``, ``running``, ``stopping``, ``stopped``, ``failed``,
    #: ``timed_out`` or ``lost``.
    state: str
    image: str
    #: ``kvm`` or ``tcg`` once booted.
    accelerator: str | None
    limits: Limits
    labels: dict[str, str]
    created_ms: int
    boot_ms: int | None
    #: When a running sandbox will time out.
    expires_ms: int | None
    ended_ms: int | None
    #: Why it ended: ``destroyed``, ``timed_out``, ``out_of_memory``, ...
    end_reason: str | None
    end_message: str | None
    #: The node that runs (or ran) it.
    node_id: str = ""

    @property
    def is_final(self) -> bool:
        """Whether the sandbox has ended for good."""
        return self.state in FINAL_SANDBOX_STATES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SandboxInfo:
        """Build from a SandboxView object."""
        return cls(
            id=str(data["id"]),
            state=str(data["state"]),
            image=str(data.get("image", "")),
            accelerator=_opt_str(data.get("accelerator")),
            limits=Limits.from_json(data["limits"]),
            labels=_str_map(data.get("labels")),
            created_ms=int(data["created_ms"]),
            boot_ms=_opt_int(data.get("boot_ms")),
            expires_ms=_opt_int(data.get("expires_ms")),
            ended_ms=_opt_int(data.get("ended_ms")),
            end_reason=_opt_str(data.get("end_reason")),
            end_message=_opt_str(data.get("end_message")),
            node_id=str(data.get("node_id") or ""),
        )


@dataclass(frozen=True)
class ExitInfo:
    """How a command ended."""

    #: ``exited``, ``signaled``, ``oom_killed``, ``timed_out``, ``killed``
    #: or ``spawn_failed``.
    reason: str
    #: Shell-style exit code: 128+signal when killed, 127 when not found.
    code: int
    signal: int | None
    #: Explanation when the command did not simply exit.
    message: str | None
    duration_ms: int
    stdout_bytes: int
    stderr_bytes: int

    @property
    def ok(self) -> bool:
        """Whether the command exited by itself with code 0."""
        return self.reason == "exited" and self.code == 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExitInfo:
        """Build from an ``exit`` object (result, exec view or stream event)."""
        return cls(
            reason=str(data["reason"]),
            code=int(data["code"]),
            signal=_opt_int(data.get("signal")),
            message=_opt_str(data.get("message")),
            duration_ms=int(data.get("duration_ms", 0)),
            stdout_bytes=int(data.get("stdout_bytes", 0)),
            stderr_bytes=int(data.get("stderr_bytes", 0)),
        )


@dataclass(frozen=True)
class ExecResult(Generic[AnyStr]):
    """The collected output and exit of a finished command.

    ``stdout`` and ``stderr`` are ``str`` by default, or ``bytes`` (exact,
    nothing replaced) when the exec was run with ``text=False``.
    ``stdout_lossy`` / ``stderr_lossy`` are ``True`` when that text is not
    the exact output: bytes that are not UTF-8 were replaced with U+FFFD
    (run with ``text=False`` to get them).
    """

    exec_id: str
    stdout: AnyStr
    stderr: AnyStr
    exit: ExitInfo
    stdout_lossy: bool = False
    stderr_lossy: bool = False

    @property
    def exit_code(self) -> int:
        """Shell-style exit code (see :attr:`ExitInfo.code`)."""
        return self.exit.code

    @property
    def ok(self) -> bool:
        """Whether the command exited by itself with code 0."""
        return self.exit.ok


@dataclass(frozen=True)
class ExecInfo:
    """What the server knows about one exec (command) of a sandbox."""

    exec_id: str
    argv: list[str]
    cwd: str | None
    background: bool
    started_ms: int
    #: ``running``, ``exited`` or ``failed``.
    state: str
    #: How it ended, once it has.
    exit: ExitInfo | None
    #: Why it failed, when it ended without an exit report.
    error: str | None
    #: Clients reading its output right now.
    attached: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExecInfo:
        """Build from an ExecView object."""
        exit_data = data.get("exit")
        return cls(
            exec_id=str(data["exec_id"]),
            argv=[str(a) for a in data.get("argv", [])],
            cwd=_opt_str(data.get("cwd")),
            background=bool(data.get("background", False)),
            started_ms=int(data.get("started_ms", 0)),
            state=str(data["state"]),
            exit=ExitInfo.from_json(exit_data) if isinstance(exit_data, Mapping) else None,
            error=_opt_str(data.get("error")),
            attached=int(data.get("attached", 0)),
        )


@dataclass(frozen=True)
class FileEntry:
    """One filesystem entry inside a sandbox."""

    #: The entry's name in a listing; the full path for a stat.
    name: str
    #: ``file``, ``dir``, ``symlink`` or ``other``.
    type: str
    size: int
    #: Permission bits (e.g. ``0o644``).
    mode: int
    modified_ms: int

    @property
    def is_dir(self) -> bool:
        """Whether it is a directory."""
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        """Whether it is a regular file."""
        return self.type == "file"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileEntry:
        """Build from a FileEntry object."""
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            size=int(data.get("size", 0)),
            mode=int(data.get("mode", 0)),
            modified_ms=int(data.get("modified_ms", 0)),
        )


@dataclass(frozen=True)
class WriteResult:
    """The answer to a file upload."""

    path: str
    #: Bytes written.
    size: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WriteResult:
        """Build from ``{"path", "bytes"}``."""
        return cls(path=str(data["path"]), size=int(data["bytes"]))


@dataclass(frozen=True)
class SandboxEvent:
    """One entry of a sandbox's event log (``sandbox.running``,
    ``exec.finished``, ``file.written``, ...)."""

    #: Increasing id; resume after it.
    seq: int
    sandbox_id: str | None
    at_ms: int
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    #: The node that recorded it.
    node_id: str | None = None
    #: Schema version of ``data``.
    version: int = 1

    @property
    def is_final(self) -> bool:
        """Whether this is the sandbox's last event."""
        return self.kind in FINAL_EVENT_KINDS

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SandboxEvent:
        """Build from an EventView object."""
        details = data.get("data")
        return cls(
            seq=int(data["seq"]),
            sandbox_id=_opt_str(data.get("sandbox_id")),
            at_ms=int(data.get("at_ms", 0)),
            kind=str(data["kind"]),
            data=dict(details) if isinstance(details, Mapping) else {},
            node_id=_opt_str(data.get("node_id")),
            version=int(data.get("version", 1)),
        )


@dataclass(frozen=True)
class NodeInfo:
    """One node of the cluster (a ``hearth serve`` process) and its lease."""

    id: str
    url: str
    hostname: str
    #: ``alive``, ``left`` (shut down cleanly) or ``expired`` (stopped
    #: heartbeating; its sandboxes were recorded lost).
    state: str
    #: Lease epoch: grows each time the node takes a lease.
    epoch: int
    heartbeat_ms: int
    lease_expires_ms: int
    #: What it may run: ``sandboxes``, ``memory_bytes``, ``vcpus``.
    capacity: dict[str, int]
    #: What it runs now, same keys.
    load: dict[str, int]
    #: Whether it is the node that answered.
    this_node: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeInfo:
        """Build from a NodeView object."""
        return cls(
            id=str(data["id"]),
            url=str(data.get("url", "")),
            hostname=str(data.get("hostname", "")),
            state=str(data["state"]),
            epoch=int(data.get("epoch", 0)),
            heartbeat_ms=int(data.get("heartbeat_ms", 0)),
            lease_expires_ms=int(data.get("lease_expires_ms", 0)),
            capacity={str(k): int(v) for k, v in dict(data.get("capacity") or {}).items()},
            load={str(k): int(v) for k, v in dict(data.get("load") or {}).items()},
            this_node=bool(data.get("this_node", False)),
        )


@dataclass(frozen=True)
class Health:
    """The answer of ``GET /healthz``."""

    status: str
    version: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Health:
        """Build from ``{"status", "version"}``."""
        return cls(status=str(data["status"]), version=str(data.get("version", "")))


# --- Durable runs ------------------------------------------------------------


@dataclass(frozen=True)
class RunError:
    """Why a run failed: a stable ``code`` (``restarts_exhausted``,
    ``deadline``, ``non_determinism``, a step's error class, ...) and a
    ``message`` for a human."""

    code: str
    message: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunError:
        """Build from a run's ``error`` object."""
        return cls(code=str(data.get("code", "error")), message=str(data.get("message", "")))


def _run_error(value: Any) -> RunError | None:
    return RunError.from_json(value) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class StepError:
    """Why a step (or one attempt of it) failed."""

    #: The error's class, ``class`` on the wire (``timeout``, ``http_503``,
    #: ``ValueError``, ``decided`` for a person's decision, ...): what retry
    #: policies match on.
    class_: str
    message: str
    #: Whether trying again could help; ``False`` failed the step at once.
    retryable: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepError:
        """Build from a step's or an attempt's ``error`` object."""
        return cls(
            class_=str(data.get("class", "error")),
            message=str(data.get("message", "")),
            retryable=bool(data.get("retryable", False)),
        )


@dataclass(frozen=True)
class Attempt:
    """One attempt of a step."""

    #: 1 for the first.
    number: int
    started_ms: int
    #: When its outcome was recorded; ``None`` while in flight.
    ended_ms: int | None
    #: ``in_flight``, ``succeeded``, ``failed`` or ``lost`` (its VM or the
    #: server died before its outcome was recorded).
    outcome: str
    #: The error of a ``failed`` attempt.
    error: StepError | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        """Build from one entry of a step's ``attempts``, whose
        ``outcome`` is an object: ``{"outcome": "failed", "error": {...}}``."""
        outcome = data.get("outcome")
        if not isinstance(outcome, Mapping):
            outcome = {"outcome": outcome, "error": data.get("error")}
        error = outcome.get("error")
        return cls(
            number=int(data["number"]),
            started_ms=int(data.get("started_ms", 0)),
            ended_ms=_opt_int(data.get("ended_ms")),
            outcome=str(outcome.get("outcome") or ""),
            error=StepError.from_json(error) if isinstance(error, Mapping) else None,
        )


@dataclass(frozen=True)
class Step:
    """One journaled call of a run: a step the program ran itself, a tool
    call, a sleep, a signal wait, a child, ... with every attempt."""

    #: Position in the run's journal, from 0.
    seq: int
    #: ``charge``, ``tool:http``, ``sleep``, ...
    name: str
    #: ``scheduled``, ``started``, ``succeeded``, ``failed`` or
    #: ``indeterminate`` (its outcome is unknown after a crash).
    state: str
    #: What repeating it does: ``pure``, ``idempotent`` or ``unsafe``.
    effect: str
    #: Digest of its arguments, compared on replay.
    args_digest: str
    #: Its result, once succeeded.
    result: Any
    #: Its error, once failed (or that of its last failed attempt).
    error: StepError | None
    attempts: list[Attempt]
    #: When a scheduled retry may run.
    retry_at_ms: int | None
    #: The key every attempt of this step carries (``Idempotency-Key`` of
    #: tool calls), the same on every launch.
    idempotency_key: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        """Build from one entry of a run's ``steps``."""
        error = data.get("error")
        return cls(
            seq=int(data["seq"]),
            name=str(data.get("name", "")),
            state=str(data.get("state", "")),
            effect=str(data.get("effect", "")),
            args_digest=str(data.get("args_digest", "")),
            result=data.get("result"),
            error=StepError.from_json(error) if isinstance(error, Mapping) else None,
            attempts=[Attempt.from_json(a) for a in data.get("attempts") or []],
            retry_at_ms=_opt_int(data.get("retry_at_ms")),
            idempotency_key=_opt_str(data.get("idempotency_key")),
        )


@dataclass(frozen=True)
class RunInfo:
    """A snapshot of one durable run as the server last reported it."""

    id: str
    name: str | None
    #: ``pending``, ``running``, ``waiting``, ``needs_attention``,
    #: ``completed``, ``failed`` or ``cancelled``.
    state: str
    #: Digest of its pinned program (``sha256:...``).
    program: str
    input: Any
    #: What it passed to ``ctx.complete``, once completed.
    output: Any
    #: Why it failed, once failed.
    error: RunError | None
    #: The run that spawned it.
    parent_id: str | None
    #: VMs it has had.
    launches: int
    #: Relaunches after a crash.
    restarts: int
    #: What a waiting run waits for, e.g. ``{"reason": "signal", "on":
    #: "go", "seq": 0}``.
    waiting_for: dict[str, Any] | None
    #: When a waiting or pending run is next launched.
    wake_ms: int | None
    #: When it fails if it has not ended.
    deadline_ms: int | None
    #: The sandbox of its current or last launch.
    sandbox_id: str | None
    #: The node that runs it.
    node_id: str | None
    cancelled_by: str | None
    created_ms: int
    ended_ms: int | None
    #: How its launches are shaped (image, memory, restarts, ...).
    spec: dict[str, Any]
    #: Its journal, in order; only from :meth:`hearth.Runs.get` (and
    #: :meth:`hearth.Run.refresh`), ``None`` where the server did not send it.
    steps: list[Step] | None = None

    @property
    def is_final(self) -> bool:
        """Whether the run has ended for good."""
        return self.state in FINAL_RUN_STATES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunInfo:
        """Build from a RunView (or RunDetail, with ``steps``) object."""
        waiting_for = data.get("waiting_for")
        spec = data.get("spec")
        steps = data.get("steps")
        return cls(
            id=str(data["id"]),
            name=_opt_str(data.get("name")),
            state=str(data["state"]),
            program=str(data.get("program", "")),
            input=data.get("input"),
            output=data.get("output"),
            error=_run_error(data.get("error")),
            parent_id=_opt_str(data.get("parent_id")),
            launches=int(data.get("launches", 0)),
            restarts=int(data.get("restarts", 0)),
            waiting_for=dict(waiting_for) if isinstance(waiting_for, Mapping) else None,
            wake_ms=_opt_int(data.get("wake_ms")),
            deadline_ms=_opt_int(data.get("deadline_ms")),
            sandbox_id=_opt_str(data.get("sandbox_id")),
            node_id=_opt_str(data.get("node_id")),
            cancelled_by=_opt_str(data.get("cancelled_by")),
            created_ms=int(data.get("created_ms", 0)),
            ended_ms=_opt_int(data.get("ended_ms")),
            spec=dict(spec) if isinstance(spec, Mapping) else {},
            steps=[Step.from_json(s) for s in steps] if isinstance(steps, list) else None,
        )


@dataclass(frozen=True)
class RunResult:
    """A run's state and outcome (``GET /v1/runs/{id}/result``); the
    outcome is final only once :attr:`is_final`."""

    state: str
    #: Its output, once completed.
    output: Any
    #: Its error, once failed.
    error: RunError | None

    @property
    def is_final(self) -> bool:
        """Whether the run has ended (completed, failed or cancelled)."""
        return self.state in FINAL_RUN_STATES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunResult:
        """Build from ``{"state", "output", "error"}``."""
        return cls(
            state=str(data["state"]),
            output=data.get("output"),
            error=_run_error(data.get("error")),
        )


# --- Events of an exec's output stream -------------------------------------


@dataclass(frozen=True)
class ExecEvent:
    """Base of the events an exec stream yields.

    ``id`` increases by one per event of the exec; pass the last one seen
    as ``after`` to resume a stream without repeats or losses.
    """

    id: int


@dataclass(frozen=True)
class Started(ExecEvent):
    """The command started, as process ``pid`` in the guest."""

    pid: int
    #: The exec's id (``None`` from a server that does not send it).
    exec_id: str | None = None


@dataclass(frozen=True)
class Stdout(ExecEvent):
    """A chunk of standard output, as exact bytes.

    Chunks are split only at UTF-8 character boundaries, so ``text`` of
    each chunk is the text of that part of the output.
    """

    data: bytes

    @property
    def text(self) -> str:
        """The chunk as text (invalid UTF-8 replaced by U+FFFD)."""
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Stderr(ExecEvent):
    """A chunk of standard error, as exact bytes (see :class:`Stdout`)."""

    data: bytes

    @property
    def text(self) -> str:
        """The chunk as text (invalid UTF-8 replaced by U+FFFD)."""
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Exit(ExecEvent):
    """The command ended; always the last event unless :class:`Error` is."""

    exit: ExitInfo

    @property
    def code(self) -> int:
        """Shell-style exit code."""
        return self.exit.code

    @property
    def reason(self) -> str:
        """How it ended (``exited``, ``killed``, ``timed_out``, ...)."""
        return self.exit.reason


@dataclass(frozen=True)
class Error(ExecEvent):
    """The exec could not finish normally (e.g. its sandbox ended under
    it). A stream event, not an exception; it is the last event."""

    code: str
    message: str


@dataclass(frozen=True)
class Gap(ExecEvent):
    """``missed`` events of output were dropped while no client was
    attached (the server's replay buffer overflowed)."""

    missed: int
    message: str


def decode_output(data: Mapping[str, Any]) -> bytes:
    """The bytes of a ``stdout``/``stderr`` event's data, whatever its
    encoding."""
    text = str(data.get("data", ""))
    if data.get("encoding") == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")


def exec_event_from_sse(event_id: int, name: str, data: Mapping[str, Any]) -> ExecEvent | None:
    """Build the typed event for one server-sent event of an exec stream;
    ``None`` for an event kind this client does not know."""
    if name == "started":
        return Started(
            id=event_id, pid=int(data.get("pid", 0)), exec_id=_opt_str(data.get("exec_id"))
        )
    if name == "stdout":
        return Stdout(id=event_id, data=decode_output(data))
    if name == "stderr":
        return Stderr(id=event_id, data=decode_output(data))
    if name == "exit":
        return Exit(id=event_id, exit=ExitInfo.from_json(data))
    if name == "error":
        return Error(
            id=event_id,
            code=str(data.get("code", "error")),
            message=str(data.get("message", "")),
        )
    if name == "gap":
        return Gap(
            id=event_id,
            missed=int(data.get("missed", 0)),
            message=str(data.get("message", "")),
        )
    return None
