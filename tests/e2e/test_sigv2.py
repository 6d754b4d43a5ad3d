"""Legacy SigV2 through s3gate, with the clients that still produce it:
boto3's default `generate_presigned_url` for S3 (botocore 1.43 presigns
with SigV2 when the client's region is us-east-1 and no signature version is
configured), boto3 with `signature_version='s3'` (botocore's HmacV1Auth,
header-signed), `aws s3 presign` of aws cli v1, and s3cmd with
`signature_v2 = True` (which signs `x-amz-date` instead of `Date`).

Covers: presigned GET/PUT (with folded Content-Type and metadata), header
signed put/get/head/list/delete, virtual-host style, rules on the signer's
principal, every refusal with its S3 code (expired, skewed, tampered path,
query and signed header, wrong secret, unknown key, session token,
malformed), the `[auth] sigv2 = false` switch, and the distributed mode
(the data plane holds no secret and asks the control plane; a hot URL is
served from its cache).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from email.utils import formatdate
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import botocore.exceptions
import pytest
import requests
from botocore.auth import HmacV1Auth, HmacV1QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from conftest import REGION, Proc, gateway_bin, gateway_env, make_keys, node_files, render_config, stop_gateway, unused_port, wait_for
from harness.cluster import start_controlplane, start_dataplane
from recorder import Recorder, launch_gateway, recorder_config
from s3util import Response, assert_s3_error


@pytest.fixture
def prefix():
    return f"sigv2/{uuid.uuid4().hex[:8]}/"


def resp(r: requests.Response) -> Response:
    return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


def client(endpoint: str, access_key: str, secret: str, signature_version: str | None = "s3", **s3cfg):
    """A boto3 S3 client; signature_version=None leaves botocore's default."""
    cfg = Config(
        s3={"addressing_style": "path", **s3cfg},
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        **({"signature_version": signature_version} if signature_version else {}),
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=access_key,
        aws_secret_access_key=secret, config=cfg,
    )  # fmt: skip


def auth_headers_seen(c) -> list[str]:
    """The Authorization headers `c` sends, recorded as it sends them."""
    seen: list[str] = []

    def record(request, **kw):
        value = request.headers.get("Authorization", "")
        seen.append(value.decode() if isinstance(value, bytes) else value)

    c.meta.events.register("before-send.s3", record)
    return seen


def presign(endpoint: str, access_key: str, secret: str, method: str, path: str, expires_in: int = 300,
            headers: dict[str, str] | None = None, token: str | None = None) -> str:
    """A SigV2 presigned URL made by botocore's own HmacV1QueryAuth (what
    generate_presigned_url uses), for any method, lifetime (negative: already
    expired) and signed headers (which botocore moves into the query)."""
    auth = HmacV1QueryAuth(Credentials(access_key, secret, token), expires=expires_in)
    req = AWSRequest(method=method, url=endpoint + path, headers=headers or {})
    auth.add_auth(req)
    return req.url


def header_signed(endpoint: str, access_key: str, secret: str, method: str, path: str,
                  headers: dict[str, str] | None = None, date: str | None = None) -> dict[str, str]:
    """Headers of a request signed by botocore's HmacV1Auth (Authorization,
    Date and the given ones), to send (or tamper with) by hand."""
    auth = HmacV1Auth(Credentials(access_key, secret))
    if date is not None:
        auth._get_date = lambda: date
    req = AWSRequest(method=method, url=endpoint + path, headers=headers or {})
    auth.add_auth(req)
    return dict(req.headers.items())


def with_query(url: str, **changes: str) -> str:
    """`url` with query parameters replaced or added."""
    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query, keep_blank_values=True))
    q.update(changes)
    return urlunsplit(parts._replace(query=urlencode(q)))


def client_error(call) -> tuple[int, str, str]:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"].get("Message", "")


# --------------------------------------------------------------------------- presigned URLs


