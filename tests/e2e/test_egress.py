"""Backends behind TLS and egress proxies, and backends that fail (issue 13,
parts 3 and 6).

Real parts, all started here:
- s3s-fs (conftest's backend) behind a real haproxy (Debian) terminating
  TLS with a server certificate from a CA made by the test: a backend with
  that CA as `ca_bundle` works; one trusting another CA is refused with 502.
- a real tinyproxy (Debian) on a free port with its own config, and a
  second one that wants Basic credentials: an http backend through it
  (absolute-form), the https backend through it (CONNECT), the proxy's log
  shows both; `proxy_credentials = "env:VAR"` passes the auth proxy, wrong
  credentials are refused; `no_proxy` goes around the proxy; a gateway
  started with HTTPS_PROXY in its environment uses it for a backend that
  names no proxy.
- failing backends: a proxy that is down, a closed port, a proxy that
  accepts and never answers CONNECT (connect_timeout), a backend that
  accepts and never answers (response_timeout), and a slow backend with
  `max_connections = 2` (small Python servers here: they stand in for a
  backend that misbehaves, which no real S3 server does on request).
"""

from __future__ import annotations

import http.server
import re
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BACKEND_SECRET_ENV, rules_config, stop_gateway
from harness.config import q, toml_table
from harness.procs import Proc, free_port, wait_for
from recorder import launch_gateway
from s3util import assert_s3_error, sign
from tlsutil import Ca

PROXY_USER, PROXY_PASSWORD = "egress", "proxy-pass-0f3c9a1e"

pytestmark = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v tinyproxy && (command -v haproxy || test -x /usr/sbin/haproxy)"],
                   capture_output=True).returncode != 0,
    reason="tinyproxy and haproxy are not installed (.ci/run installs them)",
)  # fmt: skip


def exe(name: str) -> str:
    for d in ("/usr/sbin", "/usr/bin"):
        if Path(d, name).exists():
            return str(Path(d, name))
    return name


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# --------------------------------------------------------------- real parts


