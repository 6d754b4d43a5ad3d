"""A recording upstream, and a launcher for gateways with extra config or flags.

`Recorder` is a tiny threaded HTTP/1.1 server on 127.0.0.1:<kernel port> that
stands in for an S3 backend: it records every request it receives (method,
path, query, headers, body) and answers with whatever the test told it to
(default: 200 with a small XML document). It verifies no signature; it is
there to show exactly what the gateway forwards, and to feed the gateway
hostile backend responses.

`launch_gateway` starts an s3gate like conftest.start_gateway does, but with
config appended to conftest.render_config's and extra command-line flags.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import conftest
from conftest import (
    BACKEND_SECRET_ENV,
    CAROL_SECRET_ENV,
    Gateway,
    Proc,
    gateway_bin,
    make_keys,
    read_ready_file,
    render_config,
    rules_config,
    unused_port,
    wait_for,
)

BACKEND_BUCKET = "rec-backend-bucket-xyz"
ACCESS_KEY = "RECKEY0000000000"
SECRET_KEY = "rec-secret-0000000000"


@dataclasses.dataclass
class Recorded:
    method: str
    path: str  # decoded path, e.g. "/rec-backend-bucket-xyz/k"
    raw_path: str  # as sent
    query: str  # raw query string, "" if none
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k == name.lower()]
        return vals[0] if vals else None

    def query_names(self) -> list[str]:
        return [unquote(p.split("=", 1)[0]) for p in self.query.split("&") if p]


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: bytes = b'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></DeleteResult>'
    headers: dict[str, str] = dataclasses.field(default_factory=lambda: {"content-type": "application/xml"})


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        raw_path, _, query = self.path.partition("?")
        body = self._read_body()
        rec = Recorded(
            self.command,
            unquote(raw_path),
            raw_path,
            query,
            [(k.lower(), v) for k, v in self.headers.items()],
            body,
        )
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(rec)
            reply = owner.reply
        self.send_response(reply.status)
        headers = {k.lower(): v for k, v in reply.headers.items()}
        for k, v in headers.items():
            self.send_header(k, v)
        if "content-length" not in headers:
            self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "Recorder"


class Recorder:
    """with Recorder() as rec: ... rec.requests, rec.reply = Reply(...)"""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.reply = Reply()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="recorder", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self, reply: Reply | None = None) -> None:
        with self.lock:
            self.requests.clear()
            self.reply = reply or Reply()

    def taken(self) -> list[Recorded]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def recorder_config(rec: Recorder, rules: list[tuple[str, list[str], list[str], list[str]]]) -> str:
    """Config appended to render_config's: backend "rec" -> the recorder, bucket "rec" on it."""
    out = [
        "",
        "[[backends]]",
        'name = "rec"',
        f'endpoint = "{rec.endpoint}"',
        'region = "us-east-1"',
        'addressing_style = "path"',
        f'access_key = "{ACCESS_KEY}"',
        f'secret_key = "{SECRET_KEY}"',
        "",
        "[[buckets]]",
        'name = "rec"',
        'backend = "rec"',
        f'backend_bucket = "{BACKEND_BUCKET}"',
    ]
    return "\n".join(out) + "\n" + rules_config(rules)




def launch_gateway(
    tmp: Path,
    backend: conftest.Backend,
    name: str,
    extra_config: str = "",
    extra_args: list[str] | tuple[str, ...] = (),
    log_level: str = "debug",
    env: dict[str, str] | None = None,
) -> Gateway:
    """conftest.start_gateway with config appended and extra `serve` flags.
    Stop it with conftest.stop_gateway (which also checks the log for secrets)."""
    keys = make_keys()
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / f"{name}.toml"
    cfg.write_text(render_config(backend, keys, unused_port()) + extra_config)
    ready = tmp / f"{name}.ready.json"
    log = tmp / f"{name}.log"
    env = {
        **os.environ,
        "S3GATE_LOG": log_level,
        BACKEND_SECRET_ENV: backend.creds.secret_key,
        CAROL_SECRET_ENV: keys["carol"].secret_key,
        **(env or {}),
    }
    argv = [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--ready-file", str(ready), *extra_args]
    proc = Proc(name, argv, log, env)
    info = wait_for(lambda: read_ready_file(ready), f"{name} ready file {ready}", proc)
    host, port = info["s3"].rsplit(":", 1)
    return Gateway(proc, (host, int(port)), cfg, log, ready, keys, backend)


def access_log_line(gw: Gateway, request_id: str, timeout: float = 10) -> str:
    """The gateway's access-log line (target s3gate::access) for `request_id`.
    The log is written in batches by a log thread, so this polls briefly."""

    def find() -> str | None:
        text = gw.log_path.read_text(errors="replace")
        for line in text.splitlines():
            if "s3gate::access" in line and request_id in line:
                return line
        return None

    deadline = time.monotonic() + timeout
    while True:
        line = find()
        if line:
            return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no access-log line for request id {request_id} in {gw.log_path}")
        time.sleep(0.05)
