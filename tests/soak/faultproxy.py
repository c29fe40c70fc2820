"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, between an S3 client and the S3 server.

The proxy parses just enough HTTP to know where each request and response
ends (``Content-Length``, chunked bodies, ``Expect: 100-continue`` answered by
the proxy itself), counts requests, and for each one draws at most one fault
from a seeded RNG (:class:`FaultPlan`):

``reset``
    the connection is reset (RST) before the request reaches the server;
``reset_after``
    the server handles the request, then the client's connection is reset
    before it sees the answer (the request took effect, the client cannot know);
``stall``
    the request waits a random time before it is forwarded (longer than the
    client's read timeout, if it is configured low). It is forwarded even if
    the client hung up meanwhile, as a request held up in a network would
    be; such late deliveries are listed in ``FaultProxy.late``;
``cut``
    the response is cut at a random byte and the connection reset;
``http500`` / ``http503``
    the proxy answers ``500 InternalError`` / ``503 SlowDown`` itself.

Threads, not asyncio: one thread per client connection keeps the code plain
and the proxy lives happily next to a synchronous test harness.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import urlsplit

FAULTS = ("reset", "reset_after", "stall", "cut", "http500", "http503")
_IDLE_TIMEOUT = 120.0
_ERRORS = {
    "http500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "http503": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
}


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject: ``rates`` maps a fault name to its per-request probability.

    The first ``skip`` requests pass untouched; at most ``max_faults`` faults
    are injected (None: no limit); ``methods`` restricts faults to requests with
    those HTTP methods (None: all), ``target`` to requests whose target (path
    and query) contains it (None: all; ``"uploadId="`` with method POST picks
    the completions of multipart uploads).
    """

    rates: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    skip: int = 0
    max_faults: int | None = None
    methods: frozenset[str] | None = None
    target: str | None = None
    stall_seconds: tuple[float, float] = (0.2, 2.5)

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        if sum(self.rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")


@dataclass
class _Message:
    head: bytes
    body: bytes
    close: bool


class FaultProxy:
    """The proxy: ``with FaultProxy("http://127.0.0.1:5000", plan) as proxy: proxy.url``."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy only forwards to loopback, not {upstream}")
        self._upstream = (parts.hostname, parts.port or 80)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._active = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = "http://127.0.0.1:%d" % self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self.set_plan(plan or FaultPlan())

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join()
        self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                _reset(sock)

    def set_plan(self, plan: FaultPlan) -> None:
        """Use ``plan`` from the next request on, with fresh counters."""
        with self._lock:
            self._plan = plan
            self._rng = random.Random(plan.seed)
            self.requests = 0
            self.injected: Counter[str] = Counter()
            self.late: list[str] = []
            self.received: list[str] = []  # "METHOD target" of every request

    def _draw(self, method: str, target: str) -> str | None:
        with self._lock:
            self.requests += 1
            plan = self._plan
            roll = self._rng.random()
            self.received.append(f"{method} {target}")
            if self.requests <= plan.skip or (plan.methods is not None and method not in plan.methods):
                return None
            if plan.target is not None and plan.target not in target:
                return None
            if plan.max_faults is not None and sum(self.injected.values()) >= plan.max_faults:
                return None
            for fault in FAULTS:
                roll -= plan.rates.get(fault, 0.0)
                if roll < 0:
                    self.injected[fault] += 1
                    return fault
            return None

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being handled (stalled ones delivered); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._active == 0:
                    return True
            time.sleep(0.05)
        return False

    def _busy(self, delta: int) -> None:
        with self._lock:
            self._active += delta

    def _uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._rng.uniform(low, high)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(_IDLE_TIMEOUT)
        self._track(client)
        upstream = _Upstream()
        try:
            reader = client.makefile("rb")
            while not self._stopping.is_set():
                request = _read_request(reader, client)
                if request is None:
                    return
                self._busy(+1)
                try:
                    self._handle(client, request, upstream)
                finally:
                    self._busy(-1)
        except (OSError, ValueError, _Done):
            return
        finally:
            with self._lock:
                self._sockets.discard(client)
                self._sockets.discard(upstream.sock)
            _close(client)
            upstream.close()

    def _handle(self, client: socket.socket, request: _Message, upstream: _Upstream) -> None:
        """Forward one request, injecting its fault; raise _Done when the client's connection is over."""
        method, target = request.head.split(b" ", 2)[:2]
        method = method.decode("latin1")
        fault = self._draw(method, target.decode("latin1"))
        if fault == "reset":
            _reset(client)
            raise _Done
        if fault in _ERRORS:
            client.sendall(_error_response(fault, method))
            return
        if fault == "stall":
            time.sleep(self._uniform(*self._plan.stall_seconds))
            if _hung_up(client):
                with self._lock:
                    self.late.append(request.head.split(b"\r\n", 1)[0].decode("latin1"))
        if upstream.sock is None:
            upstream.connect(self._track(socket.create_connection(self._upstream, timeout=_IDLE_TIMEOUT)))
        upstream.sock.sendall(request.head + request.body)
        response = _read_response(upstream.reader, method)
        if response.close:
            upstream.close()
        if fault == "reset_after":
            _reset(client)
            raise _Done
        data = response.head + response.body
        if fault == "cut":
            client.sendall(data[: int(self._uniform(0, len(data)))])
            _reset(client)
            raise _Done
        client.sendall(data)
        if request.close or response.close:
            raise _Done