def test_boto3_default_presign_is_sigv2_and_works(gateway, keys, backend, prefix):
    alice = keys["alice"]
    c = client(gateway.endpoint, alice.access_key, alice.secret_key, signature_version=None)
    key = prefix + "default a+b.txt"
    put_url = c.generate_presigned_url("put_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=300)
    assert "AWSAccessKeyId=" in put_url and "Signature=" in put_url and "X-Amz-" not in put_url, put_url
    r = requests.put(put_url, data=b"presigned with SigV2", timeout=30)
    assert r.status_code == 200, r.text
    assert backend.file("data-prod", key).read_bytes() == b"presigned with SigV2"

    get_url = c.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=300)
    assert "AWSAccessKeyId=" in get_url, get_url
    # a hot URL: served again and again (from the verification cache after the first)
    for _ in range(3):
        r = requests.get(get_url, timeout=30)
        assert r.status_code == 200, r.text
        assert r.content == b"presigned with SigV2"
    # a signed response override reaches the backend
    url = c.generate_presigned_url(
        "get_object", Params={"Bucket": "data", "Key": key, "ResponseContentType": "text/x-sigv2"}, ExpiresIn=300
    )
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/x-sigv2"


def test_explicit_signature_version_s3_presign(gateway, keys, backend, prefix):
    alice = keys["alice"]
    c = client(gateway.endpoint, alice.access_key, alice.secret_key, signature_version="s3")
    key = prefix + "explicit.txt"
    url = c.generate_presigned_url("put_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=60)
    assert "AWSAccessKeyId=" in url, url
    assert requests.put(url, data=b"explicit", timeout=30).status_code == 200
    url = c.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=60)
    r = requests.get(url, timeout=30)
    assert (r.status_code, r.content) == (200, b"explicit"), r.text
    url = c.generate_presigned_url("delete_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=60)
    assert requests.delete(url, timeout=30).status_code == 204
    assert not backend.exists("data-prod", key)


def test_presigned_put_with_signed_headers_in_the_query(gateway, keys, backend, prefix):
    """botocore moves Content-Type and x-amz-* headers into a SigV2 URL; the
    gateway puts them back as headers, for the signature and for the backend."""
    alice = keys["alice"]
    c = client(gateway.endpoint, alice.access_key, alice.secret_key, signature_version=None)
    key = prefix + "typed.txt"
    params = {"Bucket": "data", "Key": key, "ContentType": "text/x-sigv2", "Metadata": {"origin": "sigv2"}}
    url = c.generate_presigned_url("put_object", Params=params, ExpiresIn=300)
    assert "content-type=" in url and "x-amz-meta-origin=sigv2" in url, url
    # the client sends the same Content-Type (as a browser would) ...
    r = requests.put(url, data=b"typed", headers={"Content-Type": "text/x-sigv2"}, timeout=30)
    assert r.status_code == 200, r.text
    head = backend.client().head_object(Bucket="data-prod", Key=key)
    assert head["ContentType"] == "text/x-sigv2"
    assert head["Metadata"] == {"origin": "sigv2"}
    # ... or none: the URL's is used
    r = requests.put(url, data=b"typed again", timeout=30)
    assert r.status_code == 200, r.text
    assert backend.client().head_object(Bucket="data-prod", Key=key)["ContentType"] == "text/x-sigv2"
    # another one was not signed
    r = requests.put(url, data=b"retyped", headers={"Content-Type": "text/html"}, timeout=30)
    assert_s3_error(resp(r), 403, "SignatureDoesNotMatch")
    assert backend.file("data-prod", key).read_bytes() == b"typed again"


def test_aws_cli_presign_default_is_sigv2(gateway, keys, backend, prefix, tmp_path):
    key = prefix + "cli.txt"
    backend.put("data-prod", key, b"presigned by the cli, SigV2")
    url = aws_presign(gateway.endpoint, keys["alice"], f"s3://data/{key}", tmp_path)
    assert "AWSAccessKeyId=" in url and "Expires=" in url, url
    r = requests.get(url, timeout=30)
    assert (r.status_code, r.content) == (200, b"presigned by the cli, SigV2"), r.text


def aws_presign(endpoint: str, key, s3uri: str, home) -> str:
    """`aws s3 presign` (aws cli v1) with no signature_version configured."""
    exe = shutil.which("aws")
    if exe is None:
        pytest.fail("aws cli not found (pip install -r tests/e2e/requirements.txt)")
    cfg = home / "aws-config"
    cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "AWS_CONFIG_FILE": str(cfg),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "AWS_ACCESS_KEY_ID": key.access_key,
        "AWS_SECRET_ACCESS_KEY": key.secret_key, "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip
    p = subprocess.run([exe, "--endpoint-url", endpoint, "s3", "presign", s3uri, "--expires-in", "300"],
                       env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


# --------------------------------------------------------------------------- header-signed requests


def test_header_signed_client(gateway, keys, backend, prefix):
    alice = keys["alice"]
    c = client(gateway.endpoint, alice.access_key, alice.secret_key, signature_version="s3")
    seen = auth_headers_seen(c)
    key = prefix + "header/ü x.txt"
    c.put_object(Bucket="data", Key=key, Body=b"header signed", ContentType="text/plain", Metadata={"m": "1"})
    assert backend.file("data-prod", key).read_bytes() == b"header signed"
    got = c.get_object(Bucket="data", Key=key)
    assert got["Body"].read() == b"header signed"
    assert got["Metadata"] == {"m": "1"}
    assert c.head_object(Bucket="data", Key=key)["ContentLength"] == len(b"header signed")
    assert [o["Key"] for o in c.list_objects_v2(Bucket="data", Prefix=prefix + "header/")["Contents"]] == [key]
    assert [o["Key"] for o in c.list_objects(Bucket="data", Prefix=prefix + "header/")["Contents"]] == [key]
    c.copy_object(Bucket="data", Key=key + ".copy", CopySource={"Bucket": "data", "Key": key})
    assert backend.file("data-prod", key + ".copy").read_bytes() == b"header signed"
    c.delete_objects(Bucket="data", Delete={"Objects": [{"Key": key + ".copy"}]})
    c.delete_object(Bucket="data", Key=key)
    assert not backend.exists("data-prod", key) and not backend.exists("data-prod", key + ".copy")
    assert seen and all(a.startswith(f"AWS {alice.access_key}:") for a in seen), seen


def test_header_signed_multipart(gateway, keys, backend, prefix):
    alice = keys["alice"]
    c = client(gateway.endpoint, alice.access_key, alice.secret_key, signature_version="s3")
    key = prefix + "multi.bin"
    part1, part2 = os.urandom(5 << 20), os.urandom(1 << 10)
    up = c.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    e1 = c.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=1, Body=part1)["ETag"]
    e2 = c.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=2, Body=part2)["ETag"]
    assert sorted(p["PartNumber"] for p in c.list_parts(Bucket="data", Key=key, UploadId=up)["Parts"]) == [1, 2]
    c.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})  # fmt: skip
    assert backend.file("data-prod", key).read_bytes() == part1 + part2


