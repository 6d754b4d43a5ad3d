"""Payload modes boto3 does not use over plain http: aws-chunked bodies with
chunk signatures and/or trailing checksums, and UNSIGNED-PAYLOAD. The bodies
are framed by hand (s3util.streaming_put); test_backend.py shows the framing
is accepted by a real verifier."""

import hashlib
import uuid

import pytest

from s3util import assert_s3_error, sha256_hex, streaming_put

KiB = 1024
MODES = ["signed", "signed-trailer", "unsigned-trailer"]


def payload(n: int) -> bytes:
    seed = hashlib.sha256(str(n).encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]


@pytest.fixture
def key():
    return f"streaming/{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size,chunk", [(300 * KiB, 64 * KiB), (5 << 20, 1 << 20), (10, 64 * KiB), (0, 64 * KiB)])
def test_streaming_upload(gateway, backend, mode, size, chunk, key):
    data = payload(size)
    r = streaming_put(gateway.addr, f"/data/{key}", data, gateway.keys["alice"].creds, mode, chunk_size=chunk)
    assert r.status == 200, r.describe()
    assert backend.file("data-prod", key).read_bytes() == data
    # stored decoded: no chunk framing, no trailer
    assert backend.client().head_object(Bucket="data-prod", Key=key)["ContentLength"] == size


@pytest.mark.parametrize("mode", ["signed", "signed-trailer"])
@pytest.mark.parametrize("tamper", ["data", "data-last", "chunk-signature"])
def test_streaming_tampered_chunk_rejected(gateway, backend, mode, tamper, key):
    data = payload(300 * KiB)
    r = streaming_put(gateway.addr, f"/data/{key}", data, gateway.keys["alice"].creds, mode, tamper=tamper)
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    assert not backend.exists("data-prod", key)


@pytest.mark.parametrize("mode", ["signed-trailer", "unsigned-trailer"])
def test_streaming_wrong_trailer_checksum_rejected(gateway, backend, mode, key):
    data = payload(300 * KiB)
    r = streaming_put(gateway.addr, f"/data/{key}", data, gateway.keys["alice"].creds, mode, tamper="checksum")
    assert_s3_error(r, 400, "BadDigest")
    assert not backend.exists("data-prod", key)


def test_streaming_tampered_trailer_signature_rejected(gateway, backend, key):
    data = payload(300 * KiB)
    r = streaming_put(gateway.addr, f"/data/{key}", data, gateway.keys["alice"].creds, "signed-trailer", tamper="trailer-signature")
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    assert not backend.exists("data-prod", key)


@pytest.mark.parametrize("tamper,status,code", [("data-last", 403, "SignatureDoesNotMatch"), ("checksum", 400, "BadDigest")])
def test_rejected_upload_keeps_previous_version(gateway, backend, tamper, status, code, key):
    """A rejected overwrite must leave the old object untouched."""
    old = b"the old version"
    backend.put("data-prod", key, old)
    new = payload(300 * KiB)
    r = streaming_put(gateway.addr, f"/data/{key}", new, gateway.keys["alice"].creds, "signed-trailer", tamper=tamper)
    assert_s3_error(r, status, code)
    assert backend.client().get_object(Bucket="data-prod", Key=key)["Body"].read() == old


def test_unsigned_payload(gateway, backend, key):
    data = payload(200 * KiB)
    r = gateway.raw("alice").request("PUT", f"/data/{key}", body=data, payload_hash="UNSIGNED-PAYLOAD")
    assert r.status == 200, r.describe()
    assert backend.file("data-prod", key).read_bytes() == data


@pytest.mark.parametrize("size", [5, 3 << 20])
def test_hex_sha256_mismatch_rejected(gateway, backend, size, key):
    body = payload(size)
    wrong = sha256_hex(body[:-1] + bytes([body[-1] ^ 1]))
    r = gateway.raw("alice").request("PUT", f"/data/{key}", body=body, payload_hash=wrong)
    assert_s3_error(r, 400, "XAmzContentSHA256Mismatch")
    assert not backend.exists("data-prod", key)


def test_hex_sha256_mismatch_keeps_previous_version(gateway, backend, key):
    backend.put("data-prod", key, b"old")
    body = payload(3 << 20)
    r = gateway.raw("alice").request("PUT", f"/data/{key}", body=body, payload_hash=sha256_hex(b"something else"))
    assert_s3_error(r, 400, "XAmzContentSHA256Mismatch")
    assert backend.client().get_object(Bucket="data-prod", Key=key)["Body"].read() == b"old"


def test_hex_sha256_mismatch_in_upload_part(gateway, backend, client_as, key):
    alice = client_as("alice")
    uid = alice.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    try:
        body = payload(5 << 20)
        r = gateway.raw("alice").request(
            "PUT",
            f"/data/{key}",
            query=[("partNumber", "1"), ("uploadId", uid)],
            body=body,
            payload_hash=sha256_hex(b"not the body"),
        )
        assert_s3_error(r, 400, "XAmzContentSHA256Mismatch")
        assert alice.list_parts(Bucket="data", Key=key, UploadId=uid).get("Parts", []) == []
    finally:
        alice.abort_multipart_upload(Bucket="data", Key=key, UploadId=uid)
