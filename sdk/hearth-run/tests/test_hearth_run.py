"""Tests of hearth_run against a scripted fake engine on 127.0.0.1.

The fake engine implements the run endpoint protocol (docs/run-endpoint.md)
with a small in-memory journal: steps replay once recorded, retryable
failures are retried (wait_ms 0) up to three attempts, a call that does not
match the journal stops the run with non_determinism, and so on. Every
request the module sends is kept, so tests assert the exact wire traffic.
"""

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import hearth_run  # noqa: E402

RUN = "run-abc"
NOW = 1764660000.123
RANDOM = 0.7134
KEY0 = hearth_run.idempotency_key(RUN, 0)


class FakeEngine:
    """The engine's side of the protocol, scripted and in memory."""

    def __init__(self):
        self.requests = []  # (method, path relative to the run URL, body)
        self.journal = []  # one dict per seq
        self.input = {"n": 3}
        self.launch = 0
        self.max_attempts = 3
        self.waits = {}  # seq -> [wait_ms answered before execute]
        self.tools = {}  # name -> fn(args) -> outcome
        self.signals = {}  # name -> data
        self.children = {}  # child id -> outcome (absent: still running)
        self.blobs = {}  # path -> size
        self.sleep_hold = 60  # longer sleeps release the VM
        self.stop_on = {}  # route -> reason: answer 409 run_stopped
        self.output = None
        self.completed = False
        self.lock = threading.Lock()
        self.drop_connections = False  # close each connection without saying so
        self.connections = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/runs/{RUN}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def relaunch(self):
        """A new Context, as a relaunched program would make it."""
        self.requests.clear()
        return hearth_run.Context(self.url)

    def sent(self, method=None):
        return [(m, p, b) for (m, p, b) in self.requests if method is None or m == method]

    def posts(self):
        return [(p, b) for (m, p, b) in self.requests if m == "POST"]

    # -- the protocol ---------------------------------------------------

    def handle(self, method, path, body):
        prefix = f"/v1/runs/{RUN}"
        if not path.startswith(prefix):
            return 404, error("not_found", f"no route {path}")
        path = path[len(prefix):]
        self.requests.append((method, path, body))
        if method == "GET" and path == "/":
            self.launch += 1
            return 200, {
                "run_id": RUN,
                "name": "nightly",
                "input": self.input,
                "launch": self.launch,
                "program_digest": "sha256:" + "ab" * 32,
                "journal_length": len(self.journal),
            }
        if method != "POST":
            return 404, error("not_found", "no such route")
        if path in self.stop_on:
            return 409, stopped(self.stop_on[path])
        if path == "/complete":
            self.completed, self.output = True, body["output"]
            return 200, {"completed": True}
        if path.startswith("/steps/") and path.endswith("/result"):
            return self.step_result(int(path.split("/")[2]), body)
        seq = body.get("seq")
        if not isinstance(seq, int):
            return 400, error("invalid_argument", "seq is missing", "seq")
        if seq > len(self.journal):
            return 400, error("out_of_order", f"seq {seq} skips {len(self.journal)}")
        if path == "/steps":
            return self.step(seq, body)
        key = {k: v for k, v in body.items() if k != "seq"}
        if seq < len(self.journal):
            entry = self.journal[seq]
            if entry["path"] != path or entry["key"] != key:
                return 409, stopped("non_determinism")
            return entry["status"], entry["answer"]
        status, answer = self.answer(seq, path, body)
        if status == 200:
            self.journal.append({"path": path, "key": key, "status": status, "answer": answer})
        return status, answer

    def answer(self, seq, path, body):
        if path == "/values":
            return 200, {"value": NOW if body["kind"] == "now" else RANDOM}
        if path == "/sleep":
            if body["seconds"] > self.sleep_hold:
                return 409, stopped("waiting")
            return 200, {"slept": True}
        if path.startswith("/signals/"):
            name = path[len("/signals/"):]
            if name in self.signals:
                return 200, {"received": True, "data": self.signals[name]}
            return 200, {"received": False}
        if path.startswith("/tools/"):
            name = path[len("/tools/"):]
            if name not in self.tools:
                return 404, error("not_found", f"no tool {name}; there are: {sorted(self.tools)}")
            outcome = self.tools[name](body["args"])
            return 200, {"outcome": outcome, "attempts": 1, "idempotency_key": f"hk_{seq}"}
        if path == "/children":
            return 200, {"child_id": f"run-child-{seq}"}
        if path.startswith("/children/"):
            child = path.split("/")[2]
            if child not in self.children:
                return 409, stopped("waiting")
            return 200, {"outcome": self.children[child]}
        if path == "/persist":
            self.blobs[body["path"]] = 123
            return 200, {"digest": "sha256:" + "cd" * 32, "size": 123}
        if path == "/restore":
            if body["path"] in self.blobs:
                return 200, {"restored": True, "size": self.blobs[body["path"]]}
            return 200, {"restored": False}
        return 404, error("not_found", f"no route {path}")

    def step(self, seq, body):
        key = {k: body.get(k) for k in ("name", "args", "effect")}
        if seq < len(self.journal):
            entry = self.journal[seq]
            if entry["path"] != "/steps" or entry["key"] != key:
                return 409, stopped("non_determinism")
            if entry["outcome"] is not None:
                return 200, {"action": "replay", "outcome": entry["outcome"]}
        else:
            entry = {"path": "/steps", "key": key, "attempt": 0, "outcome": None}
            self.journal.append(entry)
        if "attempt" in body:
            # Run before it was asked for: its first attempt, reported.
            if body["attempt"] != 1 or entry["attempt"] != 0 or body["effect"] == "unsafe":
                return 400, error("invalid_argument", "not a first attempt", "attempt")
            entry["attempt"] = 1
            return self.step_result(seq, body)
        waits = self.waits.get(seq)
        if waits:
            return 200, {"action": "wait", "wait_ms": waits.pop(0)}
        entry["attempt"] += 1
        return 200, {
            "action": "execute",
            "attempt": entry["attempt"],
            "idempotency_key": hearth_run.idempotency_key(RUN, seq),
        }

    def step_result(self, seq, body):
        entry = self.journal[seq]
        if body.get("attempt") != entry["attempt"]:
            return 400, error("invalid_argument", "not the current attempt", "attempt")
        if "error" in body:
            err = body["error"]
            if err["retryable"] and entry["attempt"] < self.max_attempts:
                return 200, {"action": "retry", "wait_ms": 0}
            entry["outcome"] = {"status": "failed", "error": err}
        else:
            entry["outcome"] = {"status": "succeeded", "result": body["result"]}
        return 200, {"action": "done", "outcome": entry["outcome"]}

    def _handler(self):
        engine = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self):
                super().setup()
                with engine.lock:
                    engine.connections += 1

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def _serve(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if method == "POST":
                    assert self.headers.get("Content-Type") == "application/json"
                body = json.loads(raw) if raw else None
                with engine.lock:
                    status, doc = engine.handle(method, self.path, body)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if engine.drop_connections:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        return Handler


def error(code, message, field=None):
    err = {"code": code, "message": message}
    if field:
        err["field"] = field
    return {"error": err}


def stopped(reason):
    return {"error": {"code": "run_stopped", "reason": reason, "message": f"the run is {reason}"}}


@pytest.fixture
def engine(monkeypatch):
    e = FakeEngine()
    monkeypatch.setenv("HEARTH_RUN_URL", e.url)
    hearth_run._reset()
    yield e
    hearth_run._reset()
    e.close()


# -- context ---------------------------------------------------------------


def test_context_reads_the_run_and_is_one_per_process(engine):
    ctx = hearth_run.context()
    assert (ctx.run_id, ctx.name, ctx.input, ctx.launch) == (RUN, "nightly", {"n": 3}, 1)
    assert ctx.journal_length == 0 and ctx.seq == 0
    assert hearth_run.context() is ctx
    assert engine.sent() == [("GET", "/", None)]


def test_context_without_url_says_where_it_works(monkeypatch):
    monkeypatch.delenv("HEARTH_RUN_URL", raising=False)
    hearth_run._reset()
    with pytest.raises(RuntimeError) as e:
        hearth_run.context()
    assert str(e.value) == (
        "hearth_run.context() is only available inside a Hearth run: HEARTH_RUN_URL is not set"
    )


# -- steps -----------------------------------------------------------------


def test_step_executes_reports_and_replays_without_calling_fn(engine):
    ctx = hearth_run.Context(engine.url)
    calls = []

    def add(a, b):
        calls.append((a, b, ctx.idempotency_key))
        return {"sum": a + b, "pair": (a, b)}

    assert ctx.idempotency_key is None
    assert ctx.step("add", add, 2, 3) == {"sum": 5, "pair": [2, 3]}
    assert ctx.idempotency_key is None
    assert calls == [(2, 3, KEY0)]
    # Past the journal's end, a repeatable step runs first and is recorded
    # with one call.
    assert engine.posts() == [
        (
            "/steps",
            {
                "seq": 0,
                "name": "add",
                "args": [2, 3],
                "effect": "idempotent",
                "attempt": 1,
                "result": {"sum": 5, "pair": [2, 3]},
            },
        ),
    ]

    again = engine.relaunch()
    assert again.journal_length == 1 and again.replaying
    assert again.step("add", add, 2, 3) == {"sum": 5, "pair": [2, 3]}
    assert calls == [(2, 3, KEY0)]  # not called on replay
    assert engine.posts() == [
        ("/steps", {"seq": 0, "name": "add", "args": [2, 3], "effect": "idempotent"}),
    ]
    assert not again.replaying


def test_failed_attempt_is_retried_then_recorded(engine):
    ctx = hearth_run.Context(engine.url)
    attempts = []

    def flaky():
        attempts.append(ctx.idempotency_key)
        if len(attempts) == 1:
            raise ConnectionError("reset by peer")
        return "ok"

    assert ctx.step("flaky", flaky, effect="unsafe") == "ok"
    assert attempts == [KEY0, KEY0]
    assert engine.posts() == [
        ("/steps", {"seq": 0, "name": "flaky", "args": [], "effect": "unsafe"}),
        (
            "/steps/0/result",
            {
                "attempt": 1,
                "error": {"class": "ConnectionError", "message": "reset by peer", "retryable": True},
            },
        ),
        ("/steps", {"seq": 0, "name": "flaky", "args": [], "effect": "unsafe"}),
        ("/steps/0/result", {"attempt": 2, "result": "ok"}),
    ]


def test_idempotency_keys_match_the_engines():
    # The same value as hearth-engine's digest test.
    assert hearth_run.idempotency_key("run-1", 3) == "hk_f00b9bad5dc9f10d03581bf6a3d940b7bfc6c839"


def test_a_step_run_first_and_retried_asks_again(engine):
    ctx = hearth_run.Context(engine.url)
    attempts = []

    def flaky():
        attempts.append(ctx.idempotency_key)
        if len(attempts) == 1:
            raise ConnectionError("reset by peer")
        return "ok"

    assert ctx.step("flaky", flaky) == "ok"
    assert attempts == [KEY0, KEY0]
    assert [(p, b.get("attempt")) for p, b in engine.posts()] == [
        ("/steps", 1),
        ("/steps", None),
        ("/steps/0/result", 2),
    ]


def test_wait_answer_asks_again(engine):
    engine.waits[0] = [0, 1]
    ctx = hearth_run.Context(engine.url)
    key = {"name": "s", "args": [], "effect": "idempotent"}
    engine.journal.append({"path": "/steps", "key": key, "attempt": 0, "outcome": None})
    ctx.journal_length = 1  # a step already in the journal: asked first
    assert ctx.step("s", lambda: 7) == 7
    assert [p for p, _ in engine.posts()] == ["/steps", "/steps", "/steps", "/steps/0/result"]


def test_non_retryable_failure_raises_step_failed_and_replays_it(engine):
    class Refused(hearth_run.NonRetryable):
        pass

    ctx = hearth_run.Context(engine.url)
    calls = []

    def pay():
        calls.append(1)
        raise Refused("card declined")

    with pytest.raises(hearth_run.StepFailed) as e:
        ctx.step("pay", pay, effect="unsafe")
    assert e.value.error == {"class": "Refused", "message": "card declined", "retryable": False}
    assert isinstance(e.value.__cause__, Refused)
    assert calls == [1]
    assert engine.posts()[-1] == (
        "/steps/0/result",
        {"attempt": 1, "error": {"class": "Refused", "message": "card declined", "retryable": False}},
    )

    again = engine.relaunch()
    with pytest.raises(hearth_run.StepFailed) as e:
        again.step("pay", pay, effect="unsafe")
    assert e.value.error["class"] == "Refused"
    assert calls == [1]


def test_retryable_failure_gives_up_after_the_policy(engine):
    ctx = hearth_run.Context(engine.url)
    with pytest.raises(hearth_run.StepFailed) as e:
        ctx.step("boom", lambda: 1 / 0)
    assert e.value.error["class"] == "ZeroDivisionError"
    assert e.value.error["retryable"] is True
    # The first attempt is reported with the step, the retries apart.
    assert [(p, b.get("attempt")) for p, b in engine.posts()] == [
        ("/steps", 1),
        ("/steps", None),
        ("/steps/0/result", 2),
        ("/steps", None),
        ("/steps/0/result", 3),
    ]


def test_unserializable_result_names_the_step(engine):
    ctx = hearth_run.Context(engine.url)
    with pytest.raises(TypeError) as e:
        ctx.step("opener", lambda: object())
    assert "step 'opener' returned a value that is not JSON-serializable" in str(e.value)
    with pytest.raises(TypeError) as e:
        ctx.step("nan", lambda: float("nan"))
    assert "step 'nan'" in str(e.value)
    with pytest.raises(TypeError) as e:
        ctx.step("bad-args", lambda x: x, {1, 2})
    assert "the arguments of step 'bad-args' must be JSON-serializable" in str(e.value)


def test_step_arguments_are_checked(engine):
    ctx = hearth_run.Context(engine.url)
    with pytest.raises(ValueError, match="effect must be one of pure, idempotent, unsafe"):
        ctx.step("s", lambda: 1, effect="risky")
    assert ctx.seq == 0


def test_retry_policy_is_sent_when_given(engine):
    ctx = hearth_run.Context(engine.url)
    ctx.step("s", lambda: 1, retry={"max_attempts": 1})
    assert engine.requests[1][2]["retry"] == {"max_attempts": 1}


def test_nested_journaled_call_in_a_step_is_refused(engine):
    ctx = hearth_run.Context(engine.url)
    with pytest.raises(hearth_run.StepFailed) as e:
        ctx.step("outer", lambda: ctx.now())
    assert e.value.error["class"] == "RuntimeError"
    assert "journaled calls cannot be nested in a step" in e.value.error["message"]


# -- stopping --------------------------------------------------------------


def test_non_determinism_stops_the_run_past_except_exception(engine):
    ctx = hearth_run.Context(engine.url)
    ctx.step("a", lambda: 1)
    again = engine.relaunch()
    caught = []
    with pytest.raises(hearth_run.RunStopped) as e:
        try:
            again.step("b", lambda: 2)  # the journal has "a" at seq 0
        except Exception as exc:  # must not catch it
            caught.append(exc)
    assert caught == []
    assert e.value.reason == "non_determinism"
    assert not isinstance(e.value, Exception)
    # Every later call raises it again without asking the engine.
    n = len(engine.requests)
    with pytest.raises(hearth_run.RunStopped):
        again.now()
    assert len(engine.requests) == n


def test_engine_unavailable_is_a_stop(engine):
    ctx = hearth_run.Context(engine.url)
    engine.close()
    ctx._endpoint.close()  # the kept-alive connection would outlive the server
    with pytest.raises(hearth_run.RunStopped) as e:
        ctx.now()
    assert e.value.reason == "engine_unavailable"
    assert "cannot reach the run endpoint at " + engine.url in e.value.message


def test_a_connection_closed_while_idle_is_reopened(engine):
    engine.drop_connections = True
    ctx = hearth_run.Context(engine.url)
    assert [ctx.now(), ctx.random(), ctx.now()] == [NOW, RANDOM, NOW]
    assert [b["seq"] for _, b in engine.posts()] == [0, 1, 2]
    assert engine.connections == 4


def test_502_is_a_stop():
    class Down(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = json.dumps(error("engine_unavailable", "server restarting")).encode()
            self.send_response(502)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        with pytest.raises(hearth_run.RunStopped) as e:
            hearth_run.Context(f"http://127.0.0.1:{server.server_address[1]}/v1/runs/{RUN}")
        assert (e.value.reason, e.value.message) == ("engine_unavailable", "server restarting")
    finally:
        server.shutdown()
        server.server_close()


def test_errors_carry_code_message_and_field(engine):
    ctx = hearth_run.Context(engine.url)
    with pytest.raises(hearth_run.HearthRunError) as e:
        ctx.tool("nope")
    assert (e.value.code, e.value.status) == ("not_found", 404)
    assert "no tool nope" in e.value.message
    # The refused call recorded nothing: the next call takes its seq.
    assert ctx.seq == 0
    ctx.now()
    assert ctx.seq == 1
    ctx._seq = 5  # a client bug: a gap
    with pytest.raises(hearth_run.HearthRunError) as e:
        ctx.now()
    assert e.value.code == "out_of_order"


def test_main_completes_with_the_return_value(engine):
    assert hearth_run.main(lambda ctx: {"n": ctx.input["n"] * 2}) == {"n": 6}
    assert engine.completed and engine.output == {"n": 6}
    ctx = hearth_run.context()
    assert ctx.completed
    with pytest.raises(RuntimeError, match=r"ctx.now\(\) after ctx.complete\(\)"):
        ctx.now()


def test_main_does_not_complete_twice(engine):
    def prog(ctx):
        ctx.complete("mine")
        return "ignored"

    hearth_run.main(prog)
    assert engine.output == "mine"
    assert [p for p, _ in engine.posts()] == ["/complete"]


def test_main_exits_75_when_the_run_stops(engine, capsys):
    with pytest.raises(SystemExit) as e:
        hearth_run.main(lambda ctx: ctx.sleep(3600))
    assert e.value.code == hearth_run.EXIT_RUN_STOPPED == 75
    assert capsys.readouterr().err == "hearth_run: run stopped (waiting): the run is waiting\n"
    assert not engine.completed


def test_program_process_exits_75(engine, tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import hearth_run\n"
        "def program(ctx):\n"
        "    try:\n"
        "        ctx.sleep(3600)\n"
        "    except Exception:\n"
        "        print('swallowed')\n"
        "hearth_run.main(program)\n"
    )
    env = dict(os.environ, HEARTH_RUN_URL=engine.url, PYTHONPATH=str(HERE.parent))
    p = subprocess.run([sys.executable, str(prog)], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 75
    assert p.stdout == ""
    assert p.stderr.strip().splitlines() == ["hearth_run: run stopped (waiting): the run is waiting"]


# -- tools, values, signals, children, artifacts ----------------------------


def test_tool_success_and_failure(engine):
    engine.tools["http"] = lambda args: {"status": "succeeded", "result": {"status": 200, "body": "hi"}}
    engine.tools["pay"] = lambda args: {
        "status": "failed",
        "error": {"class": "http_503", "message": "unavailable", "retryable": True},
    }
    ctx = hearth_run.Context(engine.url)
    assert ctx.tool("http", method="GET", url="https://example.com") == {"status": 200, "body": "hi"}
    with pytest.raises(hearth_run.ToolFailed) as e:
        ctx.tool("pay", amount=500, to="acct-7")
    assert isinstance(e.value, hearth_run.StepFailed)
    assert e.value.error == {"class": "http_503", "message": "unavailable", "retryable": True}
    assert engine.posts() == [
        ("/tools/http", {"seq": 0, "args": {"method": "GET", "url": "https://example.com"}}),
        ("/tools/pay", {"seq": 1, "args": {"amount": 500, "to": "acct-7"}}),
    ]


def test_now_random_and_sleep_pass_values_through(engine):
    ctx = hearth_run.Context(engine.url)
    assert ctx.now() == NOW
    assert ctx.random() == RANDOM
    assert ctx.sleep(0.5) is None
    assert engine.posts() == [
        ("/values", {"seq": 0, "kind": "now"}),
        ("/values", {"seq": 1, "kind": "random"}),
        ("/sleep", {"seq": 2, "seconds": 0.5}),
    ]
    with pytest.raises(ValueError):
        ctx.sleep(-1)


def test_signal_received_and_timed_out(engine):
    engine.signals["approve"] = {"by": "ana"}
    ctx = hearth_run.Context(engine.url)
    assert ctx.wait_signal("approve") == {"by": "ana"}
    with pytest.raises(hearth_run.SignalTimeout) as e:
        ctx.wait_signal("reject", timeout=30)
    assert (e.value.name, e.value.timeout) == ("reject", 30)
    assert engine.posts() == [
        ("/signals/approve", {"seq": 0, "timeout": None}),
        ("/signals/reject", {"seq": 1, "timeout": 30}),
    ]


def test_spawn_and_result(engine):
    ctx = hearth_run.Context(engine.url)
    child = ctx.spawn("worker.py", input={"part": 1}, name="w1")
    assert child.id == "run-child-0"
    with pytest.raises(hearth_run.RunStopped) as e:
        child.result()  # still running: the parent waits without a VM
    assert e.value.reason == "waiting"

    engine.children["run-child-0"] = {"status": "succeeded", "result": [1, 2]}
    again = engine.relaunch()
    child = again.spawn("worker.py", input={"part": 1}, name="w1")
    assert child.id == "run-child-0"
    assert child.result() == [1, 2]
    other = again.spawn("worker.py", on_failure="value")
    engine.children[other.id] = {
        "status": "failed",
        "error": {"class": "Crash", "message": "exit 1", "retryable": False},
    }
    with pytest.raises(hearth_run.ChildFailed) as e:
        other.result()
    assert e.value.error["class"] == "Crash"
    assert engine.posts() == [
        ("/children", {"seq": 0, "program": "worker.py", "input": {"part": 1}, "name": "w1", "on_failure": "raise"}),
        ("/children/run-child-0/result", {"seq": 1}),
        ("/children", {"seq": 2, "program": "worker.py", "input": None, "name": None, "on_failure": "value"}),
        ("/children/run-child-2/result", {"seq": 3}),
    ]


def test_persist_and_restore(engine, tmp_path):
    ctx = hearth_run.Context(engine.url)
    assert ctx.restore("/work/model.bin") is False
    assert ctx.persist(Path("/work/model.bin")) == {"digest": "sha256:" + "cd" * 32, "size": 123}
    assert ctx.restore("/work/model.bin") is True
    assert engine.posts() == [
        ("/restore", {"seq": 0, "path": "/work/model.bin"}),
        ("/persist", {"seq": 1, "path": "/work/model.bin"}),
        ("/restore", {"seq": 2, "path": "/work/model.bin"}),
    ]


def test_seq_is_one_counter_across_every_kind_of_call(engine):
    engine.tools["echo"] = lambda args: {"status": "succeeded", "result": args}
    engine.signals["go"] = True
    engine.children["run-child-6"] = {"status": "succeeded", "result": None}

    def program(ctx):
        out = [ctx.step("a", lambda: 1), ctx.tool("echo", x=1), ctx.now(), ctx.random()]
        ctx.sleep(0)
        out.append(ctx.wait_signal("go", timeout=5))
        out.append(ctx.spawn("w.py").result())
        ctx.persist("/f")
        out.append(ctx.restore("/f"))
        return out

    first = program(hearth_run.Context(engine.url))
    seqs = [b["seq"] for p, b in engine.posts() if "seq" in b]
    assert seqs == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    again = engine.relaunch()
    assert again.journal_length == 10
    assert program(again) == first == [1, {"x": 1}, NOW, RANDOM, True, None, True]
    again.complete(first)
    assert [b.get("seq") for _, b in engine.posts()] == list(range(10)) + [None]
    assert engine.output == first


def test_threads_do_not_interleave_seq(engine):
    ctx = hearth_run.Context(engine.url)
    threads = [threading.Thread(target=lambda: [ctx.now() for _ in range(10)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(b["seq"] for _, b in engine.posts()) == list(range(40))
    assert ctx.seq == 40


def test_one_connection_is_reused(engine):
    ctx = hearth_run.Context(engine.url)
    first = ctx._endpoint._conn.sock.getsockname()
    ctx.now()
    ctx.random()
    assert ctx._endpoint._conn.sock.getsockname() == first
    assert engine.connections == 1