@pytest.fixture(scope="module")
def recorder():
    with Recorder() as r:
        yield r


@pytest.fixture(scope="module")
def recgw(backend, recorder, tmp_path_factory):
    extra = recorder_config(recorder, [("allow", ["alice"], ["s3:*"], ["rec", "rec/*"])])
    gw = launch_gateway(tmp_path_factory.mktemp("v2rec"), backend, "s3gate-v2rec", extra_config=extra)
    yield gw
    stop_gateway(gw)


def test_forwarded_request_is_resigned_with_the_signed_headers(recgw, recorder):
    """What reaches the backend: the body digest (SigV2 signs Content-MD5, not
    the body: the backend checks it), the headers a presigned URL carried in
    its query as headers, none of the client's authentication, signed anew."""
    alice = recgw.keys["alice"]
    body = b"checked by the backend"
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    signed = {"Content-MD5": md5, "Content-Type": "text/plain", "x-amz-meta-a": "1", "x-amz-storage-class": "STANDARD"}
    url = presign(recgw.endpoint, alice.access_key, alice.secret_key, "PUT", "/rec/k.txt", headers=signed)
    assert "content-md5=" in url and "x-amz-meta-a=1" in url, url
    h = header_signed(recgw.endpoint, alice.access_key, alice.secret_key, "PUT", "/rec/h.txt", signed)
    for how, send in {
        "presigned": lambda: requests.put(url, data=body, timeout=30),
        "header": lambda: requests.put(f"{recgw.endpoint}/rec/h.txt", data=body, headers=h, timeout=30),
    }.items():
        recorder.reset()
        r = send()
        assert r.status_code == 200, (how, r.text)
        [fwd] = recorder.taken()
        assert fwd.body == body
        assert fwd.header("content-md5") == md5, (how, fwd.headers)
        assert fwd.header("content-type") == "text/plain"
        assert fwd.header("x-amz-meta-a") == "1"
        assert fwd.header("x-amz-storage-class") == "STANDARD"
        assert fwd.header("authorization").startswith("AWS4-HMAC-SHA256 Credential=RECKEY"), fwd.headers
        assert fwd.query_names() == [], (how, fwd.query)




