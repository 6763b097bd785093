"""Durable runs through ``client.runs``: programs from a file, a directory
and a dict, the journal, signals, children, failures, cancellation and
the errors of each route.

Every run boots real VMs (seconds each without KVM), so the tests that
need one are few and check much each; the refusals that need no VM come
first.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth import (
    Conflict,
    Hearth,
    InvalidArgument,
    NotFound,
    Run,
    RunCancelled,
    RunFailed,
    RunResult,
)

#: Long enough for a few VM boots under TCG on a busy machine.
RUN_TIMEOUT = 300.0
#: Memory of each launch: the programs are tiny.
MEMORY_MIB = 256

SUM_PROGRAM = """\
import hearth_run

ctx = hearth_run.context()
total = ctx.step("sum", lambda: sum(ctx.input["numbers"]))
doubled = ctx.step("double", lambda: total * 2, effect="pure")
print("total is", total)
ctx.complete({"total": total, "doubled": doubled})
"""

SIGNAL_PROGRAM = """\
import hearth_run
from helper import greet

ctx = hearth_run.context()
who = ctx.wait_signal("go")
ctx.complete({"greeting": greet(who)})
"""

PARENT_PROGRAM = """\
import hearth_run

ctx = hearth_run.context()
child = ctx.spawn("worker.py", input={"n": ctx.input}, name="worker")
ctx.complete({"child": child.result()})
"""

WORKER_PROGRAM = """\
import hearth_run

