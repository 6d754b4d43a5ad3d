"""STS AssumeRoleWithWebIdentity at the S3 endpoint, with a real OpenID Connect
provider (oauth2-mock-server on 127.0.0.1, tests/idp) and `s3gate serve`.

Covers: boto3 and the aws cli configured only through AWS_WEB_IDENTITY_TOKEN_FILE
+ AWS_ROLE_ARN + AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_STS) get temporary keys
and put / get / list / multipart / presign with them; rules on the token's
groups and on the role's groups apply; every refusal with its STS error
(expired, not yet valid, wrong aud, wrong iss, unknown kid, alg none, HS256
keyed with the IdP's public key, tampered, require_claims failing, unknown
role, DurationSeconds out of range, an unreachable IdP, other actions,
session policies, missing parameters); a session key with a missing or
different X-Amz-Security-Token (InvalidToken), a long-term key with one, a
session used after expiry (ExpiredToken), and revocation through `s3gate admin
sessions`; no web identity token, session secret or session token in the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import botocore
import botocore.exceptions
import pytest
import requests
from botocore.config import Config

from conftest import (
    REGION, Gateway, Proc, gateway_bin, gateway_env, make_keys, read_ready_file, render_config, rules_config,
    stop_gateway, unused_port, wait_for,
)  # fmt: skip
from harness.config import toml_table
from harness.idp import Idp
from s3util import Creds, Raw, presign_url, streaming_request

STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex

ROLE = "arn:aws:iam::000000000000:role/{}"
WRITERS, PLAIN, STRICT, SHORT, OFFLINE = (ROLE.format(n) for n in ("writers", "plain", "strict", "short", "offline"))

RULES = [
    # the writers role adds group sts-writers: everything under data/sts/
    ("allow", ["group:sts-writers"], ["s3:*"], ["data", "data/sts/*"]),
    # a token's own group: read-only there
    ("allow", ["group:sts-readers"], ["s3:GetObject", "s3:ListBucket"], ["data", "data/sts/*"]),
]

# Everything secret handed out or in: none may appear in the gateway's log.
SECRETS: list[str] = []


def changed_token(token: str) -> str:
    """`token` with its last character changed: always another token (a fixed
    replacement equals the original when that is its last character, one
    token in 64)."""
    return token[:-1] + ("B" if token.endswith("A") else "A")


def sts_config(issuer: str, dead_issuer: str) -> str:
    out = toml_table("oidc", dict(name="corp", issuer=issuer, audiences=["s3gate"], groups_claim="groups"))
    out += toml_table("oidc", dict(name="offline", issuer=dead_issuer, audiences=["s3gate"]))
    out += toml_table("roles", dict(arn=WRITERS, oidc="corp", groups=["sts-writers"], max_session="12h"))
    out += toml_table("roles", dict(arn=PLAIN, oidc="corp"))
    out += toml_table("roles", dict(arn=STRICT, oidc="corp", groups=["sts-writers"],
                                    require_claims={"groups": "sts-admins", "email_verified": True}))  # fmt: skip
    out += toml_table("roles", dict(arn=SHORT, oidc="corp", groups=["sts-writers"], max_session="15m"))
    out += toml_table("roles", dict(arn=OFFLINE, oidc="offline"))
    return "\n".join(out) + "\n"


def start_sts_gateway(tmp: Path, backend, idp: Idp, name: str, extra: list[str] = ()) -> Gateway:
    keys = make_keys()
    cfg = tmp / f"{name}.toml"
    dead = f"http://127.0.0.1:{unused_port()}"
    cfg.write_text(render_config(backend, keys, unused_port()) + rules_config(RULES) + sts_config(idp.issuer, dead))
    ready, log = tmp / f"{name}.ready.json", tmp / f"{name}.log"
    # trace: the check that nothing secret is logged covers every level
    env = gateway_env(backend, keys, "trace", S3GATE_ADMIN_TOKEN=ADMIN_TOKEN)
    argv = [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--ready-file", str(ready),
            "--grpc-listen", "127.0.0.1:0", *extra]  # fmt: skip
    proc = Proc(name, argv, log, env)
    info = wait_for(lambda: read_ready_file(ready), f"{name} ready file", proc)
    host, port = info["s3"].rsplit(":", 1)
    gw = Gateway(proc, (host, int(port)), cfg, log, ready, keys, backend)
    gw.grpc = info["grpc"]  # type: ignore[attr-defined]
    gw.dead_issuer = dead  # type: ignore[attr-defined]
    return gw


def assert_nothing_secret_in(path: Path) -> None:
    text = path.read_text(errors="replace")
    for s in SECRETS:
        # Malformed tokens ("not.a.jwt") are too short to tell a leak from
        # chance; every real token and secret is far longer.
        if len(s) >= 16:
            assert s not in text, f"a token or session secret leaked into {path}"
        sig = s.rsplit(".", 1)[-1]
        if "." in s and len(sig) >= 16:
            assert sig not in text, f"a token signature leaked into {path}"


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    i = Idp(tmp_path_factory.mktemp("sts-idp")).start()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def foreign_idp(tmp_path_factory):
    i = Idp(tmp_path_factory.mktemp("sts-idp2"), name="idp2").start()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, backend, idp):
    g = start_sts_gateway(tmp_path_factory.mktemp("sts"), backend, idp, "s3gate-sts")
    yield g
    stop_gateway(g)
    assert_nothing_secret_in(g.log_path)


@pytest.fixture(scope="module")
def quick_gw(tmp_path_factory, backend, idp):
    """A gateway whose sessions may be as short as a second (the hidden,
    test-only --sts-min-duration): expiry can be watched."""
    g = start_sts_gateway(tmp_path_factory.mktemp("sts-quick"), backend, idp, "s3gate-sts-quick",
                          ["--sts-min-duration", "1s"])  # fmt: skip
    yield g
    stop_gateway(g)
    assert_nothing_secret_in(g.log_path)


def mint(idp: Idp, sub: str = "sam", groups=("sts-readers",), **kw) -> str:
    claims = {"aud": "s3gate", "sub": sub, "groups": list(groups), "jti": uuid.uuid4().hex, **kw.pop("claims", {})}
    t = idp.token(claims, **kw)
    SECRETS.append(t)
    return t


def obj() -> str:
    return f"sts/{uuid.uuid4().hex}.txt"


# --------------------------------------------------------------------------- STS calls by hand


def sts_call(gw: Gateway, params: dict, method: str = "POST") -> requests.Response:
    base = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleSessionName": "test-session"}
    fields = {**base, **params}
    fields = {k: v for k, v in fields.items() if v is not None}
    if method == "POST":
        return requests.post(gw.endpoint + "/", data=fields, timeout=30)
    return requests.get(gw.endpoint + "/", params=fields, timeout=30)


def sts_error(r: requests.Response) -> tuple[int, str]:
    root = ET.fromstring(r.content)
    assert root.tag == f"{STS_NS}ErrorResponse", r.text
    assert root.findtext(f"{STS_NS}RequestId"), r.text
    return r.status_code, root.findtext(f"{STS_NS}Error/{STS_NS}Code") or ""


def assume(gw: Gateway, token: str, role: str = WRITERS, **params) -> dict:
    r = sts_call(gw, {"RoleArn": role, "WebIdentityToken": token, **params})
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert root.tag == f"{STS_NS}AssumeRoleWithWebIdentityResponse", r.text
    result = root.find(f"{STS_NS}AssumeRoleWithWebIdentityResult")
    c = {e.tag.replace(STS_NS, ""): e.text for e in result.find(f"{STS_NS}Credentials")}
    SECRETS.extend([c["SecretAccessKey"], c["SessionToken"]])
    c["Subject"] = result.findtext(f"{STS_NS}SubjectFromWebIdentityToken")
    c["Arn"] = result.findtext(f"{STS_NS}AssumedRoleUser/{STS_NS}Arn")
    c["RequestId"] = root.findtext(f"{STS_NS}ResponseMetadata/{STS_NS}RequestId")
    return c


def session_client(gw: Gateway, c: dict, **config):
    return boto3.session.Session().client(
        "s3", endpoint_url=gw.endpoint, region_name=REGION, aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"],
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, signature_version="s3v4",
                      **config),
    )  # fmt: skip


def s3_code(e: botocore.exceptions.ClientError) -> tuple[int, str]:
    return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]


# --------------------------------------------------------------------------- unmodified clients


def web_identity_env(tmp: Path, gw: Gateway, token: str, role: str, endpoint_vars=("AWS_ENDPOINT_URL",)) -> dict:
    token_file = tmp / f"token-{uuid.uuid4().hex}"
    token_file.write_text(token + "\n")  # as most tools write it
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # The aws cli caches web-identity credentials in ~/.aws/cli/cache, keyed
    # by role and session name: a session of an earlier run's gateway would
    # be used instead of asking this one. A HOME of the test's own.
    home = tmp / f"home-{uuid.uuid4().hex}"
    home.mkdir()
    env["HOME"] = str(home)
    env.update({"AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file), "AWS_ROLE_ARN": role,
                "AWS_ROLE_SESSION_NAME": "e2e-client", "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true"})  # fmt: skip
    for var in endpoint_vars:
        env[var] = gw.endpoint
    return env


BOTO3_SCRIPT = r"""
import json, sys, boto3, requests
from botocore.config import Config
key, big = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3")  # nothing but the environment
creds = boto3.Session().get_credentials().get_frozen_credentials()
out = {"access_key": creds.access_key, "secret": creds.secret_key, "token": creds.token}
s3.put_object(Bucket="data", Key=key, Body=b"hello from a web identity")
out["get"] = s3.get_object(Bucket="data", Key=key)["Body"].read().decode()
out["list"] = [o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="sts/").get("Contents", [])]
part = b"p" * (5 << 20)
mpu = s3.create_multipart_upload(Bucket="data", Key=key + ".mpu")
etags = [s3.upload_part(Bucket="data", Key=key + ".mpu", UploadId=mpu["UploadId"], PartNumber=n, Body=body)["ETag"]
         for n, body in ((1, part), (2, b"tail"))]