def test_virtual_host_style(gateway, keys, backend, prefix, resolve_s3_localhost):
    """SigV2 signs the bucket of a virtual-host request as part of the path."""
    alice = keys["alice"]
    endpoint = f"http://s3.localhost:{gateway.port}"
    c = client(endpoint, alice.access_key, alice.secret_key, signature_version="s3", addressing_style="virtual")
    urls: list[str] = []
    c.meta.events.register("before-send.s3", lambda request, **kw: urls.append(request.url))
    key = prefix + "vhost.txt"
    c.put_object(Bucket="data", Key=key, Body=b"vhost v2")
    assert urls and urls[0].startswith(f"http://data.s3.localhost:{gateway.port}/"), urls
    assert c.get_object(Bucket="data", Key=key)["Body"].read() == b"vhost v2"
    url = c.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=60)
    assert url.startswith(f"http://data.s3.localhost:{gateway.port}/") and "AWSAccessKeyId=" in url, url
    r = requests.get(url, timeout=30)
    assert (r.status_code, r.content) == (200, b"vhost v2"), r.text


def test_s3cmd_signature_v2(gateway, keys, backend, prefix, tmp_path):
    """s3cmd's SigV2 signs x-amz-date (the Date line then stays empty)."""
    exe = shutil.which("s3cmd")
    if exe is None:
        pytest.fail("s3cmd not found (apt-get install s3cmd)")
    alice = keys["alice"]
    hostport = f"127.0.0.1:{gateway.port}"
    cfg = tmp_path / "s3cfg"
    cfg.write_text(
        f"[default]\naccess_key = {alice.access_key}\nsecret_key = {alice.secret_key}\nhost_base = {hostport}\n"
        f"host_bucket = {hostport}\nbucket_location = us-east-1\nuse_https = False\nsignature_v2 = True\n"
    )
    src = tmp_path / "up.txt"
    src.write_bytes(b"s3cmd with SigV2")

    def s3cmd(*args):
        p = subprocess.run([exe, "-c", str(cfg), "--no-progress", "--debug", *args], capture_output=True, text=True,
                           timeout=120, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})  # fmt: skip
        assert p.returncode == 0, f"s3cmd {args}: {p.stdout}\n{p.stderr[-3000:]}"
        return p

    p = s3cmd("put", str(src), f"s3://data/{prefix}s3cmd.txt")
    assert "Using signature v2" in p.stderr and "x-amz-date:" in p.stderr, "s3cmd did not sign with SigV2"
    assert backend.file("data-prod", f"{prefix}s3cmd.txt").read_bytes() == b"s3cmd with SigV2"
    assert f"{prefix}s3cmd.txt" in s3cmd("ls", f"s3://data/{prefix}").stdout
    dst = tmp_path / "down.txt"
    s3cmd("get", f"s3://data/{prefix}s3cmd.txt", str(dst))
    assert dst.read_bytes() == b"s3cmd with SigV2"
    s3cmd("del", f"s3://data/{prefix}s3cmd.txt")
    assert not backend.exists("data-prod", f"{prefix}s3cmd.txt")


# --------------------------------------------------------------------------- authorization


def test_rules_apply_to_the_signer(gateway, keys, backend, prefix):
    bob, dave, alice = keys["bob"], keys["dave"], keys["alice"]
    # bob may write and read under data/reports/ only
    b = client(gateway.endpoint, bob.access_key, bob.secret_key)
    ok = f"reports/{prefix}bob.txt"
    b.put_object(Bucket="data", Key=ok, Body=b"bob")
    assert b.get_object(Bucket="data", Key=ok)["Body"].read() == b"bob"
    status, code, _ = client_error(lambda: b.put_object(Bucket="data", Key=prefix + "bob.txt", Body=b"x"))
    assert (status, code) == (403, "AccessDenied")
    assert not backend.exists("data-prod", prefix + "bob.txt")
    # a presigned URL carries its signer's rights, no more
    backend.put("data-prod", prefix + "other.txt", b"not bob's")
    r = requests.get(presign(gateway.endpoint, bob.access_key, bob.secret_key, "GET", f"/data/{prefix}other.txt"), timeout=30)
    assert_s3_error(resp(r), 403, "AccessDenied")
    # group rules: dave (analysts) reads but does not write
    d = client(gateway.endpoint, dave.access_key, dave.secret_key)
    assert d.get_object(Bucket="data", Key=ok)["Body"].read() == b"bob"
    status, code, _ = client_error(lambda: d.put_object(Bucket="data", Key=prefix + "dave.txt", Body=b"x"))
    assert (status, code) == (403, "AccessDenied")
    # an explicit deny wins: alice and data/secret/*
    backend.put("data-prod", "secret/" + prefix + "s.txt", b"secret")
    r = requests.get(presign(gateway.endpoint, alice.access_key, alice.secret_key, "GET", f"/data/secret/{prefix}s.txt"), timeout=30)
    assert_s3_error(resp(r), 403, "AccessDenied")