ctx = hearth_run.context()
ctx.complete(ctx.input["n"] * 10)
"""


def wait_for_state(run: Run, state: str, timeout: float = RUN_TIMEOUT) -> None:
    """Poll until the run is in ``state``."""
    deadline = time.monotonic() + timeout
    while run.refresh().state != state:
        assert not run.is_final, f"{run!r} ended before reaching {state}: {run.error}"
        assert time.monotonic() < deadline, f"{run!r} did not reach {state} in {timeout} s"
        time.sleep(0.5)


# --- without a VM ---------------------------------------------------------------


def _offline_client(sent: list[httpx.Request]) -> Hearth:
    """A client whose requests are recorded and answered with a made-up
    pending run, so that what ``start`` sends is checked without a VM."""

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        body = json.loads(request.content)
        return httpx.Response(
            201,
            json={
                "id": "run-offline",
                "name": body.get("name"),
                "state": "pending",
                "program": "sha256:00",
                "input": body.get("input"),
                "output": None,
                "error": None,
                "launches": 0,
                "restarts": 0,
                "created_ms": 1,
                "spec": {},
            },
        )

    return Hearth("http://hearth.invalid", "t", transport=httpx.MockTransport(answer))


def _sent_files(request: httpx.Request) -> dict[str, bytes]:
    program = json.loads(request.content)["program"]
    return {path: base64.b64decode(data) for path, data in program["files"].items()}


def test_start_reads_files_directories_and_dicts(tmp_path: Path) -> None:
    sent: list[httpx.Request] = []
    with _offline_client(sent) as offline:
        single = tmp_path / "job.py"
        single.write_text("print(1)\n")
        run = offline.runs.start(
            single,
            input={"a": 1},
            timeout=90,
            deadline=3600.5,
            max_restarts=0,
            env={"K": "v"},
            workspace="durable",
        )
        assert (run.id, run.state, run.steps) == ("run-offline", "pending", None)
        body = json.loads(sent[-1].content)
        assert body["program"]["entry"] == "job.py"
        assert _sent_files(sent[-1]) == {"job.py": b"print(1)\n"}
        assert body["input"] == {"a": 1}
        assert body["timeout_seconds"] == 90.0 and body["deadline_seconds"] == 3600.5
        assert body["max_restarts"] == 0 and body["env"] == {"K": "v"}
        assert body["workspace"] == "durable"
        assert "name" not in body and "memory_mib" not in body

        # A directory: everything under it but dot-files and __pycache__.
        project = tmp_path / "project"
        (project / "lib" / "__pycache__").mkdir(parents=True)
        (project / ".git").mkdir()
        (project / "main.py").write_text("import lib.util\n")
        (project / "lib" / "util.py").write_bytes(b"X = 1\n")
        (project / "lib" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
        (project / ".git" / "HEAD").write_text("ref\n")
        (project / ".env").write_text("SECRET=1\n")
        offline.runs.start(str(project), name="dir")
        assert json.loads(sent[-1].content)["program"]["entry"] == "main.py"
        assert _sent_files(sent[-1]) == {"main.py": b"import lib.util\n", "lib/util.py": b"X = 1\n"}
        offline.runs.start(project, entry="lib/util.py")
        assert json.loads(sent[-1].content)["program"]["entry"] == "lib/util.py"

        # A dict: str is sent as UTF-8, bytes as they are.
        offline.runs.start(
            {"a.py": "é", "data.bin": b"\xff"}, entry="a.py", command=["python3", "a.py"]
        )
        body = json.loads(sent[-1].content)
        assert _sent_files(sent[-1]) == {"a.py": "é".encode(), "data.bin": b"\xff"}
        assert body["command"] == ["python3", "a.py"] and "input" not in body
        requests = len(sent)

        # Refusals come before any request.
        with pytest.raises(ValueError, match="nonexistent.py"):
            offline.runs.start(tmp_path / "nonexistent.py")
        with pytest.raises(ValueError, match="entry="):
            offline.runs.start({"main.py": "pass"})
        with pytest.raises(ValueError, match="no file 'main.py'"):
            offline.runs.start({"other.py": "pass"}, entry="main.py")
        with pytest.raises(ValueError, match="has no main.py"):
            offline.runs.start(project / "lib")
        with pytest.raises(ValueError, match="another file"):
            offline.runs.start(single, entry="other.py")
        with pytest.raises(TypeError):
            offline.runs.start(single, command="python3 job.py")
        for decisions in ({}, {"retry": True, "fail": "why"}, {"skip_with": None, "retry": True}):
            with pytest.raises(ValueError, match="exactly one decision"):
                offline.runs.resolve("run-offline", 0, **decisions)
        assert len(sent) == requests


def test_refusals_of_the_server(client: Hearth, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        client.runs.get("run-000000000000")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert "run-000000000000" in caught.value.message
    for call in (
        lambda: client.runs.signal("run-000000000000", "go"),
        lambda: client.runs.cancel("run-000000000000"),
        lambda: client.runs.result("run-000000000000"),
        lambda: client.runs.logs("run-000000000000"),
        lambda: client.runs.events("run-000000000000"),
        lambda: client.runs.resolve("run-000000000000", 0, retry=True),
        lambda: client.runs.fork("run-000000000000", 0),
    ):
        with pytest.raises(NotFound):
            call()

    program = tmp_path / "p.py"
    program.write_text("pass\n")
    with pytest.raises(InvalidArgument) as invalid:
        client.runs.start(program, max_restarts=5000)
    assert (invalid.value.status, invalid.value.field) == (400, "max_restarts")
    with pytest.raises(InvalidArgument) as invalid:
        client.runs.start(program, timeout=-1)
    assert invalid.value.field == "timeout_seconds"
    assert "-1" in invalid.value.message
    with pytest.raises(InvalidArgument) as invalid:
        client.runs.start({"main.py": "pass"}, entry="main.py", name="")
    assert invalid.value.field == "name"
    with pytest.raises(InvalidArgument) as invalid:
        client.runs.list(state="sleeping")
    assert invalid.value.field == "state"


# --- with VMs -------------------------------------------------------------------


def test_file_program_completes_with_its_journal(
    client: Hearth, tmp_path: Path, run_id: str
) -> None:
    program = tmp_path / "sum.py"
    program.write_text(SUM_PROGRAM)
    run = client.runs.start(
        program, input={"numbers": [1, 2, 3]}, name=f"sum-{run_id}", memory_mib=MEMORY_MIB
    )
    assert run.id.startswith("run-")
    assert run.state in ("pending", "running")
    assert run.name == f"sum-{run_id}" and run.input == {"numbers": [1, 2, 3]}
    assert run.program.startswith("sha256:") and run.spec["memory_mib"] == MEMORY_MIB

    assert run.wait(timeout=RUN_TIMEOUT) == {"total": 6, "doubled": 12}

    shown = client.runs.get(run.id)
    assert shown.state == "completed" and shown.is_final
    assert shown.output == {"total": 6, "doubled": 12} and shown.error is None
    assert shown.launches == 1 and shown.restarts == 0
    assert shown.ended_ms is not None and shown.ended_ms >= shown.created_ms
    assert shown.sandbox_id is not None and shown.sandbox_id.startswith("sb-")
    steps = shown.steps
    assert steps is not None
    assert [(s.seq, s.name, s.state, s.result) for s in steps] == [
        (0, "sum", "succeeded", 6),
        (1, "double", "succeeded", 12),
    ]
    assert [s.effect for s in steps] == ["idempotent", "pure"]
    keys = [s.idempotency_key for s in steps]
    assert all(k and k.startswith("hk_") for k in keys) and len(set(keys)) == 2
    attempt = steps[0].attempts[0]
    assert (attempt.number, attempt.outcome, attempt.error) == (1, "succeeded", None)
    assert attempt.ended_ms is not None and attempt.ended_ms >= attempt.started_ms

    result = run.result()
    assert result == RunResult(state="completed", output={"total": 6, "doubled": 12}, error=None)
    assert result.is_final
    assert run.refresh().steps == steps and run.state == "completed"

    assert run.id in [r.id for r in client.runs.list(state="completed")]
    assert run.id not in [r.id for r in client.runs.list(state=["pending", "waiting"])]
    assert len(client.runs.list(limit=1)) == 1
    listed = [r for r in client.runs.list() if r.id == run.id]
    assert listed and listed[0].steps is None

    # A launch's output is recorded once its VM is gone, a moment after
    # the run has completed.
    deadline = time.monotonic() + 30
    while "--- run.exited" not in (logs := run.logs()) and time.monotonic() < deadline:
        time.sleep(0.2)
    # (Checked loosely: the server labels each output chunk, not each line.)
    launch_lines = [line for line in logs.splitlines() if line.startswith("[launch 1] ")]
    assert "total is" in "".join(launch_lines), logs
    events = run.events()
    assert events and all(e["run_id"] == run.id for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert run.events(after=seqs[0]) == events[1:]

    # A fork keeping the first step replays it and runs the second afresh.
    fork = run.fork(1, name=f"fork-{run_id}")
    assert fork.id != run.id and fork.name == f"fork-{run_id}"
    assert fork.wait(timeout=RUN_TIMEOUT) == {"total": 6, "doubled": 12}
    forked_steps = fork.refresh().steps
    assert forked_steps is not None
    assert forked_steps[0].attempts == steps[0].attempts  # replayed, not run
    assert forked_steps[1].attempts != steps[1].attempts
    with pytest.raises(InvalidArgument) as invalid:
        run.fork(3)
    assert "has 2 steps" in invalid.value.message

    # It has ended: signals and cancels are refused with the server's word.
    with pytest.raises(Conflict) as caught:
        run.signal("go")
    assert (caught.value.status, caught.value.code) == (409, "run_ended")
    assert run.id in caught.value.message
    with pytest.raises(Conflict) as caught:
        client.runs.cancel(run.id)
    # (This server says `conflict` here where a signal gets `run_ended`.)
    assert caught.value.code in ("run_ended", "conflict")
    assert "already ended" in caught.value.message


def test_signal_releases_and_relaunches_a_dict_program(client: Hearth, run_id: str) -> None:
    run = client.runs.start(
        {"main.py": SIGNAL_PROGRAM, "helper.py": b"def greet(who):\n    return 'hello ' + who\n"},
        entry="main.py",
        name=f"signal-{run_id}",
        memory_mib=MEMORY_MIB,
    )
    wait_for_state(run, "waiting")
    assert run.waiting_for is not None and run.waiting_for.get("on") == "go"
    assert run.result() == RunResult(state="waiting", output=None, error=None)
    with pytest.raises(TimeoutError, match="waiting"):
        run.wait(timeout=1)
    assert run.id in [r.id for r in client.runs.list(state="waiting")]

    # Nothing waits for a decision: resolve is refused.
    with pytest.raises(Conflict) as caught:
        run.resolve(0, retry=True)
    assert caught.value.status == 409 and caught.value.message

    signal_id = client.runs.signal(run.id, "go", "ana")
    assert isinstance(signal_id, int) and signal_id > 0
    assert client.runs.wait(run.id, timeout=RUN_TIMEOUT) == {"greeting": "hello ana"}
    run.refresh()
    assert run.launches == 2 and run.waiting_for is None
    assert run.steps is not None and run.steps[0].result is not None

    with pytest.raises(Conflict) as caught:
        run.signal("go", "again")
    assert caught.value.code == "run_ended"
    with pytest.raises(Conflict):
        run.resolve(0, skip_with=None)


def test_a_child_runs_in_its_own_vm(client: Hearth, run_id: str) -> None:
    parent = client.runs.start(
        {"main.py": PARENT_PROGRAM, "worker.py": WORKER_PROGRAM},
        entry="main.py",
        input=5,
        name=f"parent-{run_id}",
        memory_mib=MEMORY_MIB,
    )
    assert parent.wait(timeout=RUN_TIMEOUT) == {"child": 50}
    children = client.runs.list(parent=parent.id)
    assert [(c.name, c.state, c.output, c.parent_id) for c in children] == [
        ("worker", "completed", 50, parent.id)
    ]
    steps = parent.refresh().steps
    assert steps is not None and len(steps) == 2
    assert steps[0].name.startswith("spawn") or children[0].id in json.dumps(steps[0].result)


def test_failed_and_cancelled_runs_raise_from_wait(
    client: Hearth, tmp_path: Path, run_id: str
) -> None:
    waiting = client.runs.start(
        {"main.py": "import hearth_run\nhearth_run.context().wait_signal('never')\n"},
        entry="main.py",
        memory_mib=MEMORY_MIB,
    )
    # Cancelled once it waits: a run that a node is claiming the moment
    # the cancel arrives can be refused as run_busy.
    wait_for_state(waiting, "waiting")
    cancelled = waiting.cancel(by=f"pytest-{run_id}")
    assert cancelled.state == "cancelled" and cancelled.cancelled_by == f"pytest-{run_id}"
    with pytest.raises(RunCancelled) as stopped:
        client.runs.wait(waiting.id, timeout=30)
    assert stopped.value.code == "cancelled"
    assert stopped.value.cancelled_by == f"pytest-{run_id}"
    assert waiting.id in str(stopped.value)

    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit(3)\n")
    run = client.runs.start(bad, max_restarts=0, memory_mib=MEMORY_MIB)
    with pytest.raises(RunFailed) as failed:
        run.wait(timeout=RUN_TIMEOUT)
    error: Any = failed.value
    assert error.code == "restarts_exhausted" and error.message
    assert error.run_id == run.id and error.status is None
    info = run.refresh()
    assert info.state == "failed" and info.error is not None
    assert (info.error.code, info.error.message) == (error.code, error.message)
    assert run.result().error == info.error
