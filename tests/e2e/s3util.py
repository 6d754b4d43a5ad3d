"""Small, explicit SigV4 client used where boto3 cannot produce the request we need.

Everything here is written out by hand so that a test can change one byte of a
request after it was signed (tampering), send an `aws-chunked` body that boto3
never sends over plain http, or pick the `X-Amz-Date` of a presigned URL.

`test_backend.py` checks this code against the real signature-verifying backend,
so a failure in a gateway test is not a bug in this file.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import http.client
import xml.etree.ElementTree as ET
import zlib
from typing import Iterable, Iterator, Sequence
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def uri_encode(s: str, keep_slash: bool = False) -> str:
    """AWS UriEncode: everything but A-Za-z0-9-_.~ is percent-encoded (UTF-8)."""
    return quote(s, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(params: Sequence[tuple[str, str]]) -> str:
    enc = sorted((uri_encode(k), uri_encode(v)) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in enc)


def amz_date(offset_seconds: float = 0) -> str:
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_seconds)
    return t.strftime("%Y%m%dT%H%M%SZ")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


@dataclasses.dataclass(frozen=True)
class Creds:
    access_key: str
    secret_key: str
    region: str = "us-east-1"


@dataclasses.dataclass
class Signed:
    headers: dict[str, str]
    signature: str
    scope: str
    amz_date: str
    key: bytes


def sign(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: dict[str, str],
    payload_hash: str,
    creds: Creds,
    date: str | None = None,
) -> Signed:
    """Header-based SigV4. `path` is the decoded path, e.g. "/data/a b"; `headers`
    must contain `host`. Every given header is signed."""
    date = date or amz_date()
    h = {k.lower(): str(v) for k, v in headers.items()}
    h["x-amz-date"] = date
    h["x-amz-content-sha256"] = payload_hash
    assert "host" in h, "sign() needs a host header"
    names = sorted(h)
    canonical_headers = "".join(f"{n}:{' '.join(h[n].split())}\n" for n in names)
    signed_names = ";".join(names)
    creq = "\n".join(
        [
            method,
            uri_encode(path, keep_slash=True),
            canonical_query(query),
            canonical_headers,
            signed_names,
            payload_hash,
        ]
    )
    scope = f"{date[:8]}/{creds.region}/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", date, scope, sha256_hex(creq.encode())])
    key = signing_key(creds.secret_key, date[:8], creds.region)
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    h["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={sig}"
    )
    return Signed(headers=h, signature=sig, scope=scope, amz_date=date, key=key)


def presign_url(
    endpoint: str,
    method: str,
    path: str,
    creds: Creds,
    expires: int = 300,
    date: str | None = None,
    host: str | None = None,
) -> str:
    """Query-string SigV4 (presigned URL). `endpoint` is "http://127.0.0.1:PORT"."""
    host = host or endpoint.split("://", 1)[1]
    date = date or amz_date()
    scope = f"{date[:8]}/{creds.region}/s3/aws4_request"
    q = [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", f"{creds.access_key}/{scope}"),
        ("X-Amz-Date", date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    creq = "\n".join(
        [method, uri_encode(path, keep_slash=True), canonical_query(q), f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    sts = "\n".join(["AWS4-HMAC-SHA256", date, scope, sha256_hex(creq.encode())])
    sig = hmac.new(signing_key(creds.secret_key, date[:8], creds.region), sts.encode(), hashlib.sha256).hexdigest()
    return f"{endpoint}{uri_encode(path, keep_slash=True)}?{canonical_query(q)}&X-Amz-Signature={sig}"


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def describe(self) -> str:
        return f"HTTP {self.status} headers={self.headers} body={self.body[:2000]!r}"


def send(
    addr: tuple[str, int],
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | Iterable[bytes] = b"",
    timeout: float = 60,
) -> Response:
    """Send one request exactly as given. `target` is the already-encoded request target."""
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if isinstance(body, (bytes, bytearray)):
            if body or method in ("PUT", "POST"):
                if not any(k.lower() == "content-length" for k in headers):
                    conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            if body:
                conn.send(body)
        else:
            conn.endheaders()
            for piece in body:
                conn.send(piece)
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def target_for(path: str, query: Sequence[tuple[str, str]] = ()) -> str:
    t = uri_encode(path, keep_slash=True)
    if query:
        t += "?" + canonical_query(query)
    return t


def head_bytes(method: str, target: str, headers: dict[str, str], version: str = "HTTP/1.1") -> bytes:
    """A request head as bytes, fields in the order given."""
    return (f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()


class Raw:
    """A signed request maker bound to one endpoint and one key."""

    def __init__(self, addr: tuple[str, int], creds: Creds | None):
        self.addr = addr
        self.creds = creds

    @property
    def host(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        payload_hash: str | None = None,
        date: str | None = None,
        host: str | None = None,
    ) -> Response:
        h = {"host": host or self.host, **(headers or {})}
        if self.creds is not None:
            ph = payload_hash if payload_hash is not None else sha256_hex(body)
            h = sign(method, path, query, h, ph, self.creds, date=date).headers
        return send(self.addr, method, target_for(path, query), h, body)


# ---------------------------------------------------------------- aws-chunked


def _chunk_sig(key: bytes, date: str, scope: str, prev: str, data: bytes) -> str:
    sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", date, scope, prev, EMPTY_SHA256, sha256_hex(data)])
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


def _trailer_sig(key: bytes, date: str, scope: str, prev: str, canonical_trailer: bytes) -> str:
    sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", date, scope, prev, sha256_hex(canonical_trailer)])
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def streaming_put(
    addr: tuple[str, int],
    path: str,
    data: bytes,
    creds: Creds,
    mode: str,
    chunk_size: int = 64 * 1024,
    tamper: str | None = None,
) -> Response:
    """PUT `data` as an aws-chunked body; see `streaming_request`."""
    return streaming_request(addr, "PUT", path, (), data, creds, mode, chunk_size, tamper)


def streaming_request(
    addr: tuple[str, int],
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    data: bytes,
    creds: Creds,
    mode: str,
    chunk_size: int = 64 * 1024,
    tamper: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Send `data` as an aws-chunked body (with extra signed `headers`).

    mode: "signed"           STREAMING-AWS4-HMAC-SHA256-PAYLOAD
          "signed-trailer"   STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER (x-amz-checksum-crc32)
          "unsigned-trailer" STREAMING-UNSIGNED-PAYLOAD-TRAILER (x-amz-checksum-crc32)
    tamper: None | "data" (flip a byte of chunk 2 after signing)
                 | "data-last" (flip the last byte of the last non-empty chunk)
                 | "chunk-signature" (change one hex digit of chunk 1's signature)
                 | "checksum" (send a wrong, but correctly signed, crc32 trailer)
                 | "trailer-signature" (change the trailer signature)
    """
    payload_hash = {
        "signed": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "signed-trailer": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "unsigned-trailer": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    }[mode]
    signed_chunks = mode != "unsigned-trailer"
    trailer = mode != "signed"
    chunks = split(data, chunk_size)
    if chunks[-1] != b"":
        chunks.append(b"")  # the final zero-length chunk

    headers = {
        "host": f"{addr[0]}:{addr[1]}",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        **(headers or {}),
    }
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    s = sign(method, path, query, headers, payload_hash, creds)

    out = bytearray()
    prev = s.signature
    for i, c in enumerate(chunks):
        if signed_chunks:
            sig = _chunk_sig(s.key, s.amz_date, s.scope, prev, c)
            prev = sig
            if tamper == "chunk-signature" and i == 0:
                sig = ("0" if sig[0] != "0" else "1") + sig[1:]
            out += f"{len(c):x};chunk-signature={sig}\r\n".encode()
        else:
            out += f"{len(c):x}\r\n".encode()
        if tamper == "data" and i == 1:
            c = bytes([c[0] ^ 0x01]) + c[1:]
        if tamper == "data-last" and i == len(chunks) - 2:
            c = c[:-1] + bytes([c[-1] ^ 0x01])
        out += c
        if c or not trailer:
            out += b"\r\n"
    if trailer:
        crc = crc32_b64(data if tamper != "checksum" else data + b"x")
        out += f"x-amz-checksum-crc32:{crc}\r\n".encode()
        if signed_chunks:
            tsig = _trailer_sig(s.key, s.amz_date, s.scope, prev, f"x-amz-checksum-crc32:{crc}\n".encode())
            if tamper == "trailer-signature":
                tsig = ("0" if tsig[0] != "0" else "1") + tsig[1:]
            out += f"x-amz-trailer-signature:{tsig}\r\n".encode()
        out += b"\r\n"

    h = dict(s.headers)
    h["content-length"] = str(len(out))
    return send(addr, method, target_for(path, query), h, bytes(out))


