"""The services' gunicorn worker (`web.worker.BufferedThreadWorker`) under real gunicorn, serving
the tiny app of tests/worker_app.py with one worker of two threads (tests/worker_gunicorn.conf.py).

Clients speak raw HTTP/1.1 over sockets, so that they can be slow, malformed or pipelined on
purpose. `TEST_WORKER_CLASS=gthread` runs the same tests against gunicorn's own threaded worker.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from dc.nlp.validation import max_body_bytes
from tests.conftest import run_gunicorn

pytestmark = pytest.mark.slow

CONFIG = "tests/worker_gunicorn.conf.py"
READ_TIMEOUT_S = 1.0
MAX_WAIT_MS = 300
RETRY_AFTER_S = 2
# The body limit both the worker and the tiny app take from these settings (about 16 KB).
LIMITS = {"DC_MAX_TEXTS_PER_REQUEST": "1", "DC_MAX_TEXT_CHARS": "1000"}
BODY_LIMIT = max_body_bytes(1, 1000)
ENV = {
    "DC_REQUEST_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
    "DC_MAX_QUEUE_WAIT_MS": str(MAX_WAIT_MS),
    "DC_RETRY_AFTER_S": str(RETRY_AFTER_S),
    **LIMITS,
}
ENVELOPE_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def port():
    with run_gunicorn(CONFIG, ENV, port_env="DC_API_PORT") as (url, _):
        yield int(url.rsplit(":", 1)[1])


# --- a raw HTTP/1.1 client ----------------------------------------------------------------------


class Answer:
    """One parsed HTTP response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, elapsed: float):
        self.status, self.headers, self.body, self.elapsed = status, headers, body, elapsed

    def envelope(self) -> dict:
        assert self.headers["content-type"] == "application/json", self.headers
        assert self.headers["connection"] == "close"
        assert b"<html" not in self.body.lower()
        error = json.loads(self.body)["error"]
        assert error["status"] == self.status
        assert ENVELOPE_ID.match(error["request_id"])
        return error


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    """Reads successive responses from one connection (keep-alive, pipelining)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self, started: float | None = None, to_head: bool = False) -> Answer | None:
        """The next response (`to_head`: to a HEAD request, so without a body), or None when
        the server closed the connection first."""
        started = time.monotonic() if started is None else started
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if to_head or status == 100 else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self._fill():
                break
        body, self.buf = self.buf[:length], self.buf[length:]
        return Answer(status, headers, body, time.monotonic() - started)

    def closed(self) -> bool:
        """True when the server closes the connection (having sent nothing more)."""
        try:
            return not self._fill() and not self.buf
        except ConnectionResetError:
            return True


def exchange(port: int, data: bytes, timeout: float = 10.0) -> Answer | None:
    """Send `data` on a new connection; the first response (None if closed without one)."""
    with connect(port, timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        return Reader(sock).response(started, to_head=data.startswith(b"HEAD "))


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def chunked(pieces: list[bytes], extension: bytes = b"", trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in pieces)
    return body + b"0\r\n" + trailers + b"\r\n"


CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


# --- buffering ----------------------------------------------------------------------------------


def test_slow_clients_do_not_hold_request_threads(port):
    """Twenty clients trickling headers or bodies (ten times the threads) do not delay a normal
    client; each slow request, once complete, is answered whole."""
    body = b"x" * 3000
    slow = [post("/echo", body) for _ in range(10)] + [get(f"/n{i}") for i in range(10)]
    sockets = [connect(port) for _ in slow]
    try:
        for sock, data in zip(sockets, slow, strict=True):
            sock.sendall(data[:-200])  # all but the end of the headers or body
        for _ in range(3):
            for path in ("/health", "/other"):
                answer = exchange(port, get(path))
                assert answer.status == 200 and answer.elapsed < 0.5, answer.elapsed
            time.sleep(0.1)
        for sock, data in zip(sockets, slow, strict=True):
            sock.sendall(data[-200:])
        answers = [Reader(sock).response() for sock in sockets]
        assert [a.status for a in answers] == [200] * len(slow)
        assert all(a.body == body for a in answers[:10])
    finally:
        for sock in sockets:
            sock.close()


def test_a_body_sent_byte_by_byte_arrives_whole(port):
    body = bytes(range(256)) * 4
    data = post("/echo", body)
    with connect(port) as sock:
        for i in range(0, len(data), 97):
            sock.sendall(data[i : i + 97])
            time.sleep(0.005)
        answer = Reader(sock).response()
    assert answer.status == 200 and answer.body == body


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /slow HTTP/1.1\r\nHost: t\r\n", post("/echo", b"0123456789")[:-4]],
    ids=["idle", "partial-headers", "partial-body"],
)
def test_a_request_not_sent_in_time_gets_408(port, sent):
    answer = exchange(port, sent)
    assert answer.status == 408
    assert answer.envelope()["code"] == "request_timeout"
    assert READ_TIMEOUT_S * 0.9 <= answer.elapsed < READ_TIMEOUT_S + 2


def test_keepalive_connection_mid_request_gets_408_and_idle_one_is_closed(port):
    with connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/a"))
        assert reader.response().status == 200
        sock.sendall(b"GET /b HTTP/1.1\r\n")  # the next request, never finished
        answer = reader.response()
        assert answer.status == 408 and answer.envelope()["code"] == "request_timeout"
    with connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/a"))
        assert reader.response().status == 200
        started = time.monotonic()
        assert reader.closed()  # after keepalive (2 s), with no 408 on an idle connection
        assert time.monotonic() - started < 5


def test_keepalive_and_pipelining(port):
    requests = [
        get("/one"),
        post("/echo", b"second"),
        CHUNKED_HEAD + chunked([b"thi", b"rd"]),
        get("/health"),
    ]
    with connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(b"".join(requests))
        answers = [reader.response() for _ in requests]
        assert [a.body for a in answers] == [b"ok", b"second", b"third", b"ok"]
        assert all(a.headers["connection"] == "keep-alive" for a in answers)
        sock.sendall(post("/echo", b"again"))  # the same connection, after the pipeline
        assert reader.response().body == b"again"


def test_chunked_bodies_with_extensions_and_trailers(port):
    pieces = [b"a" * 5000, b"b" * 17, b"c" * 3000]
    data = CHUNKED_HEAD + chunked(pieces, extension=b';name="v"', trailers=b"X-Check: 1\r\n")
    with connect(port) as sock:
        for i in range(0, len(data), 1500):  # in pieces, across chunk boundaries
            sock.sendall(data[i : i + 1500])
            time.sleep(0.01)
        answer = Reader(sock).response()
    assert answer.status == 200 and answer.body == b"".join(pieces)


def test_expect_100_continue(port):
    body = b"z" * 4000
    head = (
        f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    with connect(port) as sock:
        sock.sendall(head.encode())
        reader = Reader(sock)
        interim = reader.response()
        assert interim.status == 100
        sock.sendall(body)
        answer = reader.response()
    assert answer.status == 200 and answer.body == body


def test_oversized_bodies_are_refused_without_being_read(port):
    """A Content-Length over the limit is handed to the app at once (413, well before the read
    deadline); a chunked body is handed over as soon as more than the limit is buffered."""
    head = f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY_LIMIT * 100}\r\n\r\n"
    answer = exchange(port, head.encode() + b"x" * 1000)
    assert answer.status == 413 and answer.elapsed < READ_TIMEOUT_S / 2
    assert answer.headers["connection"] == "close"
    with connect(port) as sock:
        sock.sendall(CHUNKED_HEAD + b"".join(b"400\r\n" + b"y" * 1024 + b"\r\n" for _ in range(20)))
        answer = Reader(sock).response()
    assert answer.status == 413 and answer.elapsed < READ_TIMEOUT_S / 2


# --- gunicorn's own rejections ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (
            get("/", "".join(f"X-H{i}: v\r\n" for i in range(101))),
            431,
            "request_header_fields_too_large",
        ),
        (get("/", "X-Big: " + "v" * 9000 + "\r\n"), 431, "request_header_fields_too_large"),
        (get("/" + "a" * 5000), 414, "uri_too_long"),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked([b"abcd"]),
            400,
            "malformed_request",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
            "malformed_request",
        ),
        (CHUNKED_HEAD + b"zz\r\nabc\r\n0\r\n\r\n", 400, "malformed_request"),
        (CHUNKED_HEAD + b"3\r\nabcXY0\r\n\r\n", 400, "malformed_request"),
        (b"GARBAGE\r\n\r\n", 400, "malformed_request"),
        (b"GET / HTTP/1.1\nHost: t\n\n", 400, "malformed_request"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: foo\r\n\r\n", 501, "not_implemented"),
    ],
    ids=[
        "too-many-headers",
        "header-too-long",
        "uri-too-long",
        "content-length-and-chunked",
        "two-content-lengths",
        "invalid-chunk-size",
        "missing-chunk-terminator",
        "bad-request-line",
        "bare-lf",
        "unknown-transfer-coding",
    ],
)
def test_gunicorn_rejections_answer_the_json_envelope(port, data, status, code):
    answer = exchange(port, data)
    assert answer is not None and answer.status == status
    error = answer.envelope()
    assert error["code"] == code
    assert "'" not in error["message"] and "abc" not in error["message"]  # nothing echoed


# --- load shedding and the priority lane --------------------------------------------------------


def test_overload_sheds_429_with_retry_after_and_health_is_never_shed(port):
    """Two threads held for 2 s by two requests: the six more that queue are answered 429 when
    they have waited the bound, while health checks keep answering at once."""
    with ThreadPoolExecutor(16) as pool:
        sleepers = [pool.submit(exchange, port, get("/sleep?s=2")) for _ in range(8)]
        time.sleep(0.1)
        probes = []
        for _ in range(10):
            probes.append(exchange(port, get("/health")))
            probes.append(exchange(port, b"HEAD /ready HTTP/1.1\r\nHost: t\r\n\r\n"))
            time.sleep(0.05)
        answers = [f.result() for f in sleepers]
    assert all(p.status == 200 and p.elapsed < 0.5 for p in probes), [p.elapsed for p in probes]
    assert sorted(a.status for a in answers) == [200, 200] + [429] * 6
    for answer in answers:
        if answer.status == 429:
            assert answer.headers["retry-after"] == str(RETRY_AFTER_S)
            assert answer.envelope()["code"] == "overloaded"
            assert answer.elapsed < MAX_WAIT_MS / 1000 + 1.0


# --- graceful shutdown --------------------------------------------------------------------------


def test_sigterm_answers_every_accepted_request():
    """Clients keep opening connections through a SIGTERM: every connection the server
    accepted gets its answer (a refused connection was never accepted), and a kept-alive
    connection that sends a request during the shutdown linger is answered with
    `Connection: close`."""
    outcomes: list[str] = []
    stop = threading.Event()
    env = {**ENV, "DC_MAX_QUEUE_WAIT_MS": "30000"}

    with run_gunicorn(CONFIG, env, port_env="DC_API_PORT") as (url, proc):
        port = int(url.rsplit(":", 1)[1])

        def client() -> None:
            while not stop.is_set():
                try:
                    sock = connect(port, timeout=20)
                except OSError:
                    outcomes.append("refused")
                    time.sleep(0.01)
                    continue
                try:
                    sock.sendall(get("/sleep?s=0.05"))
                    answer = Reader(sock).response()
                    outcomes.append("answered" if answer and answer.status == 200 else "lost")
                except OSError:
                    outcomes.append("lost")
                finally:
                    sock.close()

        with connect(port) as kept:
            kept_reader = Reader(kept)
            kept.sendall(get("/a"))
            assert kept_reader.response().headers["connection"] == "keep-alive"
            threads = [threading.Thread(target=client) for _ in range(8)]
            for thread in threads:
                thread.start()
            try:
                time.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                kept.sendall(get("/late"))
                late = kept_reader.response()
                proc.wait(30)
                time.sleep(0.2)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(30)
    counts = Counter(outcomes)
    assert counts["answered"] >= 8, counts
    assert counts["lost"] == 0, counts
    assert late is not None and late.status == 200 and late.headers["connection"] == "close"