def test_folded_acl_needs_its_own_action(gateway, keys, backend, prefix):
    """An x-amz-acl folded out of a presigned URL is authorized like the
    header it stands for (s3:PutObjectAcl): bob may put under reports/ but
    not set ACLs."""
    bob = keys["bob"]
    path = f"/data/reports/{prefix}acl.txt"
    url = presign(gateway.endpoint, bob.access_key, bob.secret_key, "PUT", path, headers={"x-amz-acl": "public-read"})
    assert "x-amz-acl=public-read" in url, url
    r = requests.put(url, data=b"acl", timeout=30)
    assert_s3_error(resp(r), 403, "AccessDenied")
    assert not backend.exists("data-prod", path.removeprefix("/data/"))


# --------------------------------------------------------------------------- refusals


def test_expired_url(gateway, keys, backend, prefix):
    alice = keys["alice"]
    backend.put("data-prod", prefix + "old.txt", b"old")
    url = presign(gateway.endpoint, alice.access_key, alice.secret_key, "GET", f"/data/{prefix}old.txt", expires_in=-5)
    err = assert_s3_error(resp(requests.get(url, timeout=30)), 403, "AccessDenied")
    assert err["Message"] == "Request has expired", err
    # the same URL, still valid, works: only the time refused it
    url = presign(gateway.endpoint, alice.access_key, alice.secret_key, "GET", f"/data/{prefix}old.txt", expires_in=60)
    assert requests.get(url, timeout=30).status_code == 200


def test_skewed_date(gateway, keys, prefix):
    alice = keys["alice"]
    stale = formatdate(time.time() - 20 * 60, usegmt=True)
    h = header_signed(gateway.endpoint, alice.access_key, alice.secret_key, "GET", f"/data/{prefix}x", date=stale)
    assert_s3_error(resp(requests.get(f"{gateway.endpoint}/data/{prefix}x", headers=h, timeout=30)), 403, "RequestTimeTooSkewed")
    h = {"Authorization": f"AWS {alice.access_key}:AAAAAAAAAAAAAAAAAAAAAAAAAAA="}
    err = assert_s3_error(resp(requests.get(f"{gateway.endpoint}/data/{prefix}x", headers=h, timeout=30)), 403, "AccessDenied")
    assert "Date" in err["Message"], err


def test_tampered_presigned_urls(gateway, keys, backend, prefix):
    alice = keys["alice"]
    backend.put("data-prod", prefix + "a.txt", b"a")
    backend.put("data-prod", prefix + "b.txt", b"b")
    url = presign(gateway.endpoint, alice.access_key, alice.secret_key, "GET", f"/data/{prefix}a.txt")
    assert requests.get(url, timeout=30).status_code == 200
    tampered = {
        "path": url.replace(f"{prefix}a.txt", f"{prefix}b.txt"),
        "expiry": with_query(url, Expires=str(int(dict(parse_qsl(urlsplit(url).query))["Expires"]) + 3600)),
        "signed sub-resource": with_query(url, versionId="v1"),
        "signed response override": with_query(url, **{"response-content-type": "text/html"}),
        "added header parameter": with_query(url, **{"x-amz-meta-evil": "1"}),
    }
    for what, bad in tampered.items():
        err = assert_s3_error(resp(requests.get(bad, timeout=30)), 403, "SignatureDoesNotMatch")
        assert "signature" in err["Message"], (what, err)
    # PUT to another key than the one signed: nothing reaches the backend
    put = presign(gateway.endpoint, alice.access_key, alice.secret_key, "PUT", f"/data/{prefix}c.txt")
    r = requests.put(put.replace(f"{prefix}c.txt", f"{prefix}d.txt"), data=b"d", timeout=30)
    assert_s3_error(resp(r), 403, "SignatureDoesNotMatch")
    assert not backend.exists("data-prod", prefix + "d.txt")
    # the method is signed too
    r = requests.delete(url, timeout=30)
    assert_s3_error(resp(r), 403, "SignatureDoesNotMatch")
    assert backend.exists("data-prod", prefix + "a.txt")


