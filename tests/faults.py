"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, for tests that put a real server behind bad weather.

It forwards each request, unchanged byte for byte (so signed requests stay valid), to one upstream
server, and on a chosen share of them answers for it instead: ``503`` (S3's ``SlowDown``), ``500``,
a connection reset before any answer, a body cut short after its headers promised more, or added
latency. Faults are drawn from a seeded generator, so a run's pattern is repeatable. ``outage()``
answers every request with one status until ``restore()`` (a server that is down), and websocket
upgrades (Prefect's event stream) are tunnelled as raw bytes, or refused during an outage.

Not a mock of either side: both the client and the server are real, and the bytes between them are
the real requests and answers except where a fault is injected, as a flaky network would.
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO

FAULTS = ("503", "500", "reset", "truncate", "latency")

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Weather:
    """What the proxy does: fault rates (0..1 per request, drawn in the order of FAULTS), the
    latency a ``latency`` fault adds, and an outage status answered to everything while set."""

    rates: dict[str, float] = field(default_factory=dict)
    latency_s: float = 0.2
    seed: int = 0
    outage_status: int | None = None
    only_paths: tuple[str, ...] = ()  # faults only for paths starting with one of these (all if empty)
    scripted: dict[int, str] = field(default_factory=dict)  # request number (from 1) -> its fault


class FaultProxy:
    """``with FaultProxy("127.0.0.1:9000", Weather(rates={"503": 0.05})) as proxy: proxy.url``."""

    def __init__(self, upstream: str, weather: Weather | None = None) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.weather = weather or Weather()
        self.random = random.Random(self.weather.seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.faulted: list[tuple[str, str, str]] = []  # (method, path, fault) of each injected fault
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                proxy.serve(self.connection, self.rfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        """host:port the proxy listens on."""
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return f"http://{self.address}"

    def start(self) -> FaultProxy:
        """Listen and forward, in a thread."""
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop listening (connections in progress end with their threads)."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def outage(self, status: int = 503) -> None:
        """Answer every request with ``status`` from now on (the server is "down")."""
        self.weather.outage_status = status

    def restore(self) -> None:
        """End an outage."""
        self.weather.outage_status = None

    # --- one client connection: requests in turn, each forwarded on one upstream connection ---------

    def serve(self, client: socket.socket, reader: BinaryIO) -> None:
        upstream: socket.socket | None = None
        upstream_reader: BinaryIO | None = None
        try:
            while True:
                head = read_head(reader)
                if head is None:
                    return
                method, path, headers = parse_head(head)
                body = read_body(reader, headers)
                with self.lock:
                    self.requests += 1
                    fault = self.draw(path)
                    if fault:
                        self.faulted.append((method, path, fault))
                if fault and fault.isdigit():
                    self.answer(client, int(fault))
                    continue
                if fault == "reset":
                    reset(client)
                    return
                if fault == "latency":
                    time.sleep(self.weather.latency_s)
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                    upstream_reader = upstream.makefile("rb")
                assert upstream_reader is not None
                upstream.sendall(head + body)
                if headers.get("upgrade", "").lower() == "websocket":
                    tunnel(client, reader, upstream, upstream_reader)
                    return
                answer_head = read_head(upstream_reader)
                if answer_head is None:
                    reset(client)
                    return
                status, _, answer_headers = parse_head(answer_head)
                answer_body = (
                    b""
                    if method == "HEAD" or status in ("204", "304")
                    else read_body(upstream_reader, answer_headers, until_close=True)
                )
                if fault == "truncate" and len(answer_body) > 1:
                    client.sendall(answer_head + answer_body[: len(answer_body) // 2])
                    reset(client)
                    return
                client.sendall(answer_head + answer_body)
                if answer_headers.get("connection", "").lower() == "close":
                    return
        except (OSError, ValueError):
            return
        finally:
            if upstream is not None:
                upstream.close()
            client.close()

    def draw(self, path: str) -> str | None:
        """The fault for one request (under the lock), counted."""
        if self.weather.outage_status is not None:
            self.injected[f"outage {self.weather.outage_status}"] += 1
            return str(self.weather.outage_status)
        if self.requests in self.weather.scripted:
            fault = self.weather.scripted[self.requests]
            self.injected[fault] += 1
            return fault
        if self.weather.only_paths and not path.startswith(self.weather.only_paths):
            return None
        roll = self.random.random()
        for name in FAULTS:
            rate = self.weather.rates.get(name, 0.0)
            if roll < rate:
                self.injected[name] += 1
                return name
            roll -= rate
        return None

    def answer(self, client: socket.socket, status: int) -> None:
        """Answer in the upstream's place: 503 as S3's SlowDown, else a bare status."""
        reason = {500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
        body = SLOW_DOWN if status == 503 else b""
        kind = b"application/xml" if body else b"text/plain"
        client.sendall(
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Content-Type: "
            + kind
            + b"\r\n\r\n"
            + body
        )


def read_head(reader: BinaryIO) -> bytes | None:
    """A request's or answer's start line and headers, raw (None at a clean end of the stream)."""
    lines = []
    while True:
        line = reader.readline(65537)
        if not line:
            if lines:
                raise ValueError("connection closed inside a header")
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method or status, path or reason, lower-cased headers) of a raw head."""
    first, *rest = head.decode("latin-1").split("\r\n")
    parts = first.split(" ", 2)
    if first.startswith("HTTP/"):
        word, where = parts[1], parts[2] if len(parts) > 2 else ""
    else:
        word, where = parts[0], parts[1]
    headers = {}
    for line in rest:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return word, where, headers


def read_body(reader: BinaryIO, headers: dict[str, str], *, until_close: bool = False) -> bytes:
    """A message's body, raw: by Content-Length, chunked (chunks kept as sent), or to the end."""
    if "content-length" in headers:
        return read_exactly(reader, int(headers["content-length"]))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raw = []
        while True:
            size_line = reader.readline(65537)
            raw.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = reader.readline(65537)
                    raw.append(trailer)
                    if trailer in (b"\r\n", b"\n", b""):
                        return b"".join(raw)
            raw.append(read_exactly(reader, size + 2))
    return reader.read() if until_close else b""


def read_exactly(reader: BinaryIO, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ValueError("connection closed inside a body")
    return data


def reset(connection: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped connection looks to the other side."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        connection.close()


def tunnel(
    client: socket.socket, client_reader: BinaryIO, upstream: socket.socket, upstream_reader: BinaryIO
) -> None:
    """Pipe raw bytes both ways until either side closes (a websocket after its upgrade)."""

    def pump(source: BinaryIO, sink: socket.socket) -> None:
        try:
            while chunk := source.read1(65536):  # type: ignore[attr-defined]
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for side in (client, upstream):
                with contextlib.suppress(OSError):
                    side.shutdown(socket.SHUT_RDWR)

    back = threading.Thread(target=pump, args=(upstream_reader, client), daemon=True)
    back.start()
    pump(client_reader, upstream)
    back.join()
