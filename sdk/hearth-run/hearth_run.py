"""Durable programs for Hearth runs.

A Hearth *run* is a program executing inside a microVM whose every side
effect is journaled by the host engine. When the VM is lost, or released
while the run waits, the program is started again from the top and every
journaled call it already made is answered from the journal instead of being
repeated. This module is the Python client of that protocol (the run
endpoint, ``docs/run-endpoint.md``); it uses the standard library only.

Example::

    import hearth_run

    def fetch(url):
        ...                                  # any side effect; runs once

    def program(ctx):
        page = ctx.step("fetch", fetch, ctx.input["url"])
        ctx.sleep(3600)                      # the VM is released meanwhile
        return {"length": len(page)}         # becomes the run's output

    hearth_run.main(program)

The program must make the same journaled calls in the same order on every
launch; anything nondeterministic (time, randomness, I/O) goes through
``ctx.step``, ``ctx.now`` or ``ctx.random``.
"""

import hashlib
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

__all__ = [
    "Context",
    "Child",
    "context",
    "main",
    "HearthRunError",
    "RunStopped",
    "StepFailed",
    "ToolFailed",
    "ChildFailed",
    "SignalTimeout",
    "NonRetryable",
    "EXIT_RUN_STOPPED",
]

#: Exit status of :func:`main` when the engine stopped the launch (EX_TEMPFAIL).
EXIT_RUN_STOPPED = 75

_EFFECTS = ("pure", "idempotent", "unsafe")


def idempotency_key(run_id, seq):
    """The idempotency key of step ``seq`` of run ``run_id``: the same on
    every attempt and every launch (``docs/run-endpoint.md``)."""
    digest = hashlib.sha256(f"hearth-step\0{run_id}\0{seq}".encode()).hexdigest()
    return "hk_" + digest[:40]
_ON_FAILURE = ("raise", "value")


# --------------------------------------------------------------------------
# Errors


class HearthRunError(Exception):
    """The engine refused a call (a non-2xx answer other than ``run_stopped``).

    ``code`` is the protocol's error code (``invalid_argument``,
    ``out_of_order``, ``other_run``, ``not_found``, ``too_large``, ...),
    ``message`` says what was wrong, ``field`` names the field at fault when
    one is, and ``status`` is the HTTP status.
    """

    def __init__(self, code, message, field=None, status=None):
        self.code = code
        self.message = message
        self.field = field
        self.status = status
        text = f"{code}: {message}"
        if field:
            text += f" (field {field})"
        super().__init__(text)


class RunStopped(BaseException):
    """The engine stopped this launch; the program must end now.

    ``reason`` is one of ``waiting``, ``needs_attention``, ``cancelled``,
    ``failed``, ``non_determinism``, ``fenced`` or ``engine_unavailable``.
    It derives from ``BaseException`` so that ``except Exception`` in the
    program does not swallow it. Nothing the program does after it has any
    effect: the VM is about to be discarded, and the run continues (or
    ends) as the engine decided. Every later journaled call raises it again.
    """

    def __init__(self, reason, message):
        self.reason = reason
        self.message = message
        super().__init__(f"run stopped ({reason}): {message}")


class StepFailed(Exception):
    """A journaled call's outcome is a failure.

    ``name`` is the step's (or tool's, or child's) name and ``error`` the
    recorded error, a dict with ``class``, ``message`` and ``retryable``.
    The same exception is raised when the failure is replayed, so a program
    behaves the same way on every launch.
    """

    def __init__(self, name, error):
        self.name = name
        self.error = dict(error or {})
        cls = self.error.get("class", "error")
        msg = self.error.get("message", "")
        super().__init__(f"{self._what} {name!r} failed: {cls}: {msg}")

    _what = "step"


class ToolFailed(StepFailed):
    """A host-side tool call (``ctx.tool``) ended with a failed outcome."""

    _what = "tool"


class ChildFailed(StepFailed):
    """A child run (``ctx.spawn(...).result()``) ended with a failed outcome."""

    _what = "child run"


