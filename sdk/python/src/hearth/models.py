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
    "FINAL_SANDBOX_STATES",
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
    "SandboxEvent",
    "SandboxInfo",
    "Started",
    "Stderr",
    "Stdout",
    "WriteResult",
]

#: Sandbox states after which nothing changes any more.
FINAL_SANDBOX_STATES = frozenset({"stopped", "failed", "timed_out", "lost"})

#: Event kinds that are a sandbox's last; a live event stream ends after one.
FINAL_EVENT_KINDS = frozenset(
    {"sandbox.stopped", "sandbox.failed", "sandbox.timed_out", "sandbox.lost"}
)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


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
    """

    exec_id: str
    stdout: AnyStr
    stderr: AnyStr
    exit: ExitInfo

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