class _Upstream:
    """The proxy's connection to the server for one client connection (opened on first use)."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.reader: IO[bytes] | None = None

    def connect(self, sock: socket.socket) -> None:
        self.sock, self.reader = sock, sock.makefile("rb")

    def close(self) -> None:
        self.sock = self.reader = _close(self.sock)


class _Done(Exception):
    """The client's connection is over."""


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer has closed or reset ``sock`` (nothing unread is consumed)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
    return None


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: the peer sees 'connection reset'."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _close(sock)


def _read_head(reader: IO[bytes]) -> list[bytes] | None:
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            if lines:
                raise ValueError("connection closed inside a message head")
            return None
        if line in (b"\r\n", b"\n"):
            if lines:
                return lines
            continue
        lines.append(line)


def _header(lines: list[bytes], name: bytes) -> bytes | None:
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _read_body(reader: IO[bytes], lines: list[bytes]) -> bytes:
    if (_header(lines, b"transfer-encoding") or b"").lower() == b"chunked":
        return _read_chunked(reader)
    length = int(_header(lines, b"content-length") or 0)
    body = reader.read(length)
    if len(body) != length:
        raise ValueError("connection closed inside a message body")
    return body


def _read_chunked(reader: IO[bytes]) -> bytes:
    raw = bytearray()
    while True:
        size_line = reader.readline(65536)
        raw += size_line
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while True:
                trailer = reader.readline(65536)
                raw += trailer
                if trailer in (b"\r\n", b"\n", b""):
                    return bytes(raw)
        raw += reader.read(size + 2)


def _wants_close(lines: list[bytes]) -> bool:
    return (_header(lines, b"connection") or b"").lower() == b"close"


def _read_request(reader: IO[bytes], client: socket.socket) -> _Message | None:
    lines = _read_head(reader)
    if lines is None:
        return None
    if (_header(lines, b"expect") or b"").lower() == b"100-continue":
        lines = [line for line in lines if not line.lower().startswith(b"expect:")]
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = _read_body(reader, lines)
    return _Message(b"".join(lines) + b"\r\n", body, _wants_close(lines))


def _read_response(reader: IO[bytes], method: str) -> _Message:
    while True:
        lines = _read_head(reader)
        if lines is None:
            raise ValueError("upstream closed the connection")
        status = int(lines[0].split()[1])
        if status >= 200:
            break
    head = b"".join(lines) + b"\r\n"
    if method == "HEAD" or status in (204, 304):
        return _Message(head, b"", _wants_close(lines))
    if _header(lines, b"content-length") is None and _header(lines, b"transfer-encoding") is None:
        return _Message(head, reader.read(), True)
    return _Message(head, _read_body(reader, lines), _wants_close(lines))


def _error_response(fault: str, method: str) -> bytes:
    status, reason, code, message = _ERRORS[fault]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/xml\r\n"
        "x-amz-request-id: FAULTPROXY\r\n"
        f"Content-Length: {0 if method == 'HEAD' else len(body)}\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + body
