"""The client (and the guest-loopback servers) of `hearth-bench-net`: the
same code runs in the guest and on the host. Prints one JSON line."""
import json, os, socket, sys, time

for key in list(os.environ):
    if key.lower().endswith("_proxy"):
        del os.environ[key]
TIMEOUT = 60.0
# A connection's set-up (and first byte) may take this long before it
# counts as failed (the figures then say how many did).
SETUP_TIMEOUT = 10.0
clock = time.perf_counter


def open_conn(host, port, proxy, timeout=TIMEOUT):
    """A connected socket to host:port (through the proxy's CONNECT when
    proxy is "addr:port"), and any bytes read past the proxy's answer."""
    if proxy:
        phost, pport = proxy.rsplit(":", 1)
        s = socket.create_connection((phost, int(pport)), timeout=timeout)
        s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError(f"proxy closed: {head!r}")
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        if b" 200" not in status.split(b"\r\n", 1)[0]:
            raise OSError(f"proxy said {status[:200]!r}")
        return s, rest
    s = socket.create_connection((host, port), timeout=timeout)
    return s, b""


def get(host, port, size, proxy):
    """Download size bytes; seconds from connect to the last byte."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    start = clock()
    s, head = open_conn(host, port, proxy)
    s.sendall(f"GET /{size} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    while b"\r\n\r\n" not in head:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed before the head")
        head += chunk
    got = len(head.partition(b"\r\n\r\n")[2])
    while got < size:
        n = s.recv_into(view)
        if n == 0:
            break
        got += n
    seconds = clock() - start
    s.close()
    return {"bytes": got, "seconds": seconds}


def lat(host, port, count, proxy):
    """count sequential connections: ms to set-up (connect() returned, or
    the proxy's 200) and to the server's first byte."""
    setup, first = [], []
    if not proxy:
        # Resolve once: the figure is the connection's set-up, not the
        # DNS stub's (the `dns` mode times that).
        host = socket.gethostbyname(host)
    errors, in_a_row = [], 0
    for _ in range(count):
        start = clock()
        try:
            s, rest = open_conn(host, port, proxy, SETUP_TIMEOUT)
            ready = clock()
            if not rest:
                rest = s.recv(1)
            done = clock()
            s.close()
            if not rest:
                raise OSError("closed before the first byte")
        except OSError as e:
            errors.append(f"{type(e).__name__}: {e} after {clock() - start:.1f} s")
            in_a_row += 1
            if in_a_row == 5:
                errors.append("gave up after 5 failures in a row")
                break
            continue
        in_a_row = 0
        setup.append((ready - start) * 1000)
        first.append((done - start) * 1000)
    return {"setup_ms": setup, "first_ms": first, "errors": errors}


def dns(name, count):
    out = []
    for _ in range(count):
        start = clock()
        socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        out.append((clock() - start) * 1000)
    return {"ms": out, "addr": socket.gethostbyname(name)}


def hold(host, port, count, proxy):
    """Open count connections, each until its first byte; say so; hold
    them until stdin closes."""
    held, errors = [], []
    start = clock()
    for _ in range(count):
        try:
            s, rest = open_conn(host, port, proxy, SETUP_TIMEOUT)
            if not rest and not s.recv(1):
                raise OSError("closed before the first byte")
            held.append(s)
        except OSError as e:
            errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({"held": len(held), "seconds": clock() - start, "errors": errors}), flush=True)
    sys.stdin.read()
    for s in held:
        s.close()
    print(json.dumps({"closed": len(held)}), flush=True)


def serve(bulk, tiny):
    """Guest loopback servers: bulk answers GET /N with N bytes; tiny
    sends one byte at once."""
    import threading
    chunk = bytes(1 << 20)

    def bulk_loop():
        while True:
            c, _ = bulk.accept()
            head = b""
            while b"\r\n\r\n" not in head:
                data = c.recv(4096)
                if not data:
                    break
                head += data
            size = int(head.split(b" ", 2)[1][1:])
            c.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            left = size
            while left > 0:
                n = min(left, len(chunk))
                c.sendall(chunk[:n] if n < len(chunk) else chunk)
                left -= n
            c.close()

    def tiny_loop():
        while True:
            c, _ = tiny.accept()
            c.sendall(b"x")
            c.close()

    threading.Thread(target=bulk_loop, daemon=True).start()
    tiny_loop()


def local(size, count):
    """Both servers in a child process on the guest's own 127.0.0.1, and
    the same client code against them."""
    bulk = socket.create_server(("127.0.0.1", 0))
    tiny = socket.create_server(("127.0.0.1", 0), backlog=128)
    child = os.fork()
    if child == 0:
        try:
            serve(bulk, tiny)
        finally:
            os._exit(0)
    bulk_port, tiny_port = bulk.getsockname()[1], tiny.getsockname()[1]
    bulk.close()
    tiny.close()
    try:
        return {
            "get": get("127.0.0.1", bulk_port, size, None),
            "lat": lat("127.0.0.1", tiny_port, count, None),
        }
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def clock_info():
    """The kernel's clocksource and the smallest step perf_counter takes."""
    base = "/sys/devices/system/clocksource/clocksource0/"
    info = {}
    for name in ("current_clocksource", "available_clocksource"):
        try:
            with open(base + name) as f:
                info[name] = f.read().strip()
        except OSError:
            info[name] = "?"
    steps = []
    for _ in range(5):
        a = clock()
        while (b := clock()) == a:
            pass
        while (c := clock()) == b:
            pass
        steps.append(c - b)
    info["step_ms"] = min(steps) * 1000
    return info


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    proxy = os.environ.get("BENCH_PROXY_ADDR") or None
    if mode == "get":
        out = [get(args[0], int(args[1]), int(args[2]), proxy) for _ in range(int(args[3]))]
    elif mode == "lat":
        out = lat(args[0], int(args[1]), int(args[2]), proxy)
    elif mode == "dns":
        out = dns(args[0], int(args[1]))
    elif mode == "hold":
        return hold(args[0], int(args[1]), int(args[2]), proxy)
    elif mode == "local":
        out = [local(int(args[0]), int(args[1])) for _ in range(int(args[2]))]
    elif mode == "clock":
        out = clock_info()
    elif mode == "rss":
        with open("/proc/1/status") as f:
            out = {l.split(":")[0]: l.split(":")[1].strip() for l in f if l.startswith(("VmRSS", "Name"))}
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


main()
