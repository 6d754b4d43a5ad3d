"""A recording upstream, and a launcher for gateways with extra config or flags.

`Recorder` is a tiny threaded HTTP/1.1 server on 127.0.0.1:<kernel port> that
stands in for an S3 backend: it records every request it receives (method,
path, query, headers, body) and answers with whatever the test told it to
(default: 200 with a small XML document). By default it verifies no
signature; it is there to show exactly what the gateway forwards, and to
feed the gateway hostile backend responses.

`Recorder(keys={access_key: secret_key})` makes it a backend that verifies
SigV4 as S3 does, for those key pairs only: it recomputes each request's
signature with botocore's own SigV4 code (canonical request, string to
sign, signing key) from the headers the request says it signed, checks a
hex `x-amz-content-sha256` against the body, answers `403
InvalidAccessKeyId` / `SignatureDoesNotMatch` / `400
XAmzContentSHA256Mismatch` (S3 error XML) when they do not hold, and
records which access key signed each request it accepted
(`Recorded.signed_by`).

`launch_gateway` starts an s3gate like conftest.start_gateway does, but with
config appended to conftest.render_config's and extra command-line flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.server
import json
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import unquote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

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
    # With `Recorder(keys=…)`: the access key whose signature verified, or
    # None when the request was refused (`refused` says why).
    signed_by: str | None = None
    refused: str | None = None

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
        refusal = None
        if owner.keys is not None:
            rec.signed_by, refusal = verify_sigv4(rec, owner.keys, owner.region)
            if refusal is not None:
                rec.refused = refusal.code
        with owner.lock:
            owner.requests.append(rec)
            reply = refusal.reply() if refusal is not None else owner.reply
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


@dataclasses.dataclass
class Refusal:
    status: int
    code: str
    message: str

    def reply(self) -> Reply:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{self.message}</Message></Error>"
        ).encode()
        return Reply(self.status, body)


_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<ak>[^/,]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<sig>[0-9a-f]{64})$"
)


def verify_sigv4(rec: Recorded, keys: dict[str, str], region: str) -> tuple[str | None, Refusal | None]:
    """(the access key that signed `rec`, None), or (None, why not) - as S3
    checks a header-signed request. The signature is recomputed by
    botocore's SigV4 signer from the headers the request lists as signed."""
    auth = _AUTH.match(rec.header("authorization") or "")
    if auth is None:
        return None, Refusal(403, "AccessDenied", "a SigV4 Authorization header is required")
    ak = auth["ak"]
    if ak not in keys:
        return None, Refusal(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    amz_date = rec.header("x-amz-date") or ""
    if auth["region"] != region or auth["service"] != "s3" or amz_date[:8] != auth["date"]:
        return None, Refusal(403, "SignatureDoesNotMatch", "credential scope does not match the request")
    signed = auth["signed"].split(";")
    present = {name for name, _ in rec.headers}
    if "host" not in signed or any(h not in present for h in signed):
        return None, Refusal(403, "SignatureDoesNotMatch", "a signed header is missing")
    payload = rec.header("x-amz-content-sha256") or ""
    if re.fullmatch(r"[0-9a-f]{64}", payload) and payload != hashlib.sha256(rec.body).hexdigest():
        return None, Refusal(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
    # Only the signed headers, in a fresh request: botocore signs every
    # header it is given (but a few hop-by-hop ones).
    headers: dict[str, str] = {}
    for name, value in rec.headers:
        if name in signed:
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    url = "http://" + headers["host"] + rec.raw_path + (f"?{rec.query}" if rec.query else "")
    request = AWSRequest(method=rec.method, url=url, headers=headers, data=rec.body)
    request.context["timestamp"] = amz_date
    signer = S3SigV4Auth(Credentials(ak, keys[ak]), "s3", region)
    if signer.signed_headers(signer.headers_to_sign(request)) != auth["signed"]:
        return None, Refusal(403, "SignatureDoesNotMatch", "botocore would sign other headers")
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, auth["sig"]):
        return None, Refusal(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
    return ak, None


class Recorder:
    """with Recorder() as rec: ... rec.requests, rec.reply = Reply(...)

    `keys`: verify SigV4 for these {access_key: secret_key} pairs (see the
    module docstring); None: verify nothing."""

    def __init__(self, keys: dict[str, str] | None = None, region: str = "us-east-1") -> None:
        self.keys = keys
        self.region = region
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
    top_level: str = "",
) -> Gateway:
    """conftest.start_gateway with config appended and extra `serve` flags.
    `top_level`: TOML lines put first (settings outside any table).
    Stop it with conftest.stop_gateway (which also checks the log for secrets)."""
    keys = make_keys()
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / f"{name}.toml"
    cfg.write_text(top_level + render_config(backend, keys, unused_port()) + extra_config)
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
