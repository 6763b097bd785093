"""Sandbox lifecycle: create (and its refusals), get, list, timeouts,
destroy through the context manager, and the event log."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from hearth import (
    CapacityExceeded,
    Conflict,
    Error,
    ExecEvent,
    Hearth,
    InvalidArgument,
    NotFound,
    Sandbox,
    SandboxEvent,
    Started,
    Stdout,
)

from .conftest import DropOnce, Server


def test_shared_sandbox_is_running_with_its_limits(sandbox: Sandbox, run_id: str) -> None:
    info = sandbox.refresh()
    assert info.state == "running"
    assert info.id.startswith("sb-")
    assert info.limits.memory_bytes == 256 * 1024 * 1024
    assert info.limits.vcpus == 1
    assert info.labels == {"suite": run_id, "role": "shared"}
    assert info.accelerator in ("kvm", "tcg")
    assert info.boot_ms is not None and info.boot_ms > 0
    assert info.expires_ms is not None and info.ended_ms is None


def test_get_and_list(client: Hearth, sandbox: Sandbox, run_id: str) -> None:
    assert client.sandboxes.get(sandbox.id).id == sandbox.id
    by_label = client.sandboxes.list(labels={"suite": run_id, "role": "shared"})
    assert [s.id for s in by_label] == [sandbox.id]
    assert client.sandboxes.list(labels={"suite": run_id, "role": "nope"}) == []
    running = client.sandboxes.list(state=["running", "creating"])
    assert sandbox.id in [s.id for s in running]
    stopped = client.sandboxes.list(state="stopped")
    assert sandbox.id not in [s.id for s in stopped]
    assert len(client.sandboxes.list(limit=1)) == 1


def test_nodes_and_placement(client: Hearth, sandbox: Sandbox) -> None:
    nodes = client.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert node.this_node and node.state == "alive" and node.epoch >= 1
    assert node.capacity["sandboxes"] >= 1 and node.load["sandboxes"] >= 1
    assert sandbox.info.node_id == node.id
    assert sandbox.id in [s.id for s in client.sandboxes.list(node=node.id)]
    assert client.sandboxes.list(node="nd-nobody") == []
    with pytest.raises(InvalidArgument) as caught:
        client.sandboxes.create(node="nd-nobody")
    assert caught.value.field == "node"
    events = sandbox.events()
    assert all(e.node_id == node.id and e.version == 1 for e in events)


def test_unknown_sandbox_is_not_found(client: Hearth) -> None:
    with pytest.raises(NotFound) as caught:
        client.sandboxes.get("sb-000000000000")
    assert caught.value.status == 404
    assert caught.value.code == "not_found"


def test_invalid_memory_names_the_field(client: Hearth) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.sandboxes.create(memory="12XB")
    error = caught.value
    assert (error.status, error.code, error.field) == (400, "invalid_argument", "memory")
    assert "12XB" in error.message


def test_invalid_vcpus_and_timeout(client: Hearth) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.sandboxes.create(vcpus=0)
    assert caught.value.field == "vcpus"
    with pytest.raises(InvalidArgument) as caught:
        client.sandboxes.create(timeout=-1)
    assert caught.value.field == "timeout"


def test_more_memory_than_the_host_has_is_capacity_exceeded(client: Hearth) -> None:
    # Valid (at most 256G) but far beyond this host's budget.
    with pytest.raises(CapacityExceeded) as caught:
        client.sandboxes.create(memory="250G")
    assert caught.value.status == 429
    assert caught.value.code == "capacity_exceeded"


def test_set_timeout(sandbox: Sandbox) -> None:
    info = sandbox.set_timeout("20m")
    assert info.limits.timeout_ms == 20 * 60 * 1000
    assert info.expires_ms is not None
    assert info.expires_ms > time.time() * 1000 + 19 * 60 * 1000
    with pytest.raises(InvalidArgument) as caught:
        sandbox.set_timeout("soon")
    assert caught.value.field == "timeout"


def test_event_history(sandbox: Sandbox) -> None:
    result = sandbox.exec(["true"])
    started = [e for e in sandbox.events() if e.kind == "exec.started"]
    assert result.exec_id in [e.data.get("exec_id") for e in started]
    # The end is recorded before the answer: exec.finished is there already.
    events = sandbox.events()
    finished = [e.data.get("exec_id") for e in events if e.kind == "exec.finished"]
    assert result.exec_id in finished
    assert sandbox.get_exec(result.exec_id).info.state == "exited"
    kinds = [e.kind for e in events]
    for kind in ("sandbox.creating", "sandbox.running", "exec.started", "exec.finished"):
        assert kind in kinds
    assert kinds.index("sandbox.creating") < kinds.index("sandbox.running")
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e.sandbox_id == sandbox.id for e in events)
    # Paging: after= and limit= give the same events.
    page = sandbox.events(after=seqs[0], limit=2)
    assert [e.seq for e in page] == seqs[1:3]


def test_context_manager_destroys_and_watch_ends_with_the_sandbox(
    client: Hearth, run_id: str
) -> None:
    watched: list[SandboxEvent] = []
    cut_short: list[ExecEvent] = []
    with client.sandboxes.create(memory="256M", labels={"suite": run_id}) as sb:
        sandbox_id = sb.id
        watcher = threading.Thread(target=lambda: watched.extend(sb.watch_events()))
        watcher.start()
        assert sb.exec(["echo", "hi"]).stdout == "hi\n"
        # A command still running when the sandbox goes: its stream ends
        # with an error event instead of an exit.
        running = sb.exec_stream(["sh", "-c", "echo up; sleep 600"])
        for event in running:
            cut_short.append(event)
            if isinstance(event, Stdout):
                break
        reader = threading.Thread(target=lambda: cut_short.extend(running))
        reader.start()
    watcher.join(timeout=30)
    assert not watcher.is_alive(), "the live event stream did not end with the sandbox"
    reader.join(timeout=30)
    assert not reader.is_alive(), "the exec stream did not end with the sandbox"
    assert [type(e) for e in cut_short] == [Started, Stdout, Error]
    error = cut_short[-1]
    assert isinstance(error, Error) and error.code == "exec_failed"
    assert [e.id for e in cut_short] == [1, 2, 3]

    after = client.sandboxes.get(sandbox_id).info
    assert after.state == "stopped"
    assert after.end_reason == "destroyed"
    assert after.ended_ms is not None and after.expires_ms is None
    kinds = [e.kind for e in watched]
    assert kinds[0] == "sandbox.creating"
    assert kinds[-1] == "sandbox.stopped"
    assert "exec.finished" in kinds
    ends = [e.data for e in watched if e.kind == "exec.finished"]
    assert [d["reason"] for d in ends if d.get("exec_id") == running.exec_id] == ["failed"]
    assert [e.seq for e in watched] == [e.seq for e in sb.events()]

    # An ended sandbox refuses work, keeps no execs, and may be destroyed again.
    with pytest.raises(Conflict) as caught:
        sb.exec(["true"])
    assert caught.value.code == "sandbox_not_running"
    with pytest.raises(Conflict):
        sb.files.read("/etc/hostname")
    assert sb.execs() == []
    assert sb.destroy().state == "stopped"
    # Watching an ended sandbox replays its history and ends.
    assert [e.kind for e in sb.watch_events()][-1] == "sandbox.stopped"


def test_context_manager_destroys_on_exception(client: Hearth, run_id: str) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        client.sandboxes.create(memory="256M", labels={"suite": run_id}) as sb,
    ):
        sandbox_id = sb.id
        raise RuntimeError("boom")
    assert client.sandboxes.get(sandbox_id).state == "stopped"


def test_timeout_ends_the_sandbox_and_a_dropped_watch_resumes(
    server: Server, client: Hearth, run_id: str
) -> None:
    # Cut the first live event stream after two events: the watch must
    # reconnect with Last-Event-ID and still deliver every event once.
    def is_event_stream(request: httpx.Request) -> bool:
        return request.url.path.endswith("/events") and (
            request.headers.get("accept") == "text/event-stream"
        )

    transport = DropOnce(is_event_stream, events=2)
    with client.sandboxes.create(memory="256M", timeout=2, labels={"suite": run_id}) as sb:
        with Hearth(server.url, server.token, transport=transport) as flaky:
            watched = list(flaky.sandboxes.get(sb.id).watch_events())
        assert transport.stream is not None and transport.stream.cut
        streams = [r for r in transport.requests if r.startswith("GET") and "/events" in r]
        assert len(streams) >= 2, transport.requests
        kinds = [e.kind for e in watched]
        assert kinds[:2] == ["sandbox.creating", "sandbox.running"]
        assert kinds[-1] == "sandbox.timed_out"
        assert [e.seq for e in watched] == [e.seq for e in sb.events()]
        info = sb.refresh()
        assert info.state == "timed_out"
        assert info.end_reason == "timed_out"
        with pytest.raises(Conflict):
            sb.exec(["true"])