def test_tampered_header_signed_requests(gateway, keys, backend, prefix):
    alice = keys["alice"]
    path = f"/data/{prefix}h.txt"
    h = header_signed(gateway.endpoint, alice.access_key, alice.secret_key, "PUT", path,
                      {"Content-Type": "text/plain", "x-amz-meta-who": "alice"})  # fmt: skip
    cases = {
        "content-type": {**h, "Content-Type": "text/html"},
        "signed x-amz header": {**h, "x-amz-meta-who": "mallory"},
        "added x-amz header": {**h, "x-amz-acl": "public-read"},
        "date": {**h, "Date": formatdate(time.time() + 1, usegmt=True)},
    }
    for what, headers in cases.items():
        r = requests.put(gateway.endpoint + path, data=b"x", headers=headers, timeout=30)
        assert_s3_error(resp(r), 403, "SignatureDoesNotMatch")
    r = requests.put(gateway.endpoint + f"/data/{prefix}other.txt", data=b"x", headers=h, timeout=30)
    assert_s3_error(resp(r), 403, "SignatureDoesNotMatch")
    assert not backend.exists("data-prod", prefix + "h.txt") and not backend.exists("data-prod", prefix + "other.txt")
    # untouched, it goes through
    assert requests.put(gateway.endpoint + path, data=b"x", headers=h, timeout=30).status_code == 200


def test_wrong_secret_and_unknown_key(gateway, keys, prefix):
    alice = keys["alice"]
    c = client(gateway.endpoint, alice.access_key, alice.secret_key + "x")
    status, code, _ = client_error(lambda: c.get_object(Bucket="data", Key=prefix + "x"))
    assert (status, code) == (403, "SignatureDoesNotMatch")
    url = presign(gateway.endpoint, alice.access_key, "not-alices-secret", "GET", f"/data/{prefix}x")
    assert_s3_error(resp(requests.get(url, timeout=30)), 403, "SignatureDoesNotMatch")
    # another key's secret
    url = presign(gateway.endpoint, alice.access_key, keys["bob"].secret_key, "GET", f"/data/{prefix}x")
    assert_s3_error(resp(requests.get(url, timeout=30)), 403, "SignatureDoesNotMatch")

    c = client(gateway.endpoint, "S3GATENOSUCHKEY", "whatever")
    status, code, _ = client_error(lambda: c.get_object(Bucket="data", Key=prefix + "x"))
    assert (status, code) == (403, "InvalidAccessKeyId")
    url = presign(gateway.endpoint, "S3GATENOSUCHKEY", "whatever", "GET", f"/data/{prefix}x")
    assert_s3_error(resp(requests.get(url, timeout=30)), 403, "InvalidAccessKeyId")


def test_session_tokens_and_malformed_requests(gateway, keys, prefix):
    alice = keys["alice"]
    target = f"{gateway.endpoint}/data/{prefix}x"
    url = presign(gateway.endpoint, alice.access_key, alice.secret_key, "GET", f"/data/{prefix}x", token="FQoGZXIvYXdzE")
    assert "x-amz-security-token=" in url, url
    err = assert_s3_error(resp(requests.get(url, timeout=30)), 400, "InvalidRequest")
    assert "Signature Version 4" in err["Message"], err
    cases = [
        # (headers, query, status, code)
        ({"Authorization": "AWS no-colon", "Date": formatdate(usegmt=True)}, "", 400, "InvalidArgument"),
        ({}, f"?AWSAccessKeyId={alice.access_key}&Signature=abc", 403, "AccessDenied"),
        ({}, f"?AWSAccessKeyId={alice.access_key}&Signature=abc&Expires=tomorrow", 403, "AccessDenied"),
        ({"Authorization": f"AWS {alice.access_key}:abc", "Date": formatdate(usegmt=True)},
         f"?AWSAccessKeyId={alice.access_key}&Signature=abc&Expires=1", 400, "InvalidArgument"),
    ]  # fmt: skip
    for headers, query, status, code in cases:
        assert_s3_error(resp(requests.get(target + query, headers=headers, timeout=30)), status, code)


