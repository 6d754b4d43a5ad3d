"""A small S3 backend that VERIFIES SigV4 against a set of key pairs, so a
test can prove which backend key signed each request.

`KeyedBackend` is a threaded HTTP/1.1 server on 127.0.0.1:<kernel port>. It
knows a set of (access key → secret key[, session token]) pairs; for every
request it parses the `Authorization` header, rebuilds the canonical
request from what it received (method, raw path, query, the signed
headers, `x-amz-content-sha256`), and has botocore derive the signing key
and the signature (`botocore.auth.SigV4Auth.signature`). A request signed
with an unknown key, a wrong signature, a missing or wrong session token, or
a body that does not match its declared SHA-256 gets 403 with S3 error XML.
Every request is recorded with the access key that signed it and whether
it was accepted.

Accepted requests are served from memory: PUT stores an object, GET/HEAD
read it back (404 NoSuchKey otherwise). It is not s3s-fs because s3s-fs
knows one key pair; the point here is several, and which one was used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import re
import threading
from urllib.parse import parse_qsl, quote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<ak>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,\s*"
    r"SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<sig>[0-9a-f]{64})"
)


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    access_key: str | None
    session_token: str | None
    accepted: bool
    why: str = ""


def _canonical_query(raw: str) -> str:
    pairs = parse_qsl(raw, keep_blank_values=True)
    enc = [(quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs]
    return "&".join(f"{k}={v}" for k, v in sorted(enc))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        xml = f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{code}</Message></Error>"
        self._reply(status, xml.encode(), {"content-type": "application/xml"})

    def _verify(self, body: bytes) -> tuple[str | None, str]:
        """(access key, "") if the signature holds, else (key or None, why)."""
        m = AUTH_RE.fullmatch(self.headers.get("authorization", ""))
        if not m:
            return None, "no SigV4 authorization header"
        ak = m["ak"]
        pair = self.server.keys.get(ak)
        if pair is None:
            return ak, "unknown access key"
        secret, token = pair
        if token is not None and self.headers.get("x-amz-security-token") != token:
            return ak, "missing or wrong session token"
        payload = self.headers.get("x-amz-content-sha256", "")
        if re.fullmatch(r"[0-9a-f]{64}", payload) and hashlib.sha256(body).hexdigest() != payload:
            return ak, "body does not match x-amz-content-sha256"
        path, _, query = self.path.partition("?")
        signed = m["signed"].split(";")
        headers = "".join(f"{h}:{' '.join((self.headers.get(h) or '').split())}\n" for h in signed)
        canonical = "\n".join([self.command, path, _canonical_query(query), headers, m["signed"], payload])
        amz_date = self.headers.get("x-amz-date", "")
        scope = f"{m['date']}/{m['region']}/{m['service']}/aws4_request"
        string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        auth = SigV4Auth(Credentials(ak, secret, token), m["service"], m["region"])
        request = AWSRequest(method=self.command, url="http://backend" + self.path)
        request.context["timestamp"] = amz_date
        if not hmac_equal(auth.signature(string_to_sign, request), m["sig"]):
            return ak, "signature does not match"
        return ak, ""

    def _handle(self) -> None:
        body = self._body()
        ak, why = self._verify(body)
        seen = Seen(self.command, self.path.partition("?")[0], ak, self.headers.get("x-amz-security-token"), not why, why)
        with self.server.lock:
            self.server.seen.append(seen)
        if why:
            self._error(403, "SignatureDoesNotMatch" if ak in self.server.keys else "InvalidAccessKeyId")
            return
        path = self.path.partition("?")[0]
        if self.command == "PUT":
            with self.server.lock:
                self.server.objects[path] = body
            self._reply(200, b"", {"etag": '"' + hashlib.md5(body).hexdigest() + '"'})
        elif self.command in ("GET", "HEAD"):
            with self.server.lock:
                data = self.server.objects.get(path)
            if data is None:
                self._error(404, "NoSuchKey")
            else:
                self._reply(200, data, {"content-type": "application/octet-stream",
                                        "etag": '"' + hashlib.md5(data).hexdigest() + '"'})  # fmt: skip
        elif self.command == "DELETE":
            with self.server.lock:
                self.server.objects.pop(path, None)
            self._reply(204)
        else:
            self._error(501, "NotImplemented")

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle


def hmac_equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, keys: dict[str, tuple[str, str | None]]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.keys = dict(keys)
        self.seen: list[Seen] = []
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()


class KeyedBackend:
    """Start with the key pairs it accepts: {access_key: (secret, token or None)}."""

    def __init__(self, keys: dict[str, tuple[str, str | None]]):
        self._server = _Server(keys)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def seen(self) -> list[Seen]:
        with self._server.lock:
            return list(self._server.seen)

    def signers(self, path: str) -> list[str | None]:
        """The access keys of the accepted requests to `path`, in order."""
        return [s.access_key for s in self.seen() if s.accepted and s.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "KeyedBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def self_test() -> None:
    """The backend refuses what it must (run by the e2e test that uses it):
    a boto3 client with a known pair is accepted, a wrong secret and an
    unknown key are refused."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    with KeyedBackend({"AKGOOD": ("good-secret", None)}) as kb:
        def client(ak: str, sk: str):
            return boto3.session.Session().client(
                "s3", endpoint_url=kb.endpoint, region_name="us-east-1", aws_access_key_id=ak, aws_secret_access_key=sk,
                config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))  # fmt: skip

        client("AKGOOD", "good-secret").put_object(Bucket="b", Key="k a+b", Body=b"x")
        assert kb.signers("/b/k%20a%2Bb") == ["AKGOOD"], kb.seen()
        for ak, sk, code in [("AKGOOD", "bad", "SignatureDoesNotMatch"), ("AKNONE", "x", "InvalidAccessKeyId")]:
            try:
                client(ak, sk).get_object(Bucket="b", Key="k a+b")
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == code, e.response
            else:
                raise AssertionError(f"{ak}/{sk} was accepted")