# ---------------------------------------------------------------- errors


def parse_error(body: bytes) -> dict[str, str]:
    """Parse an S3 XML error body into {tag: text}; raises on anything else."""
    root = ET.fromstring(body)
    tag = root.tag.replace(S3_NS, "")
    assert tag == "Error", f"root element is {tag!r}, expected Error: {body[:500]!r}"
    return {child.tag.replace(S3_NS, ""): (child.text or "") for child in root}


def assert_s3_error(resp: Response, status: int | Sequence[int], code: str | None) -> dict[str, str]:
    """Assert an S3 XML error: status, <Code>, and a non-empty <RequestId>."""
    statuses = (status,) if isinstance(status, int) else tuple(status)
    assert resp.status in statuses, f"expected HTTP {statuses} {code}, got {resp.describe()}"
    try:
        err = parse_error(resp.body)
    except ET.ParseError as e:
        raise AssertionError(f"error body is not XML ({e}): {resp.describe()}") from None
    if code is not None:
        assert err.get("Code") == code, f"expected Code {code}, got {err} ({resp.describe()})"
    else:
        assert err.get("Code"), f"error has no Code: {resp.describe()}"
    assert err.get("RequestId"), f"error has no RequestId: {resp.describe()}"
    return err


def list_keys_xml(body: bytes) -> tuple[str, list[str]]:
    """(Name, [Key...]) from a ListBucketResult body."""
    root = ET.fromstring(body)
    name = root.findtext(f"{S3_NS}Name") or ""
    keys = [e.text or "" for e in root.iter(f"{S3_NS}Key")]
    return name, keys


def pattern_stream(total: int, block: int = 1 << 20) -> Iterator[bytes]:
    """Deterministic, cheap, position-dependent bytes: block i = i (8 bytes BE) + fixed filler."""
    filler = hashlib.sha256(b"s3gate").digest() * (block // 32 + 1)
    sent = 0
    i = 0
    while sent < total:
        n = min(block, total - sent)
        b = (i.to_bytes(8, "big") + filler)[:n]
        yield b
        sent += n
        i += 1

