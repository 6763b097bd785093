"""Python client for Hearth, the agent sandbox runtime.

Each sandbox is a microVM that boots from a pristine image, runs commands
and dies::

    from hearth import Hearth

    client = Hearth()  # finds a local `hearth serve` and its token
    with client.sandboxes.create(memory="512M", timeout=60) as sb:
        print(sb.exec(["python3", "-c", "print(6*7)"]).stdout)

Durable runs (a program whose steps are journaled, relaunched from its
journal when its VM dies) are ``client.runs``::

    run = client.runs.start("job.py", input={"n": 3})
    print(run.wait(timeout=600))   # its ctx.complete(...) output

See :class:`Hearth`, :class:`Sandbox`, :class:`Run` and the exceptions in
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
    RunCancelled,
    RunFailed,
    StreamLost,
    TooLarge,
    Unauthorized,
)
from .events import EventStream
from .execs import ExecStream, Process
from .files import Files
from .models import (
    Attempt,
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
    Network,
    NodeInfo,
    RunError,
    RunInfo,
    RunResult,
    SandboxEvent,
    SandboxInfo,
    Started,
    Stderr,
    Stdout,
    Step,
    StepError,
    WriteResult,
)
from .runs import Run, Runs
from .sandboxes import Sandbox, Sandboxes

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "Attempt",
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
    "Network",
    "NodeInfo",
    "NotFound",
    "OutputTooLarge",
    "Process",
    "RequestTimeout",
    "Run",
    "RunCancelled",
    "RunError",
    "RunFailed",
    "RunInfo",
    "RunResult",
    "Runs",
    "Sandbox",
    "SandboxEvent",
    "SandboxInfo",
    "Sandboxes",
    "Started",
    "Stderr",
    "Stdout",
    "Step",
    "StepError",
    "StreamLost",
    "TooLarge",
    "Unauthorized",
    "WriteResult",
    "__version__",
]
