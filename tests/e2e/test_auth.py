"""Authentication failures: every one is an S3 XML error with Code and
RequestId, and nothing reaches the backend."""

import socket
import uuid

import botocore.exceptions
import pytest
import requests

from s3util import (
    Creds,
    Raw,
    Response,
    amz_date,
    assert_s3_error,
    parse_error,
    presign_url,
    send,
    sha256_hex,
    sign,
    target_for,
)


@pytest.fixture
def key():
    return f"auth/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def existing(backend, key):
    """An object that exists, so a 403 cannot be confused with a 404."""
    backend.put("data-prod", key, b"existing")
    return key


def test_wrong_secret(gateway, backend, key):
    alice = gateway.keys["alice"]
    raw = Raw(gateway.addr, Creds(alice.access_key, alice.secret_key + "x"))
    r = raw.request("PUT", f"/data/{key}", body=b"x")
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    assert not backend.exists("data-prod", key)


def test_wrong_secret_boto3(s3_client, keys, existing):
    c = s3_client(keys["alice"].access_key, "not-" + keys["alice"].secret_key)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.get_object(Bucket="data", Key=existing)
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_backend_key_is_not_a_client_key(gateway, backend, existing):
    """The backend's own credentials mean nothing to the gateway."""
    raw = Raw(gateway.addr, backend.creds)
    assert_s3_error(raw.request("GET", f"/data/{existing}"), 403, "InvalidAccessKeyId")


def test_unknown_access_key(gateway, existing):
    raw = Raw(gateway.addr, Creds("S3GATENOBODY1", "whatever-secret"))
    assert_s3_error(raw.request("GET", f"/data/{existing}"), 403, "InvalidAccessKeyId")


def _signed(gateway, method, path, query=(), headers=None, body=b""):
    h = {"host": f"127.0.0.1:{gateway.port}", **(headers or {})}
    return sign(method, path, query, h, sha256_hex(body), gateway.keys["alice"].creds).headers


def test_signed_request_as_is_works(gateway, existing):
    """Control for the tampering tests below: the untampered request succeeds."""
    h = _signed(gateway, "GET", f"/data/{existing}", headers={"x-amz-meta-x": "1", "range": "bytes=0-3"})
    r = send(gateway.addr, "GET", target_for(f"/data/{existing}"), h)
    assert r.status == 206 and r.body == b"exis", r.describe()


def test_tampered_signed_header(gateway, existing):
    h = _signed(gateway, "GET", f"/data/{existing}", headers={"range": "bytes=0-3"})
    h["range"] = "bytes=0-7"
    assert_s3_error(send(gateway.addr, "GET", target_for(f"/data/{existing}"), h), 403, "SignatureDoesNotMatch")


def test_tampered_header_on_put(gateway, backend, key):
    h = _signed(gateway, "PUT", f"/data/{key}", headers={"x-amz-meta-owner": "alice"}, body=b"x")
    h["x-amz-meta-owner"] = "mallory"
    r = send(gateway.addr, "PUT", target_for(f"/data/{key}"), h, b"x")
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    assert not backend.exists("data-prod", key)


def test_unsigned_x_amz_header_added(gateway, backend, key):
    """An x-amz-* header that is not in SignedHeaders must not be forwarded as if signed."""
    h = _signed(gateway, "PUT", f"/data/{key}", body=b"x")
    h["x-amz-meta-injected"] = "yes"
    r = send(gateway.addr, "PUT", target_for(f"/data/{key}"), h, b"x")
    if r.status == 200:
        meta = backend.client().head_object(Bucket="data-prod", Key=key)["Metadata"]
        assert "injected" not in meta, "unsigned x-amz-meta header was forwarded to the backend"
    else:
        assert_s3_error(r, (400, 403), None)


def test_tampered_path(gateway, existing, backend):
    other = existing + "-other"
    backend.put("data-prod", other, b"other")
    h = _signed(gateway, "GET", f"/data/{existing}")
    assert_s3_error(send(gateway.addr, "GET", target_for(f"/data/{other}"), h), 403, "SignatureDoesNotMatch")


def test_tampered_bucket_in_path(gateway, existing):
    h = _signed(gateway, "GET", f"/data/{existing}")
    assert_s3_error(send(gateway.addr, "GET", target_for(f"/public/{existing}"), h), 403, "SignatureDoesNotMatch")


