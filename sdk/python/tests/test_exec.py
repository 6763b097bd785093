"""Running commands: collected, streamed (and resumed), and in the
background, with stdin and kill for both streamed and background ones."""

from __future__ import annotations

import time

import httpx
import pytest

from hearth import (
    Conflict,
    Error,
    ExecEvent,
    Exit,
    Gap,
    Hearth,
    InvalidArgument,
    NotFound,
    OutputTooLarge,
    Sandbox,
    Started,
    Stderr,
    Stdout,
)

from .conftest import DropOnce, Server

# Prints six numbered lines, slowly enough that a stream can be cut or
# left in the middle.
SLOW_LINES = ["sh", "-c", "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.15; done"]
SLOW_OUTPUT = "".join(f"line{i}\n" for i in range(1, 7))


def stdout_of(events: list[ExecEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, Stdout))


def assert_complete(events: list[ExecEvent]) -> None:
    """Every event once, in order: ids 1..N, started first, exit last."""
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Exit)
    assert sum(isinstance(e, (Started, Exit)) for e in events) == 2


# --- collected (wait=true) ------------------------------------------------


def test_exec_prints_and_exits_zero(sandbox: Sandbox) -> None:
    result = sandbox.exec(["python3", "-c", "print(1)"])
    assert result.stdout == "1\n"
    assert result.stderr == ""
    assert result.exit_code == 0
    assert result.ok
    assert result.exit.reason == "exited"
    assert result.exit.stdout_bytes == 2
    assert result.exec_id


def test_nonzero_exit_and_stderr(sandbox: Sandbox) -> None:
    result = sandbox.exec(["sh", "-c", "echo out; echo oops >&2; exit 3"])
    assert (result.stdout, result.stderr) == ("out\n", "oops\n")
    assert result.exit_code == 3
    assert result.exit.reason == "exited"
    assert not result.ok


def test_command_not_found_is_127(sandbox: Sandbox) -> None:
    result = sandbox.exec(["no-such-command-here"])
    assert result.exit_code == 127
    assert result.exit.reason == "spawn_failed"
    assert result.exit.message and "no-such-command-here" in result.exit.message


def test_stdin_text_and_bytes(sandbox: Sandbox) -> None:
    assert sandbox.exec(["cat"], stdin="hello\nworld\n").stdout == "hello\nworld\n"
    raw = bytes(range(256))
    result = sandbox.exec(["cat"], stdin=raw, text=False)
    assert result.stdout == raw


def test_env_adds_to_the_sandbox_env(sandbox: Sandbox) -> None:
    result = sandbox.exec(
        ["sh", "-c", 'echo "$GREETING $HEARTH_TEST_SANDBOX_ENV"'], env={"GREETING": "hi"}
    )
    assert result.stdout == "hi from-sandbox\n"
    # An exec's own value wins over the sandbox's.
    result = sandbox.exec(
        ["sh", "-c", "echo $HEARTH_TEST_SANDBOX_ENV"], env={"HEARTH_TEST_SANDBOX_ENV": "mine"}
    )
    assert result.stdout == "mine\n"


def test_cwd(sandbox: Sandbox) -> None:
    assert sandbox.exec(["pwd"]).stdout == "/root\n"
    assert sandbox.exec(["pwd"], cwd="/tmp").stdout == "/tmp\n"
    with pytest.raises(InvalidArgument) as caught:
        sandbox.exec(["pwd"], cwd="relative")
    assert caught.value.field == "cwd"


def test_bytes_output_keeps_non_utf8(sandbox: Sandbox) -> None:
    script = r"printf '\377\376ab\000c'; printf '\200' >&2"
    raw = sandbox.exec(["sh", "-c", script], text=False)
    assert raw.stdout == b"\xff\xfeab\x00c"
    assert raw.stderr == b"\x80"
    text = sandbox.exec(["sh", "-c", script])
    assert text.stdout == "\ufffd\ufffdab\x00c"
    # The text says it is not the exact output.
    assert text.stdout_lossy and text.stderr_lossy
    clean = sandbox.exec(["echo", "fine"])
    assert not clean.stdout_lossy and not clean.stderr_lossy