def test_access_log_says_sigv2(gateway, keys, backend, prefix):
    alice = keys["alice"]
    backend.put("data-prod", prefix + "log.txt", b"l")
    url = presign(gateway.endpoint, alice.access_key, alice.secret_key, "GET", f"/data/{prefix}log.txt")
    r = requests.get(url, timeout=30)
    assert r.status_code == 200
    rid = r.headers["x-amz-request-id"]
    signature = dict(parse_qsl(urlsplit(url).query))["Signature"]

    def line():
        return next((ln for ln in gateway.log_path.read_text(errors="replace").splitlines()
                     if "s3gate::access" in ln and rid in ln), None)  # fmt: skip

    found = wait_for(line, "the access log line", gateway.proc, timeout=5)
    assert 'auth="sigv2"' in found or "auth=sigv2" in found, found
    assert "principal=alice" in found or 'principal="alice"' in found, found
    assert signature not in gateway.log_path.read_text(errors="replace")


# --------------------------------------------------------------------------- SigV2 off


@pytest.fixture(scope="module")
def v2off(backend, tmp_path_factory):
    gw = launch_gateway(tmp_path_factory.mktemp("v2off"), backend, "s3gate-v2off", extra_config="\n[auth]\nsigv2 = false\n")
    yield gw
    stop_gateway(gw)


def test_sigv2_off_is_refused_clearly(v2off, backend, prefix, tmp_path):
    alice = v2off.keys["alice"]
    backend.put("data-prod", prefix + "off.txt", b"off")
    c = client(v2off.endpoint, alice.access_key, alice.secret_key, signature_version=None)
    urls = [
        c.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": prefix + "off.txt"}, ExpiresIn=60),
        aws_presign(v2off.endpoint, alice, f"s3://data/{prefix}off.txt", tmp_path),
    ]
    for url in urls:
        assert "AWSAccessKeyId=" in url, url
        err = assert_s3_error(resp(requests.get(url, timeout=30)), 400, "InvalidRequest")
        assert "Signature Version 2 is disabled on this gateway" in err["Message"], err
        assert "Signature Version 4" in err["Message"], err
    status, code, message = client_error(lambda: client(v2off.endpoint, alice.access_key, alice.secret_key).get_object(
        Bucket="data", Key=prefix + "off.txt"))  # fmt: skip
    assert (status, code) == (400, "InvalidRequest") and "disabled" in message
    # wrong secrets and unknown keys get the same answer: nothing is verified
    url = presign(v2off.endpoint, "S3GATENOSUCHKEY", "x", "GET", f"/data/{prefix}off.txt")
    assert_s3_error(resp(requests.get(url, timeout=30)), 400, "InvalidRequest")
    # SigV4 still works
    v4 = client(v2off.endpoint, alice.access_key, alice.secret_key, signature_version="s3v4")
    assert v4.get_object(Bucket="data", Key=prefix + "off.txt")["Body"].read() == b"off"
    url = v4.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": prefix + "off.txt"}, ExpiresIn=60)
    assert requests.get(url, timeout=30).content == b"off"