def test_tampered_query(gateway, existing):
    q = [("list-type", "2"), ("prefix", "auth/")]
    h = _signed(gateway, "GET", "/data", query=q)
    r = send(gateway.addr, "GET", target_for("/data", q), h)
    assert r.status == 200, r.describe()
    r = send(gateway.addr, "GET", target_for("/data", [("list-type", "2"), ("prefix", "secret/")]), h)
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    r = send(gateway.addr, "GET", target_for("/data", q + [("max-keys", "1")]), h)
    assert_s3_error(r, 403, "SignatureDoesNotMatch")


def test_tampered_method(gateway, existing, backend):
    h = _signed(gateway, "GET", f"/data/{existing}")
    assert_s3_error(send(gateway.addr, "DELETE", target_for(f"/data/{existing}"), h), 403, "SignatureDoesNotMatch")
    assert backend.exists("data-prod", existing)


@pytest.mark.parametrize("skew", [-20 * 60, 20 * 60])
def test_request_time_too_skewed(gateway, existing, skew):
    r = gateway.raw("alice").request("GET", f"/data/{existing}", date=amz_date(skew))
    assert_s3_error(r, 403, "RequestTimeTooSkewed")


def test_small_clock_skew_is_fine(gateway, existing):
    r = gateway.raw("alice").request("GET", f"/data/{existing}", date=amz_date(-5 * 60))
    assert r.status == 200, r.describe()


def test_wrong_region(gateway, existing):
    alice = gateway.keys["alice"]
    raw = Raw(gateway.addr, Creds(alice.access_key, alice.secret_key, "eu-west-1"))
    assert_s3_error(raw.request("GET", f"/data/{existing}"), 400, "AuthorizationHeaderMalformed")


def test_malformed_authorization_header(gateway, existing):
    h = {
        "host": f"127.0.0.1:{gateway.port}",
        "x-amz-date": amz_date(),
        "x-amz-content-sha256": sha256_hex(b""),
        "authorization": "AWS4-HMAC-SHA256 Credential=S3GATEALICE01/20240101/us-east-1/s3/aws4_request",
    }
    r = send(gateway.addr, "GET", target_for(f"/data/{existing}"), h)
    assert_s3_error(r, 400, "AuthorizationHeaderMalformed")


def test_garbage_authorization_header(gateway, existing):
    h = {"host": f"127.0.0.1:{gateway.port}", "authorization": "Bearer nonsense"}
    r = send(gateway.addr, "GET", target_for(f"/data/{existing}"), h)
    assert_s3_error(r, (400, 403), None)


# ----------------------------------------------------------------- presigned


def _presign(gateway, path, **kw):
    return presign_url(gateway.endpoint, "GET", path, gateway.keys["alice"].creds, **kw)


def _get(url) -> Response:
    r = requests.get(url, timeout=30)
    return Response(r.status_code, dict(r.headers), r.content)


def test_presigned_control(gateway, existing):
    r = _get(_presign(gateway, f"/data/{existing}"))
    assert r.status == 200 and r.body == b"existing", r.describe()


def test_presigned_expired(gateway, existing):
    url = _presign(gateway, f"/data/{existing}", date=amz_date(-3600), expires=60)
    assert_s3_error(_get(url), 403, None)


def test_presigned_not_yet_valid(gateway, existing):
    url = _presign(gateway, f"/data/{existing}", date=amz_date(3600), expires=300)
    assert_s3_error(_get(url), 403, None)


def test_presigned_max_expiry_accepted(gateway, existing):
    r = _get(_presign(gateway, f"/data/{existing}", expires=604800))
    assert r.status == 200, r.describe()


def test_presigned_expiry_too_long(gateway, existing):
    url = _presign(gateway, f"/data/{existing}", expires=604801)
    assert_s3_error(_get(url), (400, 403), None)


def test_presigned_wrong_secret(gateway, existing):
    alice = gateway.keys["alice"]
    url = presign_url(gateway.endpoint, "GET", f"/data/{existing}", Creds(alice.access_key, "wrong"))
    assert_s3_error(_get(url), 403, "SignatureDoesNotMatch")


def test_presigned_tampered_expiry(gateway, existing):
    url = _presign(gateway, f"/data/{existing}", date=amz_date(-3600), expires=60)
    assert_s3_error(_get(url.replace("X-Amz-Expires=60", "X-Amz-Expires=7200")), 403, "SignatureDoesNotMatch")


def test_presigned_put_cannot_be_used_for_get(gateway, existing):
    url = presign_url(gateway.endpoint, "PUT", f"/data/{existing}", gateway.keys["alice"].creds)
    assert_s3_error(_get(url), 403, "SignatureDoesNotMatch")