class SignalTimeout(Exception):
    """``ctx.wait_signal`` timed out before the signal came."""

    def __init__(self, name, timeout):
        self.name = name
        self.timeout = timeout
        super().__init__(f"signal {name!r} did not come within {timeout} s")


class NonRetryable(Exception):
    """Raise this (or a subclass) from a step to fail it without retries.

    Any other exception raised by a step's function is reported as
    retryable, and the engine retries it by its policy.
    """


# --------------------------------------------------------------------------
# HTTP


class _Endpoint:
    """One persistent HTTP/1.1 connection to the run endpoint."""

    def __init__(self, url):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"HEARTH_RUN_URL must be an http:// URL, got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base = parts.path.rstrip("/")
        self._conn = None
        self._used = False
        self._lock = threading.Lock()

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._used = False

    def call(self, method, path, body=None):
        """Sends a request and returns the decoded JSON answer (2xx only)."""
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        with self._lock:
            status, raw = self._send(method, self.base + path, data, headers)
        return _decode(status, raw)

    def _send(self, method, target, data, headers):
        # An idle keep-alive connection may have been closed by the other
        # side; that shows up as an error on the next request. Retry once
        # on a fresh connection then, but never when the fresh one fails.
        for _ in range(2):
            reused = self._conn is not None and self._used
            if self._conn is None:
                # No timeout: the engine may hold a request for minutes.
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=None)
                self._used = False
            try:
                self._conn.request(method, target, body=data, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if reused and isinstance(
                    exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                ):
                    continue
                raise RunStopped(
                    "engine_unavailable",
                    f"cannot reach the run endpoint at {self.url}: {exc}",
                ) from None
            self._used = True
            if resp.will_close:
                self.close()
            return resp.status, raw
        raise AssertionError("unreachable")


def _decode(status, raw):
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    if 200 <= status < 300:
        if not isinstance(doc, dict):
            raise HearthRunError(
                "bad_answer", f"the engine answered {status} without a JSON object", status=status
            )
        return doc
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        text = raw.decode("utf-8", "replace").strip()[:500]
        err = {"code": f"http_{status}", "message": text or f"HTTP status {status}"}
    code = err.get("code", f"http_{status}")
    message = err.get("message", "")
    if status == 409 and code == "run_stopped":
        raise RunStopped(err.get("reason", "unknown"), message)
    if status == 502 or code == "engine_unavailable":
        raise RunStopped("engine_unavailable", message)
    raise HearthRunError(code, message, err.get("field"), status)


def _quote(segment):
    return urllib.parse.quote(str(segment), safe="")


def _json_check(value, what):
    """Raises a TypeError naming ``what`` when ``value`` is not plain JSON."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serializable: {exc}") from None


# --------------------------------------------------------------------------
# The context


class Context:
    """A run's connection to the engine: its identity and its journaled calls.

    Get it with :func:`context` (one per process). Attributes from the
    engine: ``run_id``, ``name``, ``input`` (the run's input, any JSON),
    ``launch`` (1 for the first VM, counting relaunches),
    ``program_digest`` and ``journal_length`` (calls recorded before this
    launch started).

    Journaled calls are numbered in the order the program makes them; they
    are made one at a time (a lock serializes threads).
    """

    def __init__(self, url=None):
        """Connects to the run endpoint at ``url`` (default ``$HEARTH_RUN_URL``)."""
        if url is None:
            url = os.environ.get("HEARTH_RUN_URL")
        if not url:
            raise RuntimeError(
                "hearth_run.context() is only available inside a Hearth run: "
                "HEARTH_RUN_URL is not set"
            )
        self._endpoint = _Endpoint(url)
        self._lock = threading.RLock()
        self._seq = 0
        self._completed = False
        self._stopped = None
        self._step_name = None
        self._step_thread = None
        self._key = None
        info = self._call("GET", "/")
        self.run_id = info.get("run_id")
        self.name = info.get("name")
        self.input = info.get("input")
        self.launch = info.get("launch")
        self.program_digest = info.get("program_digest")
        self.journal_length = info.get("journal_length", 0)

    def __repr__(self):
        return f"<hearth_run.Context run_id={self.run_id!r} launch={self.launch} seq={self._seq}>"

    # -- state -------------------------------------------------------------

    @property
    def seq(self):
        """The sequence number the next journaled call will carry."""
        return self._seq

    @property
    def replaying(self):
        """True while the next journaled call will be answered from the journal."""
        return self._seq < (self.journal_length or 0)

    @property
    def completed(self):
        """True once :meth:`complete` succeeded."""
        return self._completed

    @property
    def idempotency_key(self):
        """The running step's idempotency key, or None outside a step.

        The key is the same for every attempt of the step on every launch:
        pass it to an external API to make the step safe to repeat.
        """
        return self._key

    # -- plumbing ----------------------------------------------------------

    def _call(self, method, path, body=None):
        try:
            return self._endpoint.call(method, path, body)
        except RunStopped as exc:
            self._stopped = exc
            raise

    def _begin(self, what):
        """Checks that a journaled call may be made now; returns its seq.

        Must be called with the lock held.
        """
        if self._stopped is not None:
            raise RunStopped(self._stopped.reason, self._stopped.message)
        if self._completed:
            raise RuntimeError(
                f"ctx.{what}() after ctx.complete(): the run is completed, "
                "no journaled call may follow"
            )
        if self._step_name is not None and self._step_thread == threading.get_ident():
            raise RuntimeError(
                f"ctx.{what}() inside step {self._step_name!r}: journaled calls cannot "
                "be nested in a step (on replay the step's function is not called, so "
                "they would not be made and the journal would no longer match)"
            )
        seq = self._seq
        self._seq += 1
        return seq

    def _journaled(self, what, path, body):
        with self._lock:
            seq = self._begin(what)
            try:
                return self._call("POST", path, dict(body, seq=seq))
            except HearthRunError as exc:
                # A refused call recorded nothing: its seq is the next
                # call's. (A step_failed answer is recorded at seq.)
                if exc.code != "step_failed":
                    self._seq = seq
                raise

    @staticmethod
    def _outcome(outcome, name, failure):
        if not isinstance(outcome, dict):
            raise HearthRunError("bad_answer", f"no outcome in the answer for {name!r}")
        if outcome.get("status") == "succeeded":
            return outcome.get("result")
        raise failure(name, outcome.get("error"))

    # -- steps -------------------------------------------------------------

    def step(self, name, fn, /, *args, effect="idempotent", retry=None):
        """Runs ``fn(*args)`` as a journaled step and returns its result.

        If the step is already recorded, its recorded result comes back (or
        :class:`StepFailed` is raised for a recorded failure) and ``fn`` is
        not called. Otherwise ``fn(*args)`` runs, with
        :attr:`idempotency_key` set, and its result (which must be
        JSON-serializable) or its exception is reported. An exception is
        reported as retryable unless it is a :class:`NonRetryable`; while
        the engine retries, this call waits and runs ``fn`` again. When the
        step fails for good, :class:`StepFailed` is raised (chained to the
        last exception), exactly as a replay of that failure would.

        ``args`` are sent to the engine as a list and identify the call on
        replay. ``effect`` is ``"pure"``, ``"idempotent"`` (the default) or
        ``"unsafe"``. ``retry``, if given, is a dict sent as the step's
        retry policy (the engine's fields: ``max_attempts``,
        ``initial_backoff_ms``, ``max_backoff_ms``, ``multiplier``,
        ``jitter``, ``non_retryable``).

        The returned value is the one the engine recorded, i.e. the JSON
        form of what ``fn`` returned (tuples become lists, and so on), so
        that it is the same on replay.

        ``fn`` must not make journaled calls itself (a replayed step's
        ``fn`` is not called, so they would shift every later ``seq``);
        doing so raises ``RuntimeError``. Journaled calls from other
        threads wait until the step has ended.
        """
        if effect not in _EFFECTS:
            raise ValueError(f"effect must be one of {', '.join(_EFFECTS)}, got {effect!r}")
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be callable, got {type(fn).__name__}")
        request = {"name": name, "args": list(args), "effect": effect}
        if retry is not None:
            request["retry"] = retry
        _json_check(request["args"], f"the arguments of step {name!r}")
        _json_check(retry, f"the retry policy of step {name!r}")
        with self._lock:
            seq = self._begin("step")
            request = dict(seq=seq, **request)
            answer, exc = None, None
            if effect != "unsafe" and seq >= (self.journal_length or 0):
                # Past the journal's end a step that may be repeated runs
                # first and is recorded with the ask: one call, not two.
                first = {"attempt": 1, "idempotency_key": idempotency_key(self.run_id, seq)}
                report, exc = self._attempt(name, fn, args, first)
                answer = self._call("POST", "/steps", dict(request, **report))
            while True:
                if answer is None:
                    answer, exc = self._call("POST", "/steps", request), None
                action = answer.get("action")
                if action == "replay":
                    return self._outcome(answer.get("outcome"), name, StepFailed)
                if action == "wait":
                    time.sleep(max(0, answer.get("wait_ms", 0)) / 1000)
                    answer = None
                    continue
                if action == "execute":
                    report, exc = self._attempt(name, fn, args, answer)
                    answer = self._call("POST", f"/steps/{seq}/result", report)
                    action = answer.get("action")
                if action == "retry":
                    time.sleep(max(0, answer.get("wait_ms", 0)) / 1000)
                    answer = None
                    continue
                if action != "done":
                    raise HearthRunError("bad_answer", f"unknown action {action!r} for step {name!r}")
                try:
                    return self._outcome(answer.get("outcome"), name, StepFailed)
                except StepFailed as failed:
                    raise failed from exc

    def _attempt(self, name, fn, args, answer):
        """Calls fn once; returns the report to send and the exception, if any."""
        attempt = answer.get("attempt", 1)
        self._step_name, self._step_thread = name, threading.get_ident()
        self._key = answer.get("idempotency_key")
        try:
            result = fn(*args)
        except Exception as exc:
            error = {
                "class": type(exc).__name__,
                "message": str(exc),
                "retryable": not isinstance(exc, NonRetryable),
            }
            return {"attempt": attempt, "error": error}, exc
        finally:
            self._step_name = self._step_thread = self._key = None
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"step {name!r} returned a value that is not JSON-serializable "
                f"({type(result).__name__}): {exc}"
            ) from None
        return {"attempt": attempt, "result": result}, None

    def tool(self, name, /, **args):
        """Calls the host-side tool ``name`` with keyword arguments ``args``.

        The engine checks the arguments, journals the call, runs it (with
        retries by the tool's policy) and answers with its outcome. Returns
        the tool's result, or raises :class:`ToolFailed` whose ``error``
        holds the failure. For the built-in ``http`` tool::

            r = ctx.tool("http", method="GET", url="https://example.com")
            r["status"], r["body"]
        """
        _json_check(args, f"the arguments of tool {name!r}")
        answer = self._journaled("tool", f"/tools/{_quote(name)}", {"args": args})
        return self._outcome(answer.get("outcome"), name, ToolFailed)

    # -- values, time and signals -----------------------------------------

    def now(self):
        """The current time in seconds since the epoch, recorded (same on replay)."""
        return float(self._journaled("now", "/values", {"kind": "now"})["value"])

    def random(self):
        """A random float in [0, 1), recorded (same on replay)."""
        return float(self._journaled("random", "/values", {"kind": "random"})["value"])

    def sleep(self, seconds):
        """Sleeps durably for ``seconds``.

        A long sleep releases the VM: this call then raises
        :class:`RunStopped` (reason ``waiting``), and the program is started
        again when the timer fires, returning from this call at once.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"seconds must be a non-negative number, got {seconds!r}")
        self._journaled("sleep", "/sleep", {"seconds": seconds})

    def wait_signal(self, name, timeout=None):
        """Waits for the signal ``name`` and returns its data.

        ``timeout`` is in seconds (None: no limit). Raises
        :class:`SignalTimeout` when it passes first. While it waits the run
        holds no VM (see :meth:`sleep`). Send a signal with
        ``hearth run signal RUN_ID NAME --data JSON``.
        """
        answer = self._journaled(
            "wait_signal", f"/signals/{_quote(name)}", {"timeout": timeout}
        )
        if answer.get("received"):
            return answer.get("data")
        raise SignalTimeout(name, timeout)

    # -- children ----------------------------------------------------------

    def spawn(self, program, input=None, name=None, on_failure="raise"):
        """Starts a child run of ``program`` (a path inside this run's program).

        Returns a :class:`Child`; on replay the same child comes back and
        no second one starts. ``on_failure`` is ``"raise"`` or ``"value"``
        (see the protocol).
        """
        if on_failure not in _ON_FAILURE:
            raise ValueError(f"on_failure must be 'raise' or 'value', got {on_failure!r}")
        _json_check(input, f"the input of child {program!r}")
        body = {"program": program, "input": input, "name": name, "on_failure": on_failure}
        answer = self._journaled("spawn", "/children", body)
        return Child(self, answer["child_id"], name or program)

    # -- artifacts ---------------------------------------------------------

    def persist(self, path):
        """Copies the file at ``path`` into the run's blob store.

        It is put back in place before every relaunch. Returns
        ``{"digest": "sha256:...", "size": N}``.
        """
        answer = self._journaled("persist", "/persist", {"path": os.fspath(path)})
        return {"digest": answer.get("digest"), "size": answer.get("size")}

    def restore(self, path):
        """Writes the latest persisted version of ``path`` back; False if there is none."""
        answer = self._journaled("restore", "/restore", {"path": os.fspath(path)})
        return bool(answer.get("restored"))

    # -- the end -----------------------------------------------------------

    def complete(self, output=None):
        """Completes the run with ``output`` (any JSON); exit 0 right after.

        No journaled call may follow.
        """
        _json_check(output, "the run's output")
        with self._lock:
            if self._completed:
                raise RuntimeError("ctx.complete() was already called")
            if self._stopped is not None:
                raise RunStopped(self._stopped.reason, self._stopped.message)
            self._call("POST", "/complete", {"output": output})
            self._completed = True
            self._endpoint.close()


class Child:
    """A child run started by :meth:`Context.spawn`: its ``id`` and its result."""

    def __init__(self, ctx, child_id, name):
        self._ctx = ctx
        self.id = child_id
        self.name = name

    def __repr__(self):
        return f"<hearth_run.Child id={self.id!r}>"

    def outcome(self):
        """Waits for the child to end and returns its outcome dict (journaled).

        ``{"status": "succeeded", "result": ...}`` or
        ``{"status": "failed", "error": {...}}``. While the child runs, the
        parent holds no VM (:class:`RunStopped`, reason ``waiting``) and is
        started again when the child ends.
        """
        answer = self._ctx._journaled("result", f"/children/{_quote(self.id)}/result", {})
        return answer.get("outcome")

    def result(self):
        """Waits for the child and returns its result; raises :class:`ChildFailed`."""
        return Context._outcome(self.outcome(), self.name, ChildFailed)


# --------------------------------------------------------------------------
# Entry points

_context = None
_context_lock = threading.Lock()


def context():
    """Returns this process's :class:`Context` (made on first use from $HEARTH_RUN_URL)."""
    global _context
    with _context_lock:
        if _context is None:
            _context = Context()
        return _context


def _reset():
    """Forgets the process's context (for tests)."""
    global _context
    with _context_lock:
        _context = None


def main(fn):
    """Runs ``fn(ctx)`` as the run's program, then completes the run.

    The value ``fn`` returns becomes the run's output, unless ``fn`` called
    ``ctx.complete`` itself. When the engine stops the launch
    (:class:`RunStopped`), prints one line to stderr and exits with status
    75 (EX_TEMPFAIL); the engine relaunches or ends the run as it decided.
    Any other exception propagates (a nonzero exit: the run is relaunched up
    to its ``max_restarts``). Returns what ``fn`` returned.
    """
    try:
        ctx = context()
        value = fn(ctx)
        if not ctx.completed:
            ctx.complete(value)
        return value
    except RunStopped as stopped:
        try:
            sys.stdout.flush()
        except Exception:
            pass
        line = " ".join(str(stopped).split())
        print(f"hearth_run: {line}", file=sys.stderr, flush=True)
        sys.exit(EXIT_RUN_STOPPED)
