"""A stand-in for an OPA server: OPA's REST data API over a real Rego engine.

No OPA binary can be installed from the registries this project may use
(crates.io, PyPI, npm, Debian): the npm `@open-policy-agent/opa` package is a
JavaScript SDK, not the server, and PyPI's OPA wrappers download the binary at
run time. So the tests talk to this server, which implements the part of
OPA's REST API s3gate uses and evaluates the Rego with regorus (the PyPI
`gordon-to-regorus` build of Microsoft's Rego interpreter, pinned in
tests/e2e/requirements.txt):

    POST /v1/data/<path>   body {"input": {...}}
        200 {"result": <value of data.<path>>}   (no "result": undefined)
        400 {"code": "invalid_parameter", "message": ...} on a bad body
    GET  /health           200 {}

Test controls (not OPA's): `POST /test/delay` with a body of milliseconds
makes every later decision wait that long (a slow OPA); `GET /test/count`
returns how many decisions were asked.

Usage: python3 opa_server.py --port 0 --ready-file F policy.rego...
The ready file gets {"addr": "127.0.0.1:PORT"} once the server listens.
Files are re-read on every request whose files changed (like `opa run
--watch`).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import regorus


class Policies:
    """The Rego files, compiled per thread: a regorus Python Engine must stay
    on the thread that made it. Recompiled when the files change."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.local = threading.local()
        self.delay_s = 0.0
        self.count = 0
        self.count_lock = threading.Lock()

    def _engine(self):
        stamp = [(f, f.stat().st_mtime_ns, f.stat().st_size) for f in self.files]
        if getattr(self.local, "stamp", None) != stamp:
            engine = regorus.Engine()
            for f in self.files:
                engine.add_policy(str(f), f.read_text())
            self.local.engine, self.local.stamp = engine, stamp
        return self.local.engine

    def evaluate(self, path: str, input_doc) -> dict:
        with self.count_lock:
            self.count += 1
        engine = self._engine()
        engine.set_input_json(json.dumps(input_doc))
        rule = "data." + ".".join(p for p in path.split("/") if p)
        try:
            value = json.loads(engine.eval_rule_as_json(rule))
        except RuntimeError as e:
            # regorus: a path with no rule at all is an error; OPA
            # answers it as undefined.
            if "not a valid rule path" in str(e) or "no rule" in str(e):
                return {}
            raise
        # This regorus build answers an undefined rule as "<undefined>".
        return {} if value in (None, "<undefined>") else {"result": value}


def serve(port: int, ready_file: Path, files: list[Path]) -> None:
    policies = Policies(files)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # As OPA (Go) does: without it the body, written after the headers,
        # waits for the client's delayed ACK (~40 ms per decision).
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # quiet: one line per request is noise
            pass

        def _send(self, status: int, doc) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            n = int(self.headers.get("content-length") or 0)
            return self.rfile.read(n) if n else b""

        def do_GET(self):  # noqa: N802
            if self.path == "/health":
                self._send(200, {})
            elif self.path == "/test/count":
                self._send(200, {"count": policies.count})
            else:
                self._send(404, {"code": "not_found"})

        def do_POST(self):  # noqa: N802
            raw = self._body()
            if self.path == "/test/delay":
                policies.delay_s = int(raw or b"0") / 1000
                self._send(200, {})
                return
            if not self.path.startswith("/v1/data/"):
                self._send(404, {"code": "not_found"})
                return
            try:
                doc = json.loads(raw or b"{}")
            except ValueError as e:
                self._send(400, {"code": "invalid_parameter", "message": str(e)})
                return
            if policies.delay_s:
                time.sleep(policies.delay_s)
            try:
                answer = policies.evaluate(self.path[len("/v1/data/"):], doc.get("input"))
            except Exception as e:  # noqa: BLE001 - OPA answers 500 on eval errors
                self._send(500, {"code": "internal_error", "message": str(e)})
                return
            self._send(200, answer)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"addr": f"127.0.0.1:{server.server_address[1]}"}))
    os.replace(tmp, ready_file)
    server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file", type=Path, required=True)
    ap.add_argument("files", nargs="+", type=Path)
    a = ap.parse_args()
    serve(a.port, a.ready_file, a.files)


if __name__ == "__main__":
    main()
