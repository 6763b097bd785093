"""Python client for Hearth, the agent sandbox runtime.

Each sandbox is a microVM that boots from a pristine image, runs commands
and dies::

    from hearth import Hearth

    client = Hearth()  # finds a local `hearth serve` and its token
    with client.sandboxes.create(memory="512M", timeout=60) as sb:
        print(sb.exec(["python3", "-c", "print(6*7)"]).stdout)

See :class:`Hearth`, :class:`Sandbox` and the exceptions in
:mod:`hearth.errors`.
"""

from .client import DEFAULT_URL, Hearth
from .errors import (
    CapacityExceeded,
    Conflict,
    ConnectionFailed,
    HearthError,
    InvalidArgument,
    NotFound,
    OutputTooLarge,
    RequestTimeout,
    StreamLost,
    TooLarge,
    Unauthorized,
)
from .events import EventStream
from .execs import ExecStream, Process
from .files import Files
from .models import (
    Error,
    ExecEvent,
    ExecInfo,
    ExecResult,
    Exit,
    ExitInfo,
    FileEntry,
    Gap,
    Health,
    Limits,
    NodeInfo,
    SandboxEvent,
    SandboxInfo,
    Started,
    Stderr,
    Stdout,
    WriteResult,
)
from .sandboxes import Sandbox, Sandboxes

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "CapacityExceeded",
    "Conflict",
    "ConnectionFailed",
    "Error",
    "EventStream",
    "ExecEvent",
    "ExecInfo",
    "ExecResult",
    "ExecStream",
    "Exit",
    "ExitInfo",
    "FileEntry",
    "Files",
    "Gap",
    "Health",
    "Hearth",
    "HearthError",
    "InvalidArgument",
    "Limits",
    "NodeInfo",
    "NotFound",
    "OutputTooLarge",
    "Process",
    "RequestTimeout",
    "Sandbox",
    "SandboxEvent",
    "SandboxInfo",
    "Sandboxes",
    "Started",
    "Stderr",
    "Stdout",
    "StreamLost",
    "TooLarge",
    "Unauthorized",
    "WriteResult",
    "__version__",
]
