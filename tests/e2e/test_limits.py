"""Resource limits: slow or stalled clients cannot exhaust the gateway.

Each test starts its own gateway (recorder.launch_gateway) with the limit
under test, against the session's s3s-fs backend. Clients are raw sockets so
a body can stop half-way."""

from __future__ import annotations

import base64
import hashlib
import select
import socket
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

import boto3
from botocore.config import Config

from conftest import REGION, gateway_bin, peak_rss_kib, stop_gateway
from recorder import launch_gateway
from s3util import head_bytes, parse_error, sha256_hex, sign, target_for

MiB = 1 << 20
FAKE_SIG = "0" * 64
EIGHT_MIB = memoryview(b"c" * (8 * MiB))


# --------------------------------------------------------------------------- helpers


def signed_head(gw, method: str, path: str, query, headers: dict[str, str], payload_hash: str) -> bytes:
    h = sign(method, path, query, {"host": f"{gw.addr[0]}:{gw.addr[1]}", **headers}, payload_hash, gw.keys["alice"].creds).headers
    return head_bytes(method, target_for(path, query), h)


def chunked_put_head(gw, key: str, chunk: int) -> tuple[bytes, int]:
    """Head of a signed aws-chunked PUT of one `chunk`-byte chunk; returns (head, body length)."""
    framing = len(f"{chunk:x};chunk-signature={FAKE_SIG}\r\n") + chunk + 2 + len(f"0;chunk-signature={FAKE_SIG}\r\n\r\n")
    h = {
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(chunk),
        "content-length": str(framing),
    }
    return signed_head(gw, "PUT", f"/data/{key}", (), h, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"), framing


def plain_put_head(gw, key: str, length: int, expect: bool = False) -> bytes:
    h = {"content-length": str(length)}
    if expect:
        h["expect"] = "100-continue"
    return signed_head(gw, "PUT", f"/data/{key}", (), h, "UNSIGNED-PAYLOAD")


def delete_objects_head(gw, length: int) -> tuple[bytes, bytes]:
    """Head of a DeleteObjects POST whose (never completed) body is `length` bytes."""
    body = b"<Delete>" + b" " * (length - len(b"<Delete></Delete>")) + b"</Delete>"
    h = {"content-length": str(len(body)), "content-md5": base64.b64encode(hashlib.md5(body).digest()).decode()}
    return signed_head(gw, "POST", "/data", [("delete", "")], h, sha256_hex(body)), body


def read_response(s: socket.socket, deadline: float) -> tuple[int | None, bytes]:
    """(status, body) of the next response on `s`, or (None, b"") if the
    connection was closed (or reset) without one. Fails at `deadline`."""
    buf = b""
    try:
        while True:
            if b"\r\n\r\n" in buf:
                head, _, body = buf.partition(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                if status == 100:
                    buf = body
                    continue
                clen = 0
                for line in head.split(b"\r\n")[1:]:
                    n, _, v = line.partition(b":")
                    if n.strip().lower() == b"content-length":
                        clen = int(v)
                while len(body) < clen:
                    c = _recv(s, deadline)
                    if not c:
                        break
                    body += c
                return status, body
            c = _recv(s, deadline)
            if not c:
                return (None, b"") if not buf else (int(buf.split(b" ", 2)[1]), b"")
            buf += c
    except (ConnectionResetError, BrokenPipeError):
        return None, b""


def _recv(s: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no response before the deadline")
    s.settimeout(left)
    try:
        return s.recv(65536)
    except socket.timeout:
        raise TimeoutError("no response before the deadline") from None


def send_quietly(s: socket.socket, data: bytes, timeout: float = 10) -> bool:
    """sendall, but a gateway that stops reading (or answers and closes) is not an error."""
    s.settimeout(timeout)
    try:
        s.sendall(data)
        return True
    except (socket.timeout, ConnectionResetError, BrokenPipeError):
        return False


def send_watching(s: socket.socket, data, piece: int = 64 * 1024, timeout: float = 10) -> bool:
    """Send `data` in pieces, stopping early (False) once the gateway answers or
    closes: an early answer is then read before unread bytes make the
    gateway's close a reset."""
    for i in range(0, len(data), piece):
        if select.select([s], [], [], 0)[0]:
            return False
        if not send_quietly(s, data[i : i + piece], timeout):
            return False
    return True


def alice_client(gw, timeout: float = 10):
    """boto3 as alice, no retries, short timeouts: a slow answer is a failure here."""
    k = gw.keys["alice"]
    return boto3.session.Session().client(
        "s3",
        endpoint_url=gw.endpoint,
        region_name=REGION,
        aws_access_key_id=k.access_key,
        aws_secret_access_key=k.secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=timeout,
        ),
    )


def s3_code(body: bytes) -> str | None:
    try:
        return parse_error(body).get("Code")
    except (ET.ParseError, AssertionError):
        return None


@pytest.fixture
def gw_factory(backend, tmp_path_factory):
    started = []

    def start(*args: str, env: dict[str, str] | None = None):
        gw = launch_gateway(
            tmp_path_factory.mktemp("limits"), backend, "s3gate-limits", extra_args=["--drain-timeout", "2s", *args], env=env
        )
        started.append(gw)
        return gw

    yield start
    for gw in started:
        stop_gateway(gw)


# --------------------------------------------------------------------------- flags


LIMIT_FLAGS = [
    "max-connections",
    "max-requests",
    "header-timeout",
    "body-idle-timeout",
    "body-deadline",
    "send-timeout",
    "buffer-budget",
]


@pytest.mark.parametrize("command", ["serve", "dataplane"])
def test_limit_flags_exist(command):
    out = subprocess.run([str(gateway_bin()), command, "--help"], capture_output=True, text=True, timeout=30).stdout
    for flag in LIMIT_FLAGS:
        assert f"--{flag}" in out, f"{command} --help does not mention --{flag}:\n{out}"
        env = "S3GATE_" + flag.upper().replace("-", "_")
        assert env in out, f"{command} --help does not name the env twin {env}:\n{out}"


# --------------------------------------------------------------------------- stalled bodies


IDLE = 3.0


def test_stalled_uploads_time_out_and_stay_small(gw_factory, backend):
    """64 stalled or dribbling uploads: each is answered (400 RequestTimeout) or
    closed soon after it stops sending, normal traffic keeps working, and the
    gateway's peak RSS stays under 128 MiB."""
    gw = gw_factory("--body-idle-timeout", "3s", "--body-deadline", "5s")
    run = uuid.uuid4().hex[:8]
    results: list[dict] = []
    lock = threading.Lock()

    def stalled(kind: str, i: int) -> None:
        r = {"kind": kind, "i": i, "status": None, "code": None, "error": None, "late": None}
        try:
            with socket.create_connection(gw.addr, timeout=10) as s:
                if kind == "chunked":  # announces a 16 MiB chunk, sends 8 MiB of it
                    head, _ = chunked_put_head(gw, f"limits/{run}/c{i}", 0x1000000)
                    if send_watching(s, head + f"1000000;chunk-signature={FAKE_SIG}\r\n".encode()):
                        send_watching(s, EIGHT_MIB)
                elif kind == "dribble":  # 10 MiB announced, 1 byte every 0.5 s for 6 s
                    send_quietly(s, plain_put_head(gw, f"limits/{run}/d{i}", 10 * MiB))
                    end = time.monotonic() + 6
                    while time.monotonic() < end:
                        if select.select([s], [], [], 0.5)[0]:
                            break  # answered (or closed) early
                        if not send_quietly(s, b"d"):
                            break
                else:  # DeleteObjects: 1.9 MiB announced, 1.8 MiB sent
                    head, body = delete_objects_head(gw, 1900 * 1024)
                    if send_watching(s, head):
                        send_watching(s, memoryview(body)[: 1800 * 1024])
                stall = time.monotonic()
                status, rbody = read_response(s, stall + IDLE + 12)
                r["late"] = time.monotonic() - stall
                r["status"], r["code"] = status, s3_code(rbody) if status else None
        except Exception as e:  # noqa: BLE001 - reported below
            r["error"] = repr(e)
        with lock:
            results.append(r)

    kinds = ["chunked", "dribble", "delete"]
    threads = [threading.Thread(target=stalled, args=(kinds[i % 3], i), daemon=True) for i in range(64)]
    for t in threads:
        t.start()

    client = alice_client(gw)
    failures, n = [], 0
    end = time.monotonic() + 30
    while any(t.is_alive() for t in threads) and time.monotonic() < end:
        key = f"limits/{run}/normal-{n}"
        t0 = time.monotonic()
        try:
            client.put_object(Bucket="data", Key=key, Body=b"small %d" % n)
            got = client.get_object(Bucket="data", Key=key)["Body"].read()
            if got != b"small %d" % n:
                failures.append((n, f"read back {got!r}"))
        except Exception as e:  # noqa: BLE001
            failures.append((n, repr(e), round(time.monotonic() - t0, 1)))
        n += 1
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "some stalled connections were never answered"

    peak = peak_rss_kib(gw.proc.pid)
    summary = {}
    for r in results:
        what = (r["kind"], r["status"], r["code"], "error" if r["error"] else "late>%ds" % (IDLE + 9) if (r["late"] or 0) > IDLE + 9 else "ok")
        summary[what] = summary.get(what, 0) + 1
    summary = f"peak RSS {peak / 1024:.0f} MiB; stalled connections (kind, status, code, timing): {summary}"
    print(summary)
    assert not failures, f"{len(failures)} of {n} normal requests failed during the stall: {failures[:5]}; {summary}"
    assert n >= 10, f"only {n} normal requests were made"
    assert len(results) == 64
    errors = [r for r in results if r["error"]]
    assert not errors, f"{errors[:3]}; {summary}"
    allowed = {"chunked": {"RequestTimeout"}, "dribble": {"RequestTimeout"}, "delete": {"RequestTimeout", "SlowDown"}}
    wrong = [r for r in results if r["status"] is not None and r["code"] not in allowed[r["kind"]]]
    assert not wrong, f"unexpected answers to stalled uploads: {wrong[:3]}; {summary}"
    bad_status = [r for r in results if r["status"] is not None and r["status"] not in (400, 503)]
    assert not bad_status, summary
    for kind in ("chunked", "dribble"):
        assert any(r["kind"] == kind and r["code"] == "RequestTimeout" for r in results), summary
    slow = [r for r in results if r["late"] > IDLE + 9]
    assert not slow, f"answered long after the idle timeout: {slow[:3]}; {summary}"
    assert peak < 128 * 1024, summary
    assert gw.proc.alive()
    assert not any(backend.exists("data-prod", f"limits/{run}/{p}{i}") for p, i in [("c", 0), ("d", 1)])


def test_stalled_header_is_dropped(gw_factory):
    gw = gw_factory("--header-timeout", "2s")
    with socket.create_connection(gw.addr, timeout=10) as s:
        s.sendall(b"GET /data/x HTTP/1.1\r\nhost: 127.0.0.1\r\n")  # never finished
        t0 = time.monotonic()
        status, _ = read_response(s, t0 + 10)
        assert status in (None, 400, 408), status
        assert time.monotonic() - t0 < 8


@pytest.mark.parametrize("after_request", [False, True], ids=["fresh", "keep-alive"])
def test_idle_connection_is_closed(gw_factory, after_request):
    """A connection that sends nothing at all — fresh, or idle after a
    response — is closed by the header timeout: idle sockets cannot pin the
    connection limit."""
    gw = gw_factory("--header-timeout", "2s")
    with socket.create_connection(gw.addr, timeout=10) as s:
        if after_request:
            s.sendall(b"GET /public/none HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            status, _ = read_response(s, time.monotonic() + 10)
            assert status == 404, status
        t0 = time.monotonic()
        status, _ = read_response(s, t0 + 10)
        assert status in (None, 408), status
        assert 1.5 < time.monotonic() - t0 < 8


def test_client_that_stops_reading_is_disconnected(gw_factory, backend):
    """A GET whose client never reads the body: once the socket buffers are
    full, the gateway closes the connection after --send-timeout, and the
    request no longer counts against --max-requests."""
    key = f"limits/big-{uuid.uuid4().hex[:8]}"
    backend.put("data-prod", key, b"z" * (64 * MiB))
    gw = gw_factory("--send-timeout", "2s", "--max-requests", "1")
    with socket.create_connection(gw.addr, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(signed_head(gw, "GET", f"/data/{key}", (), {}, sha256_hex(b"")))
        time.sleep(0.5)
        # The only request slot is taken by the stalled download.
        t0 = time.monotonic()
        client = alice_client(gw)
        deadline = t0 + 15
        while True:
            try:
                client.head_object(Bucket="data", Key=key)
                break
            except Exception:  # noqa: BLE001 - 503 SlowDown while the slot is held
                assert time.monotonic() < deadline, "the stalled download was never cut off"
                time.sleep(0.3)
        assert time.monotonic() - t0 >= 1.0, "the slot was free although the download was stalled"
    # The connection was ended for not reading (what the kernel had already
    # buffered still trickles out after the close, so the socket itself is
    # not read to its end here).
    # (The line is written when the connection task ends, and the log
    # thread writes in batches: poll briefly.)
    deadline = time.monotonic() + 5
    while "client accepted no bytes within the send timeout" not in (log := gw.log_path.read_text(errors="replace")):
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.05)


# --------------------------------------------------------------------------- max requests


@pytest.mark.parametrize("via", ["flags", "env"])
def test_max_requests(gw_factory, backend, via):
    if via == "flags":
        gw = gw_factory("--max-requests", "2", "--body-idle-timeout", "3s")
    else:
        gw = gw_factory(env={"S3GATE_MAX_REQUESTS": "2", "S3GATE_BODY_IDLE_TIMEOUT": "3s"})
    key = f"limits/mr-{uuid.uuid4().hex[:8]}"
    backend.put("data-prod", key, b"there")
    held = []
    try:
        for i in range(2):
            s = socket.create_connection(gw.addr, timeout=10)
            held.append(s)
            s.sendall(plain_put_head(gw, f"{key}-held{i}", MiB, expect=True))
            first = s.recv(4096)  # 100 Continue: the request is being served
            assert first.startswith(b"HTTP/1.1 100"), first[:300]
            s.sendall(b"0123456789")
        r = gw.raw("alice").request("GET", f"/data/{key}")
        assert r.status == 503, r.describe()
        assert parse_error(r.body).get("Code") == "SlowDown", r.describe()
        assert len(r.headers.get("x-amz-request-id", "")) == 20, r.describe()
        for s in held:  # the held ones time out ...
            status, body = read_response(s, time.monotonic() + 12)
            assert status in (None, 400), (status, body)
            if status:
                assert s3_code(body) == "RequestTimeout", body
    finally:
        for s in held:
            s.close()
    # ... and the slots are free again
    deadline = time.monotonic() + 5
    while True:
        r = gw.raw("alice").request("GET", f"/data/{key}")
        if r.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status == 200 and r.body == b"there", r.describe()


# --------------------------------------------------------------------------- buffer budget


def test_buffer_budget(gw_factory, backend):
    gw = gw_factory("--buffer-budget", "3000000", "--body-idle-timeout", "3s")
    answers: list[tuple[int | None, str | None, float]] = []
    lock = threading.Lock()
    socks = []

    def wait(s: socket.socket, t0: float) -> None:
        status, body = read_response(s, t0 + 15)
        with lock:
            answers.append((status, s3_code(body) if status else None, round(time.monotonic() - t0, 1)))

    threads = []
    try:
        for _ in range(4):  # 1.45 MB announced, 1.4 MB sent: two fit in 3 MB, four do not
            s = socket.create_connection(gw.addr, timeout=10)
            socks.append(s)
            head, body = delete_objects_head(gw, 1_450_000)
            t0 = time.monotonic()
            send_watching(s, head + body[:1_400_000])
            t = threading.Thread(target=wait, args=(s, t0), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(timeout=20)
    finally:
        for s in socks:
            s.close()
    assert len(answers) == 4, answers
    assert (503, "SlowDown") in [(a[0], a[1]) for a in answers], answers
    assert any(a[1] == "RequestTimeout" or a[0] is None for a in answers), f"no upload was held: {answers}"
    assert all(a[1] in ("SlowDown", "RequestTimeout") or a[0] is None for a in answers), answers
    # the budget is returned: a normal DeleteObjects works
    key = f"limits/bb-{uuid.uuid4().hex[:8]}"
    backend.put("data-prod", key, b"x")
    c = alice_client(gw, timeout=30)
    r = c.delete_objects(Bucket="data", Delete={"Objects": [{"Key": key}]})
    assert [d["Key"] for d in r.get("Deleted", [])] == [key], r
    assert not backend.exists("data-prod", key)


# --------------------------------------------------------------------------- max connections


def test_max_connections(gw_factory, backend):
    gw = gw_factory("--max-connections", "4")
    key = f"limits/mc-{uuid.uuid4().hex[:8]}"
    backend.put("data-prod", key, b"mc")
    get = signed_head(gw, "GET", f"/data/{key}", (), {}, sha256_hex(b""))
    held = []
    try:
        for _ in range(4):  # four keep-alive connections, each served once and then idle
            s = socket.create_connection(gw.addr, timeout=10)
            held.append(s)
            s.sendall(get)
            status, body = read_response(s, time.monotonic() + 10)
            assert status == 200 and body == b"mc", (status, body)

        fifth: dict = {}

        def use_fifth() -> None:
            try:
                with socket.create_connection(gw.addr, timeout=20) as s:
                    s.sendall(get)
                    fifth["answer"] = read_response(s, time.monotonic() + 20)
                    fifth["at"] = time.monotonic()
            except Exception as e:  # noqa: BLE001
                fifth["error"] = repr(e)

        t = threading.Thread(target=use_fifth, daemon=True)
        t.start()
        t.join(1.5)
        if "answer" in fifth:
            # served at once: only acceptable if the gateway made room by closing an idle one
            closed = []
            for s in held:
                s.setblocking(False)
                try:
                    closed.append(s.recv(1) == b"")
                except (BlockingIOError, ConnectionResetError):
                    closed.append(False)
            assert any(closed), "a 5th connection was served while 4 were held open"
        held.pop(0).close()
        closed_at = time.monotonic()
        t.join(8)
        assert "error" not in fifth, fifth
        assert fifth.get("answer") == (200, b"mc"), fifth
        assert fifth["at"] - closed_at < 5, fifth
    finally:
        for s in held:
            s.close()