s3.complete_multipart_upload(Bucket="data", Key=key + ".mpu", UploadId=mpu["UploadId"],
    MultipartUpload={"Parts": [{"PartNumber": n + 1, "ETag": e} for n, e in enumerate(etags)]})
out["mpu_size"] = s3.head_object(Bucket="data", Key=key + ".mpu")["ContentLength"]
s3.upload_fileobj(__import__("io").BytesIO(b"m" * big), "data", key + ".managed")
# presigned: SigV4 (the session token rides in the query)
s3v4 = boto3.client("s3", config=Config(signature_version="s3v4"))
url = s3v4.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=300)
out["presigned_has_token"] = "X-Amz-Security-Token=" in url
out["presigned"] = requests.get(url, timeout=30).content.decode()
print(json.dumps(out))
"""


def test_boto3_gets_keys_from_the_environment_alone(gw, idp, backend, tmp_path):
    token = mint(idp, sub="sam", groups=["sts-readers"])
    key = obj()
    env = web_identity_env(tmp_path, gw, token, WRITERS)
    r = subprocess.run(["python3", "-c", BOTO3_SCRIPT, key, str(20 << 20)], env=env, capture_output=True, text=True,
                       timeout=180, stdin=subprocess.DEVNULL)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    SECRETS.extend([out["secret"], out["token"]])
    assert re.fullmatch(r"ASIA[A-Z2-7]{16}", out["access_key"]), out["access_key"]
    assert out["get"] == "hello from a web identity"
    assert key in out["list"]
    assert out["mpu_size"] == (5 << 20) + 4
    assert backend.file("data-prod", key + ".managed").stat().st_size == 20 << 20
    assert out["presigned_has_token"] and out["presigned"] == "hello from a web identity"
    assert backend.file("data-prod", key).read_bytes() == b"hello from a web identity"

    # the access log names the token's principal and the identity source
    def logged():
        text = gw.log_path.read_text()
        return ('op="AssumeRoleWithWebIdentity"' in text
                and re.search(r's3gate::access.*principal="sam" identity="sts" op="PutObject"', text))  # fmt: skip

    wait_for(logged, "the access log lines", gw.proc, timeout=5)


def aws(env: dict, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["aws", *args], env=env, capture_output=True, timeout=180, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)  # fmt: skip


def test_aws_cli_gets_keys_from_the_environment_alone(gw, idp, backend, tmp_path):
    token = mint(idp, sub="cli-user", groups=[])
    key = obj()
    # service-specific endpoint variables this time
    env = web_identity_env(tmp_path, gw, token, WRITERS, endpoint_vars=("AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_S3"))
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 << 20))  # above the cli's 8 MiB multipart threshold
    r = aws(env, "s3", "cp", str(src), f"s3://data/{key}")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert backend.file("data-prod", key).read_bytes() == src.read_bytes()
    r = aws(env, "s3", "ls", "s3://data/sts/")
    assert r.returncode == 0 and key.split("/", 1)[1].encode() in r.stdout, r
    r = aws(env, "s3", "cp", f"s3://data/{key}", "-")
    assert r.returncode == 0 and r.stdout == src.read_bytes(), r.stderr
    # the session's keys, as the cli itself asks for them
    r = aws(env, "sts", "assume-role-with-web-identity", "--role-arn", WRITERS, "--role-session-name", "cli",
            "--web-identity-token", token, "--duration-seconds", "900")  # fmt: skip
    assert r.returncode == 0, r.stderr
    creds = json.loads(r.stdout)["Credentials"]
    SECRETS.extend([creds["SecretAccessKey"], creds["SessionToken"]])
    assert creds["AccessKeyId"].startswith("ASIA") and creds["Expiration"]
    # any other STS action is refused with STS's own error
    r = aws(env, "sts", "get-caller-identity")
    assert r.returncode != 0 and b"InvalidAction" in r.stderr, r


def test_rules_apply_to_token_groups_and_role_groups(gw, idp, backend):
    key = obj()
    backend.put("data-prod", key, b"readable")
    # plain role, token group sts-readers: read-only
    reader = session_client(gw, assume(gw, mint(idp, sub="rita", groups=["sts-readers"]), role=PLAIN))
    assert reader.get_object(Bucket="data", Key=key)["Body"].read() == b"readable"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        reader.put_object(Bucket="data", Key=key, Body=b"x")
    assert s3_code(e.value) == (403, "AccessDenied")
    # plain role, no group: nothing
    nobody = session_client(gw, assume(gw, mint(idp, sub="nora", groups=[]), role=PLAIN))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        nobody.get_object(Bucket="data", Key=key)
    assert s3_code(e.value) == (403, "AccessDenied")
    # the writers role adds sts-writers to the same token's groups: read-write
    writer = session_client(gw, assume(gw, mint(idp, sub="nora", groups=[]), role=WRITERS))
    writer.put_object(Bucket="data", Key=key, Body=b"written")
    assert backend.file("data-prod", key).read_bytes() == b"written"
    # ... only where the rule says
    with pytest.raises(botocore.exceptions.ClientError) as e:
        writer.put_object(Bucket="data", Key="elsewhere.txt", Body=b"x")
    assert s3_code(e.value) == (403, "AccessDenied")
    # the principal claim is the principal: bob's rule (data/reports/*) applies
    backend.put("data-prod", "reports/q1.csv", b"q1")
    bob = session_client(gw, assume(gw, mint(idp, sub="bob", groups=[]), role=PLAIN))
    assert bob.get_object(Bucket="data", Key="reports/q1.csv")["Body"].read() == b"q1"


def test_the_response_has_aws_shape(gw, idp):
    token = mint(idp, sub="shape")
    c = assume(gw, token, role=WRITERS, DurationSeconds="3600")
    assert re.fullmatch(r"ASIA[A-Z2-7]{16}", c["AccessKeyId"])
    assert len(c["SecretAccessKey"]) == 40 and len(c["SessionToken"]) >= 32
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c["Expiration"])
    expires = time.mktime(time.strptime(c["Expiration"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expires - (time.time() + 3600)) < 30
    assert c["Subject"] == "shape"
    assert c["Arn"] == "arn:aws:sts::000000000000:assumed-role/writers/test-session"
    assert c["RequestId"]
    # GET with the query string works too; the default duration is an hour
    r = sts_call(gw, {"RoleArn": WRITERS, "WebIdentityToken": mint(idp)}, method="GET")
    assert r.status_code == 200 and b"<AccessKeyId>ASIA" in r.content, r.text
    SECRETS.extend(re.findall(r"<(?:SecretAccessKey|SessionToken)>([^<]+)<", r.text))


# --------------------------------------------------------------------------- refusals


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_bad_tokens_and_requests_get_the_right_sts_error(gw, idp, foreign_idp):
    now = int(time.time())

    def refused(params: dict, status: int, code: str, method: str = "POST"):
        r = sts_call(gw, params, method)
        assert sts_error(r) == (status, code), f"{params.get('RoleArn')}: {r.status_code} {r.text[:400]}"

    def tok(t: str, role: str = WRITERS, **more) -> dict:
        SECRETS.append(t)
        return {"RoleArn": role, "WebIdentityToken": t, **more}

    refused(tok(mint(idp, expires_in=-600)), 400, "ExpiredTokenException")
    refused(tok(mint(idp, claims={"nbf": now + 600})), 400, "InvalidIdentityToken")
    refused(tok(mint(idp, claims={"aud": "someone-else"})), 400, "InvalidIdentityToken")
    refused(tok(mint(idp, claims={"iss": "http://127.0.0.1:9"})), 400, "InvalidIdentityToken")
    good = mint(idp)
    head, payload, sig = good.split(".")
    claims = json.loads(unb64(payload))
    # unknown kid (a key the IdP never published): invalid, never an IdP outage
    refused(tok(foreign_idp.token({**claims, "iss": idp.issuer}, kid="k1", header={"kid": "ghost"})), 400,
            "InvalidIdentityToken")  # fmt: skip
    refused(tok(foreign_idp.token({**claims, "iss": idp.issuer}, kid="k1")), 400, "InvalidIdentityToken")
    none_head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
    refused(tok(f"{none_head}.{payload}."), 400, "InvalidIdentityToken")
    jwk = next(k for k in idp.jwks()["keys"] if k["kid"] == "k1")
    hs_head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    hs_sig = hmac.new(json.dumps(jwk).encode(), f"{hs_head}.{payload}".encode(), hashlib.sha256).digest()
    refused(tok(f"{hs_head}.{payload}.{b64(hs_sig)}"), 400, "InvalidIdentityToken")
    tampered = b64(json.dumps({**claims, "sub": "admin", "groups": ["sts-admins"]}).encode())
    refused(tok(f"{head}.{tampered}.{sig}"), 400, "InvalidIdentityToken")
    refused(tok("not.a.jwt"), 400, "InvalidIdentityToken")

    # the role
    refused(tok(mint(idp, groups=["sts-readers"], claims={"email_verified": True}), STRICT), 403, "AccessDenied")
    refused(tok(mint(idp, groups=["sts-admins"]), STRICT), 403, "AccessDenied")  # email_verified missing
    admin = session_client(gw, assume(gw, mint(idp, groups=["dev", "sts-admins"], claims={"email_verified": True}),
                                      role=STRICT))  # fmt: skip
    admin.put_object(Bucket="data", Key=obj(), Body=b"strict role")
    refused(tok(good, ROLE.format("nobody")), 403, "AccessDenied")
    refused(tok(good, "arn:aws:iam::000000000000:user/writers"), 403, "AccessDenied")

    # DurationSeconds: 900 s up to the role's max_session
    refused(tok(good, DurationSeconds="899"), 400, "ValidationError")
    refused(tok(good, SHORT, DurationSeconds="901"), 400, "ValidationError")
    refused(tok(good, DurationSeconds="43201"), 400, "ValidationError")
    refused(tok(good, DurationSeconds="soon"), 400, "InvalidParameterValue")
    assert assume(gw, good, SHORT, DurationSeconds="900")["AccessKeyId"]
    assert assume(gw, good, WRITERS, DurationSeconds="43200")["AccessKeyId"]

    # the request
    refused({"RoleArn": WRITERS}, 400, "ValidationError")  # no token
    refused(tok(good, RoleSessionName=None), 400, "ValidationError")
    refused(tok(good, RoleSessionName="has space"), 400, "ValidationError")
    refused(tok(good, Policy='{"Version":"2012-10-17"}'), 400, "InvalidParameterValue")
    refused(tok(good, Action="AssumeRole"), 400, "InvalidAction")
    refused(tok(good, Action="GetCallerIdentity"), 400, "InvalidAction", method="GET")
    refused(tok(good, Version="2020-01-01"), 400, "InvalidAction")
    r = requests.post(gw.endpoint + "/", data="Action=AssumeRoleWithWebIdentity&Action=AssumeRoleWithWebIdentity",
                      headers={"content-type": "application/x-www-form-urlencoded"}, timeout=30)  # fmt: skip
    assert sts_error(r) == (400, "ValidationError")
    r = requests.post(gw.endpoint + "/", data=b"x=" + b"a" * (65 << 10),
                      headers={"content-type": "application/x-www-form-urlencoded"}, timeout=30)  # fmt: skip
    assert sts_error(r) == (400, "ValidationError")

    # an IdP that cannot be reached
    refused(tok(mint(idp, claims={"iss": gw.dead_issuer}), OFFLINE), 400, "IDPCommunicationError")


def test_boto3_sees_sts_errors_as_such(gw, idp):
    sts = boto3.session.Session().client("sts", endpoint_url=gw.endpoint, region_name=REGION,
                                          config=Config(signature_version=botocore.UNSIGNED))  # fmt: skip
    with pytest.raises(botocore.exceptions.ClientError) as e:
        sts.assume_role_with_web_identity(RoleArn=WRITERS, RoleSessionName="x1",
                                          WebIdentityToken=mint(idp, expires_in=-600))  # fmt: skip
    assert e.value.response["Error"]["Code"] == "ExpiredTokenException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        sts.assume_role_with_web_identity(RoleArn=ROLE.format("nobody"), RoleSessionName="x1",
                                          WebIdentityToken=mint(idp))  # fmt: skip
    assert (e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]) == (
        403, "AccessDenied")  # fmt: skip
    r = sts.assume_role_with_web_identity(RoleArn=WRITERS, RoleSessionName="x1", WebIdentityToken=mint(idp))
    SECRETS.extend([r["Credentials"]["SecretAccessKey"], r["Credentials"]["SessionToken"]])
    assert r["Credentials"]["AccessKeyId"].startswith("ASIA")
    assert r["AssumedRoleUser"]["Arn"].endswith(":assumed-role/writers/x1")


# --------------------------------------------------------------------------- the session token


def test_a_session_key_needs_its_own_token(gw, idp, backend):
    c = assume(gw, mint(idp, groups=[]), role=WRITERS)
    key = obj()
    backend.put("data-prod", key, b"token-bound")
    creds = Creds(c["AccessKeyId"], c["SecretAccessKey"], REGION)
    raw = Raw(gw.addr, creds)

    def get(headers: dict) -> object:
        return raw.request("GET", f"/data/{key}", headers=headers)

    ok = get({"x-amz-security-token": c["SessionToken"]})
    assert ok.status == 200 and ok.body == b"token-bound", ok.describe()
    for headers in ({}, {"x-amz-security-token": changed_token(c["SessionToken"])}, {"x-amz-security-token": "x"}):
        r = get(headers)
        assert r.status == 400 and b"<Code>InvalidToken</Code>" in r.body, (headers.keys(), r.describe())
    # Without the secret, a live session key tells nothing about its
    # session (not InvalidToken): only that the signature is wrong.
    wrong = Raw(gw.addr, Creds(c["AccessKeyId"], "x" * 40, REGION))
    for headers in ({}, {"x-amz-security-token": c["SessionToken"]}, {"x-amz-security-token": "x"}):
        r = wrong.request("GET", f"/data/{key}", headers=headers)
        assert r.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in r.body, (headers.keys(), r.describe())
    # another session's token
    other = assume(gw, mint(idp, groups=[]), role=WRITERS)
    r = get({"x-amz-security-token": other["SessionToken"]})
    assert r.status == 400 and b"<Code>InvalidToken</Code>" in r.body, r.describe()

    # presigned: the token in the query, or refused
    url = presign_url(gw.endpoint, "GET", f"/data/{key}", creds)
    r = requests.get(url, timeout=30)
    assert r.status_code == 400 and "<Code>InvalidToken</Code>" in r.text, r.text
    good = session_client(gw, c).generate_presigned_url("get_object", Params={"Bucket": "data", "Key": key})
    assert requests.get(good, timeout=30).content == b"token-bound"
    assert requests.get(good.replace("X-Amz-Security-Token=", "X-Amz-Security-Token=x"), timeout=30).status_code in (400, 403)

    # signed aws-chunked uploads with a session key go through the same check
    data = os.urandom(300 << 10)
    for mode in ("signed", "signed-trailer"):
        r = streaming_request(gw.addr, "PUT", f"/data/{key}.{mode}", (), data, creds, mode,
                              headers={"x-amz-security-token": c["SessionToken"]})  # fmt: skip
        assert r.status == 200, r.describe()
        assert backend.file("data-prod", f"{key}.{mode}").read_bytes() == data
    r = streaming_request(gw.addr, "PUT", f"/data/{key}.no-token", (), data, creds, "signed")
    assert r.status == 400 and b"<Code>InvalidToken</Code>" in r.body, r.describe()

    # a long-term key with a security token is refused, as AWS does
    alice = Raw(gw.addr, gw.keys["alice"].creds)
    r = alice.request("GET", f"/data/{key}", headers={"x-amz-security-token": c["SessionToken"]})
    assert r.status == 400 and b"<Code>InvalidToken</Code>" in r.body, r.describe()
    assert alice.request("GET", f"/data/{key}").status == 200


def test_a_session_ends_at_its_expiry(quick_gw, idp, backend):
    key = obj()
    backend.put("data-prod", key, b"short-lived")
    c = assume(quick_gw, mint(idp, groups=[]), role=SHORT, DurationSeconds="3")
    s3 = session_client(quick_gw, c)
    # used (and its grant cached) while it lives ...
    assert s3.get_object(Bucket="data", Key=key)["Body"].read() == b"short-lived"
    expires = time.mktime(time.strptime(c["Expiration"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    time.sleep(max(0.0, expires - time.time()) + 1.2)
    # ... refused after, though the key cache's TTL (60 s) is far longer
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="data", Key=key)
    assert s3_code(e.value) == (400, "ExpiredToken")
    presigned = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": key})
    r = requests.get(presigned, timeout=30)
    assert r.status_code == 400 and "<Code>ExpiredToken</Code>" in r.text, r.text
    # An expired session's secret is gone, so no signature can be checked:
    # only a caller showing the session's token hears ExpiredToken; without
    # it (or with another) the key is as unknown as any.
    wrong = Raw(quick_gw.addr, Creds(c["AccessKeyId"], "x" * 40, REGION))
    r = wrong.request("GET", f"/data/{key}", headers={"x-amz-security-token": c["SessionToken"]})
    assert r.status == 400 and b"<Code>ExpiredToken</Code>" in r.body, r.describe()
    for headers in ({}, {"x-amz-security-token": changed_token(c["SessionToken"])}):
        r = wrong.request("GET", f"/data/{key}", headers=headers)
        assert r.status == 403 and b"<Code>InvalidAccessKeyId</Code>" in r.body, r.describe()
    # below the lowered minimum, still refused
    r = sts_call(quick_gw, {"RoleArn": SHORT, "WebIdentityToken": mint(idp), "DurationSeconds": "0"})
    assert sts_error(r) == (400, "ValidationError")


# --------------------------------------------------------------------------- revocation


def admin(gw: Gateway, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "S3GATE_ADMIN_TOKEN": ADMIN_TOKEN}
    return subprocess.run([str(gateway_bin()), "admin", "--control-plane", f"http://{gw.grpc}", *args],
                          env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip


def refused_within(client, key: str, within: float = 1.0) -> float:
    start = time.monotonic()
    while True:
        try:
            client.get_object(Bucket="data", Key=key)
        except botocore.exceptions.ClientError as e:
            assert s3_code(e) == (403, "InvalidAccessKeyId"), e.response
            took = time.monotonic() - start
            assert took <= within, f"revocation took {took:.2f}s"
            return took
        if time.monotonic() - start > within + 2:
            pytest.fail("the revoked session still works")
        time.sleep(0.02)


def test_sessions_are_listed_and_revoked(gw, idp, backend):
    key = obj()
    backend.put("data-prod", key, b"revocable")
    victor = f"victor-{uuid.uuid4().hex[:6]}"
    one = assume(gw, mint(idp, sub=victor, groups=[]), role=WRITERS)
    two = assume(gw, mint(idp, sub=victor, groups=[]), role=PLAIN)
    three = assume(gw, mint(idp, sub=victor, groups=[]), role=WRITERS)
    other = assume(gw, mint(idp, sub="wendy", groups=[]), role=WRITERS)
    clients = {n: session_client(gw, c) for n, c in (("one", one), ("three", three), ("other", other))}
    for c in clients.values():  # cached grants at the data plane
        assert c.get_object(Bucket="data", Key=key)["Body"].read() == b"revocable"

    r = admin(gw, "sessions", "list", "--principal", victor)
    assert r.returncode == 0, r.stderr
    for c in (one, two, three):
        assert c["AccessKeyId"] in r.stdout
    assert other["AccessKeyId"] not in r.stdout and WRITERS in r.stdout and PLAIN in r.stdout
    listed = json.loads(admin(gw, "--json", "sessions", "list").stdout)
    mine = {s["access_key"]: s for s in listed}
    assert mine[one["AccessKeyId"]]["principal"] == victor and mine[one["AccessKeyId"]]["role_arn"] == WRITERS
    assert "sts-writers" in mine[one["AccessKeyId"]]["groups"] and mine[one["AccessKeyId"]]["expires_at"]
    everything = r.stdout + json.dumps(listed)
    for c in (one, two, three, other):
        assert c["SecretAccessKey"] not in everything and c["SessionToken"] not in everything

    # one session, by access key
    r = admin(gw, "sessions", "revoke", "--access-key", one["AccessKeyId"])
    assert r.returncode == 0 and one["AccessKeyId"] in r.stdout, r.stderr
    refused_within(clients["one"], key)
    assert clients["three"].get_object(Bucket="data", Key=key)["Body"].read() == b"revocable"
    r = admin(gw, "sessions", "revoke", "--access-key", one["AccessKeyId"])
    assert r.returncode != 0 and "not found" in r.stderr, r
    # every session of a principal
    r = admin(gw, "--json", "sessions", "revoke", "--principal", victor)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["revoked"]) == sorted([two["AccessKeyId"], three["AccessKeyId"]])
    refused_within(clients["three"], key)
    assert clients["other"].get_object(Bucket="data", Key=key)["Body"].read() == b"revocable"
    assert victor not in admin(gw, "sessions", "list").stdout
    # explain knows a live session's principal
    r = admin(gw, "explain", "--access-key", other["AccessKeyId"], "--action", "s3:GetObject", "--bucket", "data",
              "--key", key)  # fmt: skip
    assert r.returncode == 0 and "ALLOW" in r.stdout and "wendy" in r.stdout, r


# --------------------------------------------------------------------------- bounds


def test_sessions_are_bounded_per_principal_and_in_all(tmp_path_factory, backend, idp):
    """Every valid token can mint a session: without bounds one token holder
    fills the gateway's memory. Past the per-principal bound a principal's
    session that expires first ends (and stops working at once); past the
    total bound STS answers 503 until sessions expire or are revoked."""
    g = start_sts_gateway(tmp_path_factory.mktemp("sts-bounded"), backend, idp, "s3gate-sts-bounded",
                          ["--sts-max-sessions", "3", "--sts-max-sessions-per-principal", "2"])  # fmt: skip
    try:
        key = obj()
        backend.put("data-prod", key, b"bounded")
        first = assume(g, mint(idp, sub="bounded-a", groups=[]), role=WRITERS, DurationSeconds="900")
        s3 = session_client(g, first)
        assert s3.get_object(Bucket="data", Key=key)["Body"].read() == b"bounded"
        assume(g, mint(idp, sub="bounded-a", groups=[]), role=WRITERS, DurationSeconds="1800")
        third = assume(g, mint(idp, sub="bounded-a", groups=[]), role=WRITERS, DurationSeconds="900")
        # The third ends the first (the one that expires first, other than
        # the new one), though its grant was cached.
        refused_within(s3, key)
        assert session_client(g, third).get_object(Bucket="data", Key=key)["Body"].read() == b"bounded"
        assume(g, mint(idp, sub="bounded-b", groups=[]), role=WRITERS)
        r = sts_call(g, {"RoleArn": WRITERS, "WebIdentityToken": mint(idp, sub="bounded-c", groups=[])})
        assert sts_error(r) == (503, "ServiceUnavailable"), r.text
        revoked = admin(g, "sessions", "revoke", "--principal", "bounded-b")
        assert revoked.returncode == 0, revoked.stderr
        assume(g, mint(idp, sub="bounded-c", groups=[]), role=WRITERS)
    finally:
        stop_gateway(g)
    log = g.log_path.read_text()
    assert "sessions ended: the principal holds the most sessions allowed" in log
    assert "session refused: the session bound is reached" in log
    assert_nothing_secret_in(g.log_path)


def test_sighup_reloads_the_roles(tmp_path_factory, backend, idp):
    """[[roles]] reload with the rest of the file: a role removed mints no
    more sessions, a role added mints them, without a restart; a session
    minted before keeps working."""
    g = start_sts_gateway(tmp_path_factory.mktemp("sts-reload"), backend, idp, "s3gate-sts-reload")
    try:
        before = assume(g, mint(idp, groups=("sts-readers",)), PLAIN)
        added = ROLE.format("added-by-reload")
        text = g.config_path.read_text()
        plain = "\n".join(toml_table("roles", dict(arn=PLAIN, oidc="corp")))
        assert plain in text
        g.config_path.write_text(text.replace(plain, "\n".join(toml_table("roles", dict(arn=added, oidc="corp", groups=["sts-writers"])))))
        g.proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reloaded" not in g.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "SIGHUP not acted on"
            time.sleep(0.1)
        r = sts_call(g, {"RoleArn": PLAIN, "WebIdentityToken": mint(idp)})
        assert sts_error(r)[1] == "AccessDenied", r.text
        c = assume(g, mint(idp, groups=()), added)
        key = obj()
        session_client(g, c).put_object(Bucket="data", Key=key, Body=b"by a reloaded role")  # its groups apply
        assert session_client(g, before).get_object(Bucket="data", Key=key)["Body"].read() == b"by a reloaded role"
    finally:
        stop_gateway(g)
        assert_nothing_secret_in(g.log_path)