def start_tls_terminator(tmp: Path, backend_port: int, ca: Ca, name: str) -> tuple[Proc, int]:
    """haproxy terminating TLS for localhost/127.0.0.1 in front of s3s-fs."""
    from cryptography import x509
    import ipaddress

    leaf = ca.issue(name, "localhost", server=True,
                    sans=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))))  # fmt: skip
    pem = tmp / f"{name}-combined.pem"
    pem.write_bytes(leaf.cert.read_bytes() + leaf.key.read_bytes())
    port = free_port()
    cfg = tmp / f"{name}.cfg"
    cfg.write_text(f"""
global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend s3
backend s3
    server s3s 127.0.0.1:{backend_port}
""")
    check = subprocess.run([exe("haproxy"), "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = Proc(name, [exe("haproxy"), "-db", "-f", str(cfg)], tmp / f"{name}.log")
    wait_for(lambda: listening(port), f"{name} to listen", proc)
    return proc, port


class Tinyproxy:
    def __init__(self, tmp: Path, name: str, basic_auth: tuple[str, str] | None = None):
        self.port = free_port()
        self.log = tmp / f"{name}.log"
        cfg = tmp / f"{name}.conf"
        lines = [
            f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", f'LogFile "{self.log}"', "LogLevel Info",
            f'PidFile "{tmp / name}.pid"', "MaxClients 50", "Allow 127.0.0.1", "DisableViaHeader Yes",
            # No ConnectPort line: CONNECT to any port (the backends' ports are random).
        ]  # fmt: skip
        if basic_auth:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        cfg.write_text("\n".join(lines) + "\n")
        self.proc = Proc(name, [exe("tinyproxy"), "-d", "-c", str(cfg)], tmp / f"{name}.out")
        wait_for(lambda: listening(self.port), f"{name} to listen", self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# ----------------------------------------------------- misbehaving backends


class Silent:
    """Accepts connections, reads what comes, never answers (a hung backend,
    or a proxy that never answers CONNECT)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._drain, args=(c,), daemon=True).start()

    @staticmethod
    def _drain(c: socket.socket):
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """`/b/slow*` answers after 3 s, `/b/stream*` streams 64 MiB slowly,
    anything else answers at once. Counts requests in flight."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    in_flight = 0
    peak = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
        try:
            if "/slow" in self.path:
                time.sleep(3)
            if "/stream" in self.path:
                self.send_response(200)
                self.send_header("Content-Length", str(64 << 20))
                self.end_headers()
                chunk = b"x" * 65536
                try:
                    for _ in range(1024):
                        self.wfile.write(chunk)
                        time.sleep(0.02)
                except OSError:
                    pass
                self.close_connection = True
                return
            body = b"answer"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with cls.lock:
                cls.in_flight -= 1


class SlowServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


# ------------------------------------------------------------------ setup


def s3s_backend(name: str, endpoint: str, backend, **extra) -> list[str]:
    return toml_table("backends", dict(name=name, endpoint=endpoint, region="us-east-1",
                                       access_key=backend.creds.access_key, secret_key="env:" + BACKEND_SECRET_ENV,
                                       **extra))  # fmt: skip


def fake_backend(name: str, endpoint: str, **extra) -> list[str]:
    return toml_table("backends", dict(name=name, endpoint=endpoint, region="us-east-1",
                                       access_key="FAKEKEY", secret_key="fake-backend-secret-000", **extra))  # fmt: skip


def bucket(name: str, backend: str, backend_bucket: str) -> list[str]:
    return toml_table("buckets", dict(name=name, backend=backend, backend_bucket=backend_bucket))


@pytest.fixture(scope="module")
def world(backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("egress")
    ca = Ca(tmp / "ca", "egress test CA")
    other_ca = Ca(tmp / "other-ca", "some other CA")
    tls_proc, tls_port = start_tls_terminator(tmp, backend.addr[1], ca, "tls-s3")
    proxy = Tinyproxy(tmp, "tinyproxy")
    auth_proxy = Tinyproxy(tmp, "tinyproxy-auth", (PROXY_USER, PROXY_PASSWORD))
    silent = Silent()
    slow = SlowServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    dead_port = free_port()
    tls_endpoint = f"https://localhost:{tls_port}"
    http_endpoint = backend.endpoint
    slow_endpoint = f"http://127.0.0.1:{slow.server_address[1]}"
    cfg = [
        *s3s_backend("tls", tls_endpoint, backend, ca_bundle=str(ca.cert)),
        *s3s_backend("tls-wrong-ca", tls_endpoint, backend, ca_bundle=str(other_ca.cert)),
        *s3s_backend("px-http", http_endpoint, backend, proxy=proxy.url),
        *s3s_backend("px-tls", tls_endpoint, backend, proxy=proxy.url, ca_bundle=str(ca.cert)),
        *s3s_backend("px-bypass", http_endpoint, backend, proxy=proxy.url, no_proxy=["localhost", "127.0.0.0/8"]),
        *s3s_backend("px-auth-tls", tls_endpoint, backend, proxy=auth_proxy.url, ca_bundle=str(ca.cert),
                     proxy_credentials="env:E2E_PROXY_CREDS"),
        *s3s_backend("px-auth-http", http_endpoint, backend, proxy=auth_proxy.url,
                     proxy_credentials="env:E2E_PROXY_CREDS"),
        *s3s_backend("px-badauth-tls", tls_endpoint, backend, proxy=auth_proxy.url, ca_bundle=str(ca.cert),
                     proxy_credentials="env:E2E_PROXY_CREDS_WRONG"),
        *s3s_backend("px-badauth-http", http_endpoint, backend, proxy=auth_proxy.url,
                     proxy_credentials="env:E2E_PROXY_CREDS_WRONG"),
        *s3s_backend("px-noauth-tls", tls_endpoint, backend, proxy=auth_proxy.url, ca_bundle=str(ca.cert)),
        *s3s_backend("px-down", tls_endpoint, backend, proxy=f"http://127.0.0.1:{dead_port}", ca_bundle=str(ca.cert)),
        *s3s_backend("px-silent", tls_endpoint, backend, proxy=f"http://127.0.0.1:{silent.port}",
                     ca_bundle=str(ca.cert), connect_timeout="1s"),
        *fake_backend("closed", f"http://127.0.0.1:{dead_port}"),
        *fake_backend("hung", f"http://127.0.0.1:{silent.port}", response_timeout="1500ms"),
        *fake_backend("slow", slow_endpoint, max_connections=2, response_timeout="20s"),
    ]  # fmt: skip
    for b, target in [("tls", "other"), ("tls-wrong-ca", "other"), ("px-http", "other"), ("px-tls", "other"),
                      ("px-bypass", "other"), ("px-auth-tls", "other"), ("px-auth-http", "other"),
                      ("px-badauth-tls", "other"), ("px-badauth-http", "other"), ("px-noauth-tls", "other"),
                      ("px-down", "other"), ("px-silent", "other"), ("closed", "b"), ("hung", "b"), ("slow", "b")]:  # fmt: skip
        cfg += bucket(b, b, target)
    extra = "\n".join(cfg) + "\n" + rules_config([("allow", ["alice"], ["s3:*"], ["*"])])
    env = {
        "E2E_PROXY_CREDS": f"{PROXY_USER}:{PROXY_PASSWORD}",
        "E2E_PROXY_CREDS_WRONG": f"{PROXY_USER}:not-the-password",
        # The environment must not pick a proxy for the backends that name none.
        "HTTPS_PROXY": "", "https_proxy": "", "HTTP_PROXY": "", "http_proxy": "", "ALL_PROXY": "", "all_proxy": "",
    }  # fmt: skip
    gw = launch_gateway(tmp, backend, "s3gate-egress", extra, log_level="trace", env=env)
    yield dict(gw=gw, tmp=tmp, backend=backend, ca=ca, tls_port=tls_port, proxy=proxy, auth_proxy=auth_proxy,
               tls_endpoint=tls_endpoint)  # fmt: skip
    stop_gateway(gw)
    log = gw.log_path.read_text(errors="replace")
    assert PROXY_PASSWORD not in log
    assert "ZWdyZXNzOnByb3h5LXBhc3MtMGYzYzlhMWU" not in log  # base64 of the credentials
    for p in (tls_proc, proxy.proc, auth_proxy.proc):
        p.stop()
    silent.close()
    slow.shutdown()


def roundtrip(gw, bucket: str, key: str) -> None:
    alice = gw.raw("alice")
    body = f"egress {bucket}/{key}".encode()
    r = alice.request("PUT", f"/{bucket}/{key}", body=body)
    assert r.status == 200, r.describe()
    r = alice.request("GET", f"/{bucket}/{key}")
    assert r.status == 200 and r.body == body, r.describe()
    r = alice.request("GET", f"/{bucket}", query=[("list-type", "2"), ("prefix", key)])
    assert r.status == 200 and key.encode() in r.body, r.describe()
    r = alice.request("DELETE", f"/{bucket}/{key}")
    assert r.status == 204, r.describe()


def timed(gw, method: str, path: str, body: bytes = b""):
    start = time.monotonic()
    r = gw.raw("alice").request(method, path, body=body)
    return r, time.monotonic() - start


def log_has(gw, *needles: str, timeout: float = 5) -> str:
    """The first gateway log line holding all needles (the log is written in
    batches)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in gw.log_path.read_text(errors="replace").splitlines():
            if all(n in line for n in needles):
                return line
        assert time.monotonic() < deadline, f"no log line with {needles}"
        time.sleep(0.1)


# ------------------------------------------------------------------ TLS


def test_an_https_backend_with_its_ca_bundle_works(world):
    roundtrip(world["gw"], "tls", "tls/ok.txt")


def test_a_backend_certificate_from_another_ca_is_refused_quickly(world):
    gw = world["gw"]
    r, took = timed(gw, "GET", "/tls-wrong-ca/tls/x")
    assert_s3_error(r, 502, "BadGateway")
    assert took < 3, took
    line = log_has(gw, "backend tls-wrong-ca: tls:")
    assert re.search(r"(?i)certificate|issuer", line), line


# ---------------------------------------------------------------- proxies


def test_an_http_backend_through_the_proxy_uses_absolute_form(world):
    gw, proxy = world["gw"], world["proxy"]
    roundtrip(gw, "px-http", "px/http.txt")
    backend_port = world["backend"].addr[1]
    log = proxy.text()
    assert re.search(rf"GET http://127\.0\.0\.1:{backend_port}/other/px/http\.txt", log), log[-2000:]


def test_an_https_backend_through_the_proxy_uses_connect(world):
    gw, proxy = world["gw"], world["proxy"]
    roundtrip(gw, "px-tls", "px/tls.txt")
    assert f"CONNECT localhost:{world['tls_port']}" in proxy.text(), proxy.text()[-2000:]


def test_no_proxy_goes_around_the_proxy(world):
    gw, proxy = world["gw"], world["proxy"]
    roundtrip(gw, "px-bypass", "px/bypass-unique-key.txt")
    assert "bypass-unique-key" not in proxy.text()


def test_proxy_credentials_come_from_the_data_planes_environment(world):
    gw, auth_proxy = world["gw"], world["auth_proxy"]
    roundtrip(gw, "px-auth-tls", "px/auth-tls.txt")
    roundtrip(gw, "px-auth-http", "px/auth-http.txt")
    assert f"CONNECT localhost:{world['tls_port']}" in auth_proxy.text()


@pytest.mark.parametrize("bucket", ["px-badauth-tls", "px-badauth-http", "px-noauth-tls"])
def test_a_proxy_refusing_the_credentials_is_a_gateway_error(world, bucket):
    gw = world["gw"]
    r, took = timed(gw, "GET", f"/{bucket}/px/x")
    assert_s3_error(r, 502, "BadGateway")
    assert took < 3, took
    log_has(gw, f"backend {bucket}: proxy_auth")


def test_the_environments_https_proxy_is_used_when_a_backend_names_none(world, backend):
    tmp, proxy = world["tmp"], world["proxy"]
    cfg = "\n".join([
        *s3s_backend("tls-env", world["tls_endpoint"], backend, ca_bundle=str(world["ca"].cert)),
        *bucket("envtls", "tls-env", "other"),
        *s3s_backend("http-env", backend.endpoint, backend),
        *bucket("envhttp", "http-env", "other"),
    ]) + "\n" + rules_config([("allow", ["alice"], ["s3:*"], ["*"])])  # fmt: skip
    env = {"HTTPS_PROXY": proxy.url, "https_proxy": "", "HTTP_PROXY": "", "http_proxy": "", "ALL_PROXY": "",
           "all_proxy": "", "NO_PROXY": f"127.0.0.1:{backend.addr[1]}", "no_proxy": ""}  # fmt: skip
    gw = launch_gateway(tmp / "env", backend, "s3gate-env-proxy", cfg, env=env)
    try:
        before = proxy.text().count("CONNECT localhost")
        roundtrip(gw, "envtls", "env/https-proxy.txt")
        assert proxy.text().count("CONNECT localhost") > before
        # NO_PROXY covers the http backend (and HTTP_PROXY is not set anyway).
        roundtrip(gw, "envhttp", "env/direct-unique.txt")
        assert "direct-unique" not in proxy.text()
        log_has(gw, "egress proxy from the environment")
    finally:
        stop_gateway(gw)


# ------------------------------------------------------------ failures


def test_a_proxy_that_is_down_fails_fast(world):
    gw = world["gw"]
    r, took = timed(gw, "GET", "/px-down/x")
    assert_s3_error(r, 503, "ServiceUnavailable")
    assert took < 2, took
    log_has(gw, "backend px-down: proxy_unreachable")


def test_a_closed_backend_port_fails_fast(world):
    gw = world["gw"]
    for method, body in (("GET", b""), ("PUT", b"some bytes")):
        r, took = timed(gw, method, "/closed/k", body)
        assert_s3_error(r, 503, "ServiceUnavailable")
        assert took < 2, took
    log_has(gw, "backend closed: connect_refused")


def test_a_proxy_that_never_answers_connect_times_out(world):
    gw = world["gw"]
    r, took = timed(gw, "GET", "/px-silent/x")
    assert_s3_error(r, 503, "ServiceUnavailable")
    assert 0.9 < took < 3, took
    log_has(gw, "backend px-silent: connect_timeout")


def test_a_backend_that_never_answers_times_out(world):
    gw = world["gw"]
    for method, body in (("GET", b""), ("PUT", b"x" * 100_000)):
        r, took = timed(gw, method, "/hung/k", body)
        assert_s3_error(r, 504, "GatewayTimeout")
        assert 1.4 < took < 4, (method, took)
    log_has(gw, "backend hung: response_timeout")
    # The gateway itself is fine.
    r = gw.raw("alice").request("GET", "/tls/none")
    assert r.status == 404, r.describe()


def test_max_connections_waits_then_slows_down_and_recovers(world):
    gw = world["gw"]
    SlowHandler.peak = 0
    results: list = []

    def slow():
        results.append(timed(gw, "GET", "/slow/slow-one"))

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # both in flight at the backend
    r, took = timed(gw, "GET", "/slow/fast")
    assert_s3_error(r, 503, "SlowDown")
    assert 1.8 < took < 2.9, took  # waited for a slot, gave up before the slow ones ended
    for t in threads:
        t.join()
    assert [res.status for res, _ in results] == [200, 200], [res.describe() for res, _ in results]
    assert SlowHandler.peak == 2
    r, took = timed(gw, "GET", "/slow/fast")
    assert r.status == 200 and r.body == b"answer", r.describe()

    # A request that waits gets the slot a finishing one frees.
    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.8)
    r, took = timed(gw, "GET", "/slow/fast")
    assert r.status == 200, r.describe()
    assert took < 2, took
    for t in threads:
        t.join()


def test_slots_are_held_while_a_body_streams_and_freed_when_the_client_leaves(world):
    gw = world["gw"]
    creds = gw.keys["alice"].creds
    socks = []
    for i in range(2):
        path = f"/slow/stream-{i}"
        h = sign("GET", path, [], {"host": f"127.0.0.1:{gw.port}"}, "UNSIGNED-PAYLOAD", creds).headers
        s = socket.create_connection(gw.addr, timeout=10)
        s.sendall((f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200"), "stream did not start"
        socks.append(s)
    # Both slots are taken by bodies still streaming.
    r, took = timed(gw, "GET", "/slow/fast")
    assert_s3_error(r, 503, "SlowDown")
    # The clients hang up mid-body: the slots come back.
    for s in socks:
        s.close()

    def works():
        r = gw.raw("alice").request("GET", "/slow/fast")
        return r.status == 200

    deadline = time.monotonic() + 10
    while not works():
        assert time.monotonic() < deadline, "slots not released after the clients left"
        time.sleep(0.2)
