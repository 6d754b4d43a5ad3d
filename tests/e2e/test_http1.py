"""HTTP/1.1 on the client side: the lean server connection and its hand-over
to hyper.

Bodyless requests (GET, HEAD, DELETE, ...) are served by the gateway's lean
HTTP/1.1 connection; the first request it does not take itself (a body, an
Expect, HTTP/1.0, a head it cannot parse or one over the limits) hands the
connection to hyper together with the bytes already read, and hyper serves
the rest. These tests speak HTTP/1.1 over a raw socket, so that pipelined
requests, the hand-over boundary and the framing of each answer are seen
exactly as a client sees them."""

from __future__ import annotations

import socket
import uuid

import pytest

from s3util import head_bytes, parse_error, sha256_hex, sign, target_for


def signed(gw, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, version: str = "HTTP/1.1") -> bytes:
    h = {"host": f"{gw.addr[0]}:{gw.addr[1]}", **(headers or {})}
    if body:
        h["content-length"] = str(len(body))
    h = sign(method, path, (), h, sha256_hex(body), gw.keys["alice"].creds).headers
    return head_bytes(method, target_for(path), h, version) + body


class Reader:
    """Responses off one socket, framed as RFC 9112 has it."""

    def __init__(self, sock: socket.socket):
        sock.settimeout(10)
        self.f = sock.makefile("rb")

    def line(self) -> bytes:
        line = self.f.readline(65536)
        assert line.endswith(b"\r\n"), f"cut-off line {line!r}"
        return line[:-2]

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes, bytes]:
        """(status, headers (lower-case names), body, status line)."""
        status_line = self.line()
        version, status, *_ = status_line.split(b" ", 2)
        assert version in (b"HTTP/1.1", b"HTTP/1.0"), status_line
        headers: dict[str, str] = {}
        while line := self.line():
            name, _, value = line.partition(b":")
            assert name.lower().decode() not in headers or name.lower() == b"set-cookie", f"repeated {name!r}"
            headers[name.lower().decode()] = value.strip().decode()
        status = int(status)
        if method == "HEAD" or status in (204, 304):
            return status, headers, b"", status_line
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while (size := int(self.line().split(b";")[0], 16)) > 0:
                body += self.f.read(size)
                assert self.line() == b""
            while self.line():
                pass
            return status, headers, body, status_line
        assert "content-length" in headers, headers
        return status, headers, self.f.read(int(headers["content-length"])), status_line

    def at_eof(self) -> bool:
        return self.f.read(1) == b""


@pytest.fixture
def objects(backend):
    """Two objects under a fresh prefix of `data`, as the backend holds them."""
    prefix = f"http1/{uuid.uuid4().hex[:8]}"
    one, two = b"first object " * 100, b"second" * 5000
    backend.put("data-prod", f"{prefix}/one", one)
    backend.put("data-prod", f"{prefix}/two", two)
    return prefix, one, two


def test_pipelined_requests_across_the_hand_over(gateway, objects, backend):
    """Six requests in one write: three the lean path serves, an upload that
    hands the connection to hyper with everything after it already read, and
    two more for hyper. Each answer comes back in order and whole."""
    prefix, one, two = objects
    put = b"uploaded through the hand-over"
    requests = [
        ("GET", signed(gateway, "GET", f"/data/{prefix}/one")),
        ("HEAD", signed(gateway, "HEAD", f"/data/{prefix}/one")),
        ("GET", signed(gateway, "GET", f"/data/{prefix}/missing")),
        ("PUT", signed(gateway, "PUT", f"/data/{prefix}/three", put)),
        ("GET", signed(gateway, "GET", f"/data/{prefix}/three")),
        ("GET", signed(gateway, "GET", f"/data/{prefix}/two")),
    ]
    with socket.create_connection(gateway.addr) as s:
        s.sendall(b"".join(r for _, r in requests))
        reader = Reader(s)
        answers = [reader.response(method) for method, _ in requests]
    statuses = [a[0] for a in answers]
    assert statuses == [200, 200, 404, 200, 200, 200], [(a[0], a[2][:200]) for a in answers]
    assert answers[0][2] == one
    # HEAD: the object's length, no body (the next answer parsed cleanly).
    assert answers[1][1]["content-length"] == str(len(one)) and answers[1][2] == b""
    assert parse_error(answers[2][2])["Code"] == "NoSuchKey"
    assert answers[4][2] == put
    assert answers[5][2] == two
    assert backend.file("data-prod", f"{prefix}/three").read_bytes() == put
    for status, headers, _, _ in answers:
        # Every answer is dated, names its request and carries no backend field.
        assert headers.get("date", "").endswith(" GMT"), headers
        assert len(headers.get("x-amz-request-id", "")) == 20, headers
        assert "connection" not in headers, headers


def test_connection_close_is_obeyed_and_said(gateway, objects):
    prefix, one, _ = objects
    with socket.create_connection(gateway.addr) as s:
        s.sendall(signed(gateway, "GET", f"/data/{prefix}/one", headers={"connection": "close"}))
        reader = Reader(s)
        status, headers, body, _ = reader.response()
        assert (status, body) == (200, one)
        assert headers.get("connection") == "close", headers
        assert reader.at_eof(), "the connection stayed open after Connection: close"


def test_keep_alive_serves_many_requests_on_one_connection(gateway, objects):
    """Requests one after another on one connection, each read before the
    next is sent; bytes of a head that arrive split are put together."""
    prefix, one, two = objects
    with socket.create_connection(gateway.addr) as s:
        reader = Reader(s)
        for i in range(20):
            key, want = ("one", one) if i % 2 else ("two", two)
            request = signed(gateway, "GET", f"/data/{prefix}/{key}")
            if i % 5 == 0:
                # A head in two writes.
                s.sendall(request[:17])
                s.sendall(request[17:])
            else:
                s.sendall(request)
            status, headers, body, line = reader.response()
            assert (status, body) == (200, want), (i, line, headers)
            assert line == b"HTTP/1.1 200 OK"


def test_http_1_0_is_answered_by_hyper(gateway, objects):
    prefix, one, _ = objects
    with socket.create_connection(gateway.addr) as s:
        s.sendall(signed(gateway, "GET", f"/data/{prefix}/one", version="HTTP/1.0"))
        reader = Reader(s)
        status, _, body, line = reader.response()
        assert (status, body) == (200, one), line
        assert line.startswith(b"HTTP/1.0 200"), line
        assert reader.at_eof(), "an HTTP/1.0 connection without keep-alive stayed open"


@pytest.mark.parametrize(
    "head, status",
    [
        (b"GET /data/x HTTP/1.1\r\nhost: a\r\nno colon here\r\n\r\n", 400),
        (b"GET /data/x HTTP/1.1\r\n" + b"".join(b"x-f%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"GET /data/x HTTP/1.1\r\nhost: a\r\nx-big: " + b"v" * 70_000 + b"\r\n\r\n", 431),
    ],
    ids=["malformed", "too-many-fields", "too-large"],
)
def test_heads_the_lean_path_refuses_get_hypers_answer_after_a_lean_one(gateway, objects, head, status):
    """A lean request first, then a head httparse refuses or one over the
    limits: hyper answers it as before, on the same connection."""
    prefix, one, _ = objects
    with socket.create_connection(gateway.addr) as s:
        s.sendall(signed(gateway, "GET", f"/data/{prefix}/one"))
        reader = Reader(s)
        assert reader.response()[:3:2] == (200, one)
        try:
            s.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got, _, _, line = reader.response()
        assert got == status, line