def test_exec_timeout(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = sandbox.exec(["sleep", "30"], timeout=1)
    assert time.monotonic() - started < 20
    assert result.exit.reason == "timed_out"
    assert result.exit_code != 0


def test_too_much_output_for_wait(sandbox: Sandbox) -> None:
    # The test server collects at most 1M for wait=true.
    with pytest.raises(OutputTooLarge) as caught:
        sandbox.exec(["head", "-c", "3000000", "/dev/zero"])
    assert caught.value.status == 422
    assert caught.value.code == "output_too_large"


def test_bad_argv(sandbox: Sandbox) -> None:
    with pytest.raises(InvalidArgument) as caught:
        sandbox.exec([])
    assert caught.value.field == "argv"
    with pytest.raises(TypeError):
        sandbox.exec("echo hi")


# --- streamed -----------------------------------------------------------


def test_exec_stream_in_order(sandbox: Sandbox) -> None:
    stream = sandbox.exec_stream(["sh", "-c", "echo a; sleep 0.1; echo b >&2; echo c; exit 4"])
    events = list(stream)
    assert_complete(events)
    kinds = [type(e) for e in events]
    assert kinds == [Started, Stdout, Stderr, Stdout, Exit]
    started, exit_ = events[0], events[-1]
    assert isinstance(started, Started) and started.pid > 0
    # The id came with the response; the started event names the exec too.
    assert started.exec_id == stream.exec_id
    assert isinstance(exit_, Exit) and exit_.code == 4 and exit_.reason == "exited"
    assert stdout_of(events) == "a\nc\n"
    assert [e.text for e in events if isinstance(e, Stderr)] == ["b\n"]
    # The end is recorded before the exit reaches a client.
    info = sandbox.get_exec(stream.exec_id).info
    assert info.state == "exited"
    assert info.exit is not None and info.exit.code == 4
    finished = [e for e in sandbox.events() if e.kind == "exec.finished"]
    assert stream.exec_id in [e.data.get("exec_id") for e in finished]


def test_exec_stream_binary_and_collect(sandbox: Sandbox) -> None:
    result = sandbox.exec_stream(["printf", r"\377\000\376"]).collect()
    assert result.stdout == b"\xff\x00\xfe"
    assert result.exit_code == 0


def test_exec_stream_refusal_is_raised_at_once(sandbox: Sandbox) -> None:
    with pytest.raises(InvalidArgument):
        sandbox.exec_stream(["pwd"], cwd="not/absolute")


def test_exec_stream_resumes_after_a_dropped_connection(server: Server, sandbox: Sandbox) -> None:
    def is_exec_stream(request: httpx.Request) -> bool:
        return request.method == "POST" and request.url.path.endswith("/exec")

    transport = DropOnce(is_exec_stream, events=3)  # started, line1, line2
    with Hearth(server.url, server.token, transport=transport) as flaky:
        stream = flaky.sandboxes.get(sandbox.id).exec_stream(SLOW_LINES)
        events = list(stream)
    assert transport.stream is not None and transport.stream.cut
    resumed = [
        r for r in transport.requests if r.startswith("GET") and r.split("?")[0].endswith("/events")
    ]
    assert len(resumed) == 1, transport.requests
    assert f"/execs/{stream.exec_id}/events" in resumed[0]
    # Straight from the exec, then back to it: no looking the exec up.
    assert not [r for r in transport.requests if "/execs?" in r], transport.requests
    assert_complete(events)
    assert stdout_of(events) == SLOW_OUTPUT


def test_exec_stream_without_the_id_header_learns_it_from_started(
    server: Server, sandbox: Sandbox
) -> None:
    # A proxy that drops X-Hearth-Exec-Id: the stream reads ahead to the
    # started event for the id, keeps what it read, and still resumes.
    def is_exec_stream(request: httpx.Request) -> bool:
        return request.method == "POST" and request.url.path.endswith("/exec")

    transport = DropOnce(is_exec_stream, events=3, strip=["X-Hearth-Exec-Id"])
    with Hearth(server.url, server.token, transport=transport) as flaky:
        stream = flaky.sandboxes.get(sandbox.id).exec_stream(SLOW_LINES)
        exec_id = stream.exec_id
        assert stream.last_event_id == 0  # read ahead, not delivered
        events = list(stream)
    assert sandbox.get_exec(exec_id).info.argv == SLOW_LINES
    assert transport.stream is not None and transport.stream.cut
    assert any(f"/execs/{exec_id}/events" in r for r in transport.requests), transport.requests
    assert_complete(events)
    assert stdout_of(events) == SLOW_OUTPUT
    assert stream.last_event_id == events[-1].id


def test_exec_stream_stdin_open(sandbox: Sandbox) -> None:
    with sandbox.exec_stream(["cat"], stdin_open=True) as stream:
        stream.write_stdin("hello\n")
        seen: list[ExecEvent] = []
        for event in stream:
            seen.append(event)
            if isinstance(event, Stdout) and stdout_of(seen) == "hello\n":
                stream.write_stdin(b"bye\n", close=True)
    assert_complete(seen)
    assert stdout_of(seen) == "hello\nbye\n"
    exit_ = seen[-1]
    assert isinstance(exit_, Exit) and exit_.reason == "exited" and exit_.code == 0
    with pytest.raises(Conflict) as caught:
        stream.write_stdin("too late")
    assert caught.value.code == "stdin_closed"


def test_exec_stream_stdin_is_closed_unless_kept_open(sandbox: Sandbox) -> None:
    stream = sandbox.exec_stream(["cat"], stdin="given\n")
    with pytest.raises(Conflict) as caught:
        stream.write_stdin("more")
    assert caught.value.code == "stdin_closed"
    assert stream.collect().stdout == b"given\n"


def test_exec_stream_kill(sandbox: Sandbox) -> None:
    stream = sandbox.exec_stream(["sh", "-c", "echo up; sleep 60"])
    seen: list[ExecEvent] = []
    for event in stream:
        seen.append(event)
        if isinstance(event, Stdout):
            assert stream.kill().state == "running"  # the kill is on its way
    assert_complete(seen)
    exit_ = seen[-1]
    assert isinstance(exit_, Exit) and exit_.reason == "killed" and exit_.code == 137
    info = sandbox.get_exec(stream.exec_id).info
    assert info.state == "exited" and info.exit is not None and info.exit.reason == "killed"
    # Killing an ended exec is harmless.
    assert stream.kill().state == "exited"


def test_exec_stream_resumed_by_hand_misses_nothing(sandbox: Sandbox) -> None:
    first: list[ExecEvent] = []
    with sandbox.exec_stream(SLOW_LINES) as stream:
        for event in stream:
            first.append(event)
            if len(first) == 3:
                break
        exec_id = stream.exec_id
        last = stream.last_event_id
    assert last == 3
    rest = list(sandbox.exec_events(exec_id, after=last))
    assert rest[0].id == last + 1
    events = first + rest
    assert_complete(events)
    assert stdout_of(events) == SLOW_OUTPUT
    # The whole stream can also be replayed from the start.
    assert [e.id for e in sandbox.get_exec(exec_id).events()] == [e.id for e in events]
    # Resumed after its last event, a stream has nothing more and ends.
    assert list(sandbox.exec_events(exec_id, after=events[-1].id)) == []


# --- background ---------------------------------------------------------


def test_background_stdin_echo_then_kill(sandbox: Sandbox) -> None:
    proc = sandbox.exec_background(["cat"], stdin_open=True)
    assert proc.info.background and proc.info.state == "running"
    proc.write_stdin(b"hello\n")
    seen: list[ExecEvent] = []
    with proc.events() as stream:
        for event in stream:
            seen.append(event)
            if not isinstance(event, Stdout):
                continue
            echoed = stdout_of(seen)
            if echoed == "hello\n":
                proc.write_stdin("again\n")
            elif echoed == "hello\nagain\n":
                proc.kill()
    assert_complete(seen)
    exit_ = seen[-1]
    assert isinstance(exit_, Exit)
    assert exit_.reason == "killed"
    assert exit_.code == 137
    assert proc.exec_id in [e.exec_id for e in sandbox.execs()]
    # The end is recorded before the exit reaches a client.
    assert proc.refresh().state == "exited"
    assert proc.info.exit is not None and proc.info.exit.reason == "killed"


def test_background_stdin_close_then_wait(sandbox: Sandbox) -> None:
    proc = sandbox.exec_background(["sh", "-c", "cat; echo done"], stdin_open=True)
    proc.write_stdin("last words\n", close=True)
    exit_info = proc.wait()
    assert exit_info.reason == "exited" and exit_info.code == 0
    assert stdout_of(list(proc.events())) == "last words\ndone\n"
    with pytest.raises(Conflict) as caught:
        proc.write_stdin("too late")
    assert caught.value.code == "stdin_closed"


def test_background_resume_after(sandbox: Sandbox) -> None:
    proc = sandbox.exec_background(SLOW_LINES)
    assert proc.wait().code == 0
    everything = list(proc.events())
    assert_complete(everything)
    tail = list(proc.events(after=4))
    assert tail == everything[4:]


def test_background_output_dropped_while_nobody_watched_is_a_gap(sandbox: Sandbox) -> None:
    # More output than the server's 4 MiB replay buffer, with no client
    # attached: the oldest output is dropped and a reader is told so.
    size = 6 * 1024 * 1024
    proc = sandbox.exec_background(["head", "-c", str(size), "/dev/zero"])
    exit_info = proc.wait()
    assert exit_info.stdout_bytes == size
    events = list(proc.events())
    gaps = [e for e in events if isinstance(e, Gap)]
    assert len(gaps) == 1 and gaps[0].missed > 0
    kept = sum(len(e.data) for e in events if isinstance(e, Stdout))
    assert 0 < kept < size
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_unknown_exec_is_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(NotFound) as caught:
        sandbox.get_exec("x999999")
    # Every error names its request, as the server's log does.
    assert caught.value.request_id and caught.value.request_id.startswith("req-")
    assert caught.value.request_id in str(caught.value)


def test_error_event_type_is_exported() -> None:
    # Error is a stream event (the exec could not finish), not an exception.
    assert not issubclass(Error, BaseException)
