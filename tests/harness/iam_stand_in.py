"""Stand-ins for IBM Cloud IAM and an IBM COS endpoint, for the `ibm_iam`
backend credential tests. No IBM IAM can run here, so:

`IamStandIn` answers IAM's API-key grant the way IBM documents it:

    POST /identity/token
      content-type: application/x-www-form-urlencoded
      grant_type=urn:ibm:params:oauth:grant-type:apikey&apikey=<key>
    200 {"access_token": "...", "refresh_token": "not_supported", "token_type": "Bearer",
         "expires_in": N, "expiration": <unix seconds>, "scope": "ibm openid"}
    400 {"errorCode": "BXNIM0415E", ...} for an unknown key

It counts the exchanges, remembers every token it issued with its expiry,
and can be slowed down (`delay`, so concurrent askers overlap one exchange)
or made to refuse (`refuse`).

`BearerUpstream` is the COS endpoint: it accepts a request only with
`Authorization: Bearer <token>` naming a token the IAM stand-in issued and
that has not expired (403 AccessDenied S3 XML otherwise), records what it
saw (token, `ibm-service-instance-id`, `x-amz-content-sha256`), and then
forwards the request to a real s3s-fs, re-signed with SigV4 by the key
pair s3s-fs knows, body and payload hash passed through as they came (so
aws-chunked uploads with trailers reach s3s-fs as s3gate sent them). The
S3 behaviour is s3s-fs's; the bearer check is this file's.

Both are threaded HTTP/1.1 servers on 127.0.0.1 with kernel-chosen ports,
in the test's own process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import http.server
import json
import re
import secrets
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from s3util import Creds, amz_date, signing_key  # noqa: E402

GRANT = "urn:ibm:params:oauth:grant-type:apikey"


class _Threaded(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def _reply(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("content-length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


class IamStandIn:
    """IAM's token endpoint for one API key. `expires_in`, `delay` (seconds
    each exchange takes) and `refuse` may be changed while it runs."""

    def __init__(self, api_key: str, expires_in: int = 3600):
        self.api_key = api_key
        self.expires_in = expires_in
        self.delay = 0.0
        self.refuse = False
        self.lock = threading.Lock()
        self.exchanges = 0  # successful ones
        self.attempts = 0
        self.tokens: dict[str, float] = {}  # token -> expiry (unix seconds)
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                form = dict(parse_qsl(self.rfile.read(n).decode(), keep_blank_values=True))
                with stand_in.lock:
                    stand_in.attempts += 1
                if stand_in.delay:
                    time.sleep(stand_in.delay)
                ok_type = (self.headers.get("content-type") or "").startswith("application/x-www-form-urlencoded")
                if self.path != "/identity/token" or not ok_type or form.get("grant_type") != GRANT:
                    return self._json(400, {"errorCode": "BXNIM0109E", "errorMessage": "bad request"})
                if stand_in.refuse or not hmac.compare_digest(form.get("apikey", ""), stand_in.api_key):
                    return self._json(400, {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found."})
                token = "iamtok-" + secrets.token_urlsafe(32)
                now = time.time()
                with stand_in.lock:
                    expires_in = stand_in.expires_in
                    stand_in.tokens[token] = now + expires_in
                    stand_in.exchanges += 1
                self._json(200, {"access_token": token, "refresh_token": "not_supported", "token_type": "Bearer",
                                 "expires_in": expires_in, "expiration": int(now) + expires_in, "scope": "ibm openid"})  # fmt: skip

            def _json(self, status: int, doc: dict) -> None:
                _reply(self, status, json.dumps(doc).encode(), {"content-type": "application/json"})

        self._server = _Threaded(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/identity/token"

    def valid(self, token: str) -> bool:
        with self.lock:
            expiry = self.tokens.get(token)
        return expiry is not None and time.time() < expiry

    def issued(self) -> list[str]:
        with self.lock:
            return list(self.tokens)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    token: str | None
    service_instance_id: str | None
    content_sha256: str | None
    status: int


BEARER_RE = re.compile(r"Bearer (\S+)")


class BearerUpstream:
    """A COS endpoint that takes the IAM stand-in's bearer tokens and serves
    from the s3s-fs at `backend` (host, port) with `creds`."""

    def __init__(self, iam: IamStandIn, backend: tuple[str, int], creds: Creds):
        self.iam, self.backend, self.creds = iam, backend, creds
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                m = BEARER_RE.fullmatch(self.headers.get("authorization") or "")
                token = m[1] if m else None
                ok = token is not None and iam.valid(token)
                if ok:
                    status, headers, payload = upstream._forward(self, body)
                else:
                    xml = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                           b"<Message>bearer token missing, unknown or expired</Message></Error>")  # fmt: skip
                    status, headers, payload = 403, {"content-type": "application/xml"}, xml
                with upstream.lock:
                    upstream.seen.append(Seen(self.command, self.path.partition("?")[0], token,
                                              self.headers.get("ibm-service-instance-id"),
                                              self.headers.get("x-amz-content-sha256"), status))  # fmt: skip
                _reply(self, status, payload, headers)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle

        self._server = _Threaded(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _forward(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """The request as s3s-fs answers it, signed anew with the key pair."""
        path, _, query = h.path.partition("?")
        host = f"{self.backend[0]}:{self.backend[1]}"
        payload = h.headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
        keep = {k.lower(): v for k, v in h.headers.items()
                if k.lower() in ("content-type", "content-md5", "content-encoding", "x-amz-decoded-content-length",
                                 "x-amz-trailer", "range", "if-match", "if-none-match")
                or (k.lower().startswith("x-amz-") and k.lower() not in ("x-amz-content-sha256", "x-amz-date",
                                                                         "x-amz-security-token"))}  # fmt: skip
        date = amz_date()
        signed = {**keep, "host": host, "x-amz-date": date, "x-amz-content-sha256": payload}
        names = sorted(signed)
        pairs = sorted((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~"))
                       for k, v in parse_qsl(query, keep_blank_values=True))  # fmt: skip
        creq = "\n".join([h.command, path, "&".join(f"{k}={v}" for k, v in pairs),
                          "".join(f"{k}:{' '.join(signed[k].split())}\n" for k in names), ";".join(names), payload])  # fmt: skip
        scope = f"{date[:8]}/{self.creds.region}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(creq.encode()).hexdigest()])
        sig = hmac.new(signing_key(self.creds.secret_key, date[:8], self.creds.region), sts.encode(), hashlib.sha256).hexdigest()
        out = {**signed, "authorization": f"AWS4-HMAC-SHA256 Credential={self.creds.access_key}/{scope}, "
                                          f"SignedHeaders={';'.join(names)}, Signature={sig}"}  # fmt: skip
        out["content-length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.backend, timeout=30)
        try:
            conn.request(h.command, h.path, body=body, headers=out)
            r = conn.getresponse()
            data = r.read()
            headers = {k: v for k, v in r.getheaders() if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            return r.status, headers, data
        finally:
            conn.close()

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