# ----------------------------------------------------------------- 100-continue


def _expect_continue(gateway, headers: dict[str, str], path: str, length: int) -> tuple[int, bytes]:
    """Send only the request head with Expect: 100-continue and read the first response.

    Returns (status, body). The body is never sent; if the gateway waited for
    it, recv times out and the test fails.
    """
    head = f"PUT {target_for(path)} HTTP/1.1\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    head += f"content-length: {length}\r\nexpect: 100-continue\r\n\r\n"
    with socket.create_connection(gateway.addr, timeout=10) as s:
        s.sendall(head.encode())
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except socket.timeout:
            raise AssertionError(f"no response within 10s to the request head (got {buf!r}); the gateway waited for the body")
        status_line, _, rest = buf.partition(b"\r\n")
        status = int(status_line.split()[1])
        if status == 100:
            return 100, b""
        hdrs, _, body = rest.partition(b"\r\n\r\n")
        clen = 0
        for line in hdrs.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                clen = int(line.split(b":", 1)[1])
        while len(body) < clen:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body


def test_expect_continue_anonymous_rejected_before_body(gateway, backend, key):
    status, body = _expect_continue(gateway, {"host": f"127.0.0.1:{gateway.port}"}, f"/data/{key}", 10 << 20)
    assert status == 403, f"got {status}: {body!r}"
    err = parse_error(body)
    assert err.get("Code") == "AccessDenied" and err.get("RequestId"), err
    assert not backend.exists("data-prod", key)


def test_expect_continue_bad_signature_rejected_before_body(gateway, backend, key):
    alice = gateway.keys["alice"]
    body_hash = sha256_hex(b"y" * (10 << 20))
    h = sign("PUT", f"/data/{key}", (), {"host": f"127.0.0.1:{gateway.port}"}, body_hash, Creds(alice.access_key, "wrong")).headers
    status, body = _expect_continue(gateway, h, f"/data/{key}", 10 << 20)
    assert status == 403, f"got {status}: {body!r}"
    assert parse_error(body).get("Code") == "SignatureDoesNotMatch"
    assert not backend.exists("data-prod", key)


def test_expect_continue_authorized_put_works(gateway, backend, key):
    body = b"z" * (1 << 20)
    h = sign("PUT", f"/data/{key}", (), {"host": f"127.0.0.1:{gateway.port}"}, sha256_hex(body), gateway.keys["alice"].creds).headers
    head = f"PUT {target_for('/data/' + key)} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    head += f"content-length: {len(body)}\r\nexpect: 100-continue\r\n\r\n"
    with socket.create_connection(gateway.addr, timeout=30) as s:
        s.sendall(head.encode())
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 100"), f"expected 100 Continue, got {first[:300]!r}"
        s.sendall(body)
        rest = b""
        while b"\r\n\r\n" not in rest:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        assert rest.startswith(b"HTTP/1.1 200"), rest[:500]
    assert backend.file("data-prod", key).read_bytes() == body


# ----------------------------------------------------------------- routing errors


@pytest.mark.parametrize("bucket", ["nope", "data-prod"])
def test_unconfigured_bucket(gateway, bucket):
    # Authorized before routed: alice has no rule on these names, so she
    # cannot learn whether they exist (an allowed caller gets NoSuchBucket:
    # test_buckets.py).
    r = gateway.raw("alice").request("GET", f"/{bucket}/x")
    assert_s3_error(r, 403, "AccessDenied")
    r = gateway.raw("alice").request("GET", f"/{bucket}", query=[("list-type", "2")])
    assert_s3_error(r, 403, "AccessDenied")


def test_backend_unreachable(gateway):
    r = gateway.raw("alice").request("GET", "/dead/x")
    assert_s3_error(r, (502, 503), None)
    r = gateway.raw("alice").request("PUT", "/dead/x", body=b"abc")
    assert_s3_error(r, (502, 503), None)


def test_backend_errors_do_not_expose_backend_names(gateway, key):
    """A NoSuchKey from the backend reaches the client without naming data-prod or the backend key."""
    r = gateway.raw("alice").request("GET", f"/data/{key}")
    assert r.status == 404, r.describe()
    assert parse_error(r.body).get("Code") == "NoSuchKey", r.describe()
    text = r.body.decode(errors="replace") + str(r.headers)
    assert "data-prod" not in text, r.describe()
    assert gateway.backend.creds.access_key not in text, r.describe()