def test_check_config_shows_the_switch(v2off):
    out = subprocess.run([str(gateway_bin()), "check-config", str(v2off.config_path)], capture_output=True,
                         text=True, timeout=60, env=gateway_env(v2off.backend, v2off.keys, "warn"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "[auth]\nsigv2 = false\n" in out.stdout, out.stdout


# --------------------------------------------------------------------------- distributed


class Cluster:
    def __init__(self, tmp, backend):
        self.tmp, self.backend = tmp, backend
        self.keys = make_keys()
        self.config = tmp / "cluster.toml"
        self.config.write_text(render_config(backend, self.keys, unused_port()))
        self.cp, self.cp_addr = start_controlplane(gateway_bin(), "cp-v2", config=self.config,
                                                   env=gateway_env(backend, self.keys, "debug"),
                                                   **node_files(tmp, "cp-v2"))  # fmt: skip
        self.dps: dict[str, tuple[Proc, str]] = {}

    def start_dp(self, name: str, **env: str) -> str:
        # No secret in the data plane's environment or arguments: SigV2 is
        # verified by the control plane.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("S3GATE_E2E_")}
        proc, addr = start_dataplane(gateway_bin(), name, control_planes=[f"http://{self.cp_addr}"], region=REGION,
                                     env={**clean, "S3GATE_LOG": "debug", **env}, **node_files(self.tmp, name))  # fmt: skip
        self.dps[name] = (proc, addr)
        return f"http://{addr}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, backend):
    c = Cluster(tmp_path_factory.mktemp("sigv2-cluster"), backend)
    yield c
    for proc, _ in c.dps.values():
        proc.stop()
    c.cp.stop()
    secrets = [c.backend.creds.secret_key, *(k.secret_key for k in c.keys.values())]
    for proc, _ in [*c.dps.values(), (c.cp, c.cp_addr)]:
        text = proc.log_path.read_text(errors="replace")
        for s in secrets:
            assert s not in text, f"a secret leaked into {proc.name}'s log"


def test_distributed_presigned_sigv2(cluster, backend, prefix):
    dp = cluster.start_dp("dp-v2")
    alice = cluster.keys["alice"]
    proc = cluster.dps["dp-v2"][0]
    given = open(f"/proc/{proc.pid}/environ", "rb").read() + " ".join(proc.argv).encode()
    for k in cluster.keys.values():
        assert k.secret_key.encode() not in given, "the data plane must not hold a key's secret"
    key = prefix + "dist.txt"
    c = client(dp, alice.access_key, alice.secret_key, signature_version=None)
    url = c.generate_presigned_url("put_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=300)
    assert "AWSAccessKeyId=" in url
    assert requests.put(url, data=b"through a data plane", timeout=30).status_code == 200
    assert backend.file("data-prod", key).read_bytes() == b"through a data plane"
    get = c.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=300)
    r = requests.get(get, timeout=30)
    assert (r.status_code, r.content) == (200, b"through a data plane"), r.text
    # header-signed, rules, refusals: the control plane's answers
    h = client(dp, alice.access_key, alice.secret_key, signature_version="s3")
    assert h.get_object(Bucket="data", Key=key)["Body"].read() == b"through a data plane"
    bob = cluster.keys["bob"]
    r = requests.get(presign(dp, bob.access_key, bob.secret_key, "GET", f"/data/{key}"), timeout=30)
    assert_s3_error(resp(r), 403, "AccessDenied")
    r = requests.get(presign(dp, alice.access_key, "wrong", "GET", f"/data/{key}"), timeout=30)
    assert_s3_error(resp(r), 403, "SignatureDoesNotMatch")
    r = requests.get(presign(dp, "S3GATENOSUCHKEY", "x", "GET", f"/data/{key}"), timeout=30)
    assert_s3_error(resp(r), 403, "InvalidAccessKeyId")


def test_distributed_sigv2_off_by_env(cluster, backend, prefix):
    dp = cluster.start_dp("dp-v2off", S3GATE_DP_SIGV2="false")
    alice = cluster.keys["alice"]
    backend.put("data-prod", prefix + "off.txt", b"off")
    url = presign(dp, alice.access_key, alice.secret_key, "GET", f"/data/{prefix}off.txt")
    err = assert_s3_error(resp(requests.get(url, timeout=30)), 400, "InvalidRequest")
    assert "disabled" in err["Message"], err


def test_distributed_hot_url_is_served_from_the_cache(cluster, backend, prefix):
    """Runs last in this module: it stops the control plane. A verified URL
    keeps working from the data plane's cache; one never verified fails closed."""
    dp = cluster.start_dp("dp-v2cache")
    alice = cluster.keys["alice"]
    backend.put("data-prod", prefix + "hot.txt", b"hot")
    hot = presign(dp, alice.access_key, alice.secret_key, "GET", f"/data/{prefix}hot.txt")
    assert requests.get(hot, timeout=30).status_code == 200
    cluster.cp.stop()
    r = requests.get(hot, timeout=30)
    assert (r.status_code, r.content) == (200, b"hot"), r.text
    cold = presign(dp, alice.access_key, alice.secret_key, "GET", f"/data/{prefix}hot.txt", expires_in=301)
    assert_s3_error(resp(requests.get(cold, timeout=30)), 503, "ServiceUnavailable")
