"""Backend credential kinds that s3gate exchanges for temporary ones:
`ibm_iam` (an IBM Cloud API key → IAM bearer tokens) and `aws_assume_role`
(a key pair → STS AssumeRole sessions), through real s3gate processes
(`serve`, and `controlplane` + `dataplane` on a real Redis).

Stand-ins, because the real services cannot run here:
- IBM IAM and IBM COS: tests/harness/iam_stand_in.py. `IamStandIn` answers
  IAM's API-key grant and counts exchanges; `BearerUpstream` accepts only
  unexpired bearer tokens that stand-in issued and serves the bucket from a
  real s3s-fs (re-signing each request with the s3s-fs key pair).
- AWS STS, IAM and S3: moto's server (PyPI `moto[server]`, a mock, pinned
  in requirements.txt), with IAM authentication switched on after setup, so
  its S3 checks every request's SigV4 signature and session token against
  the sessions its STS issued, and its policies (the long-lived user may
  only assume the role; only the role may use S3).

The API key, the tokens, the secret key and the session secrets must never
appear in any process log.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid

import boto3
import botocore.exceptions
import pytest
import requests
from botocore.config import Config

from conftest import REGION, _client, gateway_bin, node_files, start_backend, unused_port
from harness.cluster import Redis, gen_master_key, start_controlplane, start_dataplane
from harness.config import toml_table
from harness.iam_stand_in import BearerUpstream, IamStandIn
from harness.procs import Proc, free_port, read_ready_file, wait_for
from s3util import Creds

API_KEY_ENV = "S3GATE_E2E_COS_API_KEY"
ROLE_SECRET_ENV = "S3GATE_E2E_ROLE_SECRET"
INSTANCE = "crn:v1:bluemix:public:cloud-object-storage:global:a/0123456789:e2e-instance::"
ALICE = Creds("S3GATEALICE01", "csec-" + secrets.token_urlsafe(24), REGION)


def gateway_config(backends: list[dict], buckets: dict[str, tuple[str, str]]) -> str:
    out = ['listen = "127.0.0.1:0"', f'region = "{REGION}"', "[cache]", 'route_ttl = "5m"']
    for b in backends:
        out += toml_table("backends", b)
    for name, (backend, backend_bucket) in buckets.items():
        out += toml_table("buckets", dict(name=name, backend=backend, backend_bucket=backend_bucket))
    out += toml_table("keys", dict(access_key=ALICE.access_key, secret_key=ALICE.secret_key, principal="alice"))
    resources = [r for name in buckets for r in (name, f"{name}/*")]
    out += toml_table("rules", dict(effect="allow", principals=["alice"], actions=["s3:*"], resources=resources))
    return "\n".join(out) + "\n"


class Serve:
    """`s3gate serve` with a config, its secrets in the environment."""

    def __init__(self, tmp, name: str, config: str, env: dict[str, str]):
        tmp.mkdir(parents=True, exist_ok=True)
        self.config = tmp / f"{name}.toml"
        self.config.write_text(config)
        self.log_path = tmp / f"{name}.log"
        ready = tmp / f"{name}.ready.json"
        self.proc = Proc(name, [str(gateway_bin()), "serve", "--config", str(self.config), "--listen", "127.0.0.1:0",
                                "--ready-file", str(ready)],
                         self.log_path, {**os.environ, "S3GATE_LOG": "trace", **env})  # fmt: skip
        info = wait_for(lambda: read_ready_file(ready), f"{name} ready", self.proc)
        self.endpoint = "http://" + info["s3"]

    def client(self, **config):
        return _client(self.endpoint, ALICE.access_key, ALICE.secret_key, **config)

    def stop(self) -> str:
        code, killed = self.proc.stop()
        assert not killed and code == 0, f"{self.proc.name}: exit {code}, killed={killed}"
        return self.log_path.read_text(errors="replace")


def assert_quiet(logs: dict[str, str], secrets_: dict[str, str]) -> None:
    for proc, text in logs.items():
        for what, value in secrets_.items():
            assert value not in text, f"{what} leaked into {proc}'s log"


def s3_error(call) -> tuple[int, str, float]:
    started = time.monotonic()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], time.monotonic() - started


# --------------------------------------------------------------------------- IBM IAM


@pytest.fixture(scope="module")
def cos(tmp_path_factory):
    """An s3s-fs behind the bearer-checking COS stand-in, and the IAM stand-in."""
    tmp = tmp_path_factory.mktemp("cos")
    fs = start_backend(tmp)
    api_key = "ibmkey-" + secrets.token_urlsafe(30)
    iam = IamStandIn(api_key)
    upstream = BearerUpstream(iam, fs.addr, fs.creds)
    yield tmp, fs, iam, upstream
    upstream.close()
    iam.close()
    fs.proc.stop()


def ibm_backend(name: str, upstream: BearerUpstream, iam_endpoint: str) -> dict:
    return dict(name=name, endpoint=upstream.endpoint, region=REGION,
                credentials=dict(kind="ibm_iam", api_key="env:" + API_KEY_ENV, iam_endpoint=iam_endpoint,
                                 service_instance_id=INSTANCE))  # fmt: skip


def ibm_secrets(iam: IamStandIn) -> dict[str, str]:
    return {"the API key": iam.api_key, **{f"IAM token {t[:12]}": t for t in iam.issued()}}


def test_ibm_iam_put_get_list(cos):
    """Objects go through an ibm_iam backend: every upstream request carries
    a bearer token IAM issued (and the service instance), never a SigV4
    signature; one exchange serves them all."""
    tmp, fs, iam, upstream = cos
    before = iam.exchanges
    gw = Serve(tmp / "basic", "ibm-basic", gateway_config([ibm_backend("ibm", upstream, iam.endpoint)], {"cos": ("ibm", "other")}),
               {API_KEY_ENV: iam.api_key})  # fmt: skip
    try:
        c = gw.client()
        key = f"ibm/{uuid.uuid4().hex}.txt"
        c.put_object(Bucket="cos", Key=key, Body=b"through IBM IAM")
        assert c.get_object(Bucket="cos", Key=key)["Body"].read() == b"through IBM IAM"
        assert key in [o["Key"] for o in c.list_objects_v2(Bucket="cos", Prefix="ibm/").get("Contents", [])]
        assert fs.file("other", key).read_bytes() == b"through IBM IAM"
        # The default boto3 upload (aws-chunked with a CRC trailer) too.
        big = os.urandom(300_000)
        c.upload_fileobj(__import__("io").BytesIO(big), "cos", key + ".big")
        assert fs.file("other", key + ".big").read_bytes() == big
        c.delete_object(Bucket="cos", Key=key)
        assert not fs.file("other", key).exists()
    finally:
        logs = {"ibm-basic": gw.stop()}
    seen = [s for s in upstream.requests() if s.status < 300]
    assert seen, "no request reached the COS stand-in"
    assert all(s.token and s.service_instance_id == INSTANCE for s in seen), seen
    assert iam.exchanges - before == 1
    assert_quiet(logs, ibm_secrets(iam))


def test_ibm_iam_refresh_and_single_flight(cos):
    """A token that nears its expiry is exchanged again (requests keep
    working, with the new token); 50 concurrent requests arriving while
    the refresh is due, with IAM slow to answer, cause exactly one
    exchange."""
    tmp, fs, iam, upstream = cos
    iam.expires_in = 20  # refreshed once half of it is left
    try:
        gw = Serve(tmp / "refresh", "ibm-refresh",
                   gateway_config([ibm_backend("ibm", upstream, iam.endpoint)], {"cos": ("ibm", "other")}),
                   {API_KEY_ENV: iam.api_key})  # fmt: skip
        try:
            c = gw.client()
            fs.put("other", "refresh.txt", b"fresh")
            start = iam.exchanges
            assert c.get_object(Bucket="cos", Key="refresh.txt")["Body"].read() == b"fresh"
            assert iam.exchanges == start + 1
            first = upstream.requests()[-1].token
            time.sleep(11)
            assert c.get_object(Bucket="cos", Key="refresh.txt")["Body"].read() == b"fresh"
            assert iam.exchanges == start + 2, "the token was not refreshed before expiry"
            second = upstream.requests()[-1].token
            assert second != first and iam.valid(second)

            # Next refresh due in 10 s; IAM now takes a second to answer.
            time.sleep(10.5)
            iam.delay = 1.0
            n_before, t_before = iam.exchanges, len(upstream.requests())

            def get(_):
                cl = gw.client(max_pool_connections=60)
                return cl.get_object(Bucket="cos", Key="refresh.txt")["Body"].read()

            with concurrent.futures.ThreadPoolExecutor(50) as pool:
                bodies = list(pool.map(get, range(50)))
            assert bodies == [b"fresh"] * 50
            assert iam.exchanges == n_before + 1, f"{iam.exchanges - n_before} exchanges for one refresh"
            tokens = {s.token for s in upstream.requests()[t_before:]}
            assert len(tokens) == 1 and second not in tokens
        finally:
            logs = {"ibm-refresh": gw.stop()}
    finally:
        iam.expires_in, iam.delay = 3600, 0.0
    assert_quiet(logs, ibm_secrets(iam))


def test_ibm_iam_unavailable_fails_closed(cos):
    """IAM unreachable, or refusing the key: the request gets 503
    ServiceUnavailable S3 XML at once, nothing reaches the backend
    unauthenticated, and a later request (IAM back) works."""
    tmp, fs, iam, upstream = cos
    gw = Serve(tmp / "down", "ibm-down",
               gateway_config([ibm_backend("gone", upstream, f"http://127.0.0.1:{unused_port()}/identity/token"),
                               ibm_backend("refused", upstream, iam.endpoint)],
                              {"gone": ("gone", "other"), "refused": ("refused", "other")}),
               {API_KEY_ENV: iam.api_key})  # fmt: skip
    try:
        c = gw.client()
        seen = len(upstream.requests())
        status, code, took = s3_error(lambda: c.get_object(Bucket="gone", Key="x"))
        assert (status, code) == (503, "ServiceUnavailable") and took < 3, (status, code, took)
        # The raw answer is S3 error XML.
        r = requests.get(c.generate_presigned_url("get_object", Params={"Bucket": "gone", "Key": "x"}), timeout=10)
        assert r.status_code == 503 and b"<Code>ServiceUnavailable</Code>" in r.content, r.content
        iam.refuse = True
        status, code, took = s3_error(lambda: c.get_object(Bucket="refused", Key="x"))
        assert (status, code) == (503, "ServiceUnavailable") and took < 3
        assert len(upstream.requests()) == seen, "a request reached the backend without a token"
        iam.refuse = False
        fs.put("other", "back.txt", b"back")
        # The failed exchange backs off (1 s first).
        deadline = time.monotonic() + 10
        while True:
            try:
                assert c.get_object(Bucket="refused", Key="back.txt")["Body"].read() == b"back"
                break
            except botocore.exceptions.ClientError:
                assert time.monotonic() < deadline, "no recovery after IAM came back"
                time.sleep(0.5)
    finally:
        iam.refuse = False
        logs = {"ibm-down": gw.stop()}
    text = logs["ibm-down"]
    assert "credential exchange failed" in text and "HTTP 400" in text
    assert_quiet(logs, ibm_secrets(iam))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_ibm_iam_two_control_planes_one_exchange(cos):
    """Two control planes on one Redis, a data plane on each: requests
    through both cause one exchange (the second control plane reads the
    first one's token from Redis, where it is sealed)."""
    tmp, fs, iam, upstream = cos
    tmp = tmp / "two-cps"
    tmp.mkdir()
    exe = gateway_bin()
    redis = Redis(shutil.which("redis-server"), tmp, tmp / "redis.log")
    redis.start(attempts=3)
    procs = []
    try:
        config = tmp / "cluster.toml"
        config.write_text(gateway_config([ibm_backend("ibm", upstream, iam.endpoint)], {"cos": ("ibm", "other")}))
        env = {**os.environ, "S3GATE_LOG": "trace", API_KEY_ENV: iam.api_key, "S3GATE_MASTER_KEY": gen_master_key(exe)}
        cps = []
        for name in ("cp1", "cp2"):
            proc, addr = start_controlplane(exe, name, config=config, redis_url=redis.url, replica=name, env=env,
                                            **node_files(tmp, name))  # fmt: skip
            procs.append(proc)
            cps.append(addr)
        dps = []
        dp_env = {k: v for k, v in env.items() if k not in ("S3GATE_MASTER_KEY", API_KEY_ENV)}
        for name, cp in (("dp1", cps[0]), ("dp2", cps[1])):
            proc, addr = start_dataplane(exe, name, control_planes=[f"http://{cp}"], region=REGION, env=dp_env,
                                         **node_files(tmp, name))  # fmt: skip
            procs.append(proc)
            dps.append(addr)
        fs.put("other", "shared.txt", b"one token")
        before = iam.exchanges
        iam.delay = 0.5  # both control planes ask while the first exchange is in flight

        def get(i):
            c = _client(f"http://{dps[i % 2]}", ALICE.access_key, ALICE.secret_key)
            return c.get_object(Bucket="cos", Key="shared.txt")["Body"].read()

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            assert list(pool.map(get, range(10))) == [b"one token"] * 10
        assert iam.exchanges == before + 1, f"{iam.exchanges - before} exchanges by two control planes"
        sealed = redis.call("GET", "s3gate:exchanged:ibm")
        assert sealed.startswith(b"$") and len(sealed) > 100, sealed[:40]
        for t in iam.issued():
            assert t.encode() not in sealed, "the token is stored in Redis in plaintext"
        assert iam.api_key.encode() not in sealed
        # The data planes hold the temporary token, never the API key.
        assert redis.call("EXISTS", "s3gate:exchange-lock:ibm").startswith(b":0")
    finally:
        iam.delay = 0.0
        for p in reversed(procs):
            p.stop()
        redis.proc.stop()
    logs = {p.name: p.log_path.read_text(errors="replace") for p in procs}
    assert_quiet(logs, ibm_secrets(iam))


# --------------------------------------------------------------------------- AWS AssumeRole


class Moto:
    """moto's server (STS, IAM and S3 in one process) with a user that may
    only assume `role`, and a role that may use S3."""

    def __init__(self, tmp):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = Proc("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                         tmp / "moto.log")  # fmt: skip
        wait_for(self._up, "moto to answer", self.proc)
        kw = dict(endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="s3gate")
        key = iam.create_access_key(UserName="s3gate")["AccessKey"]
        self.user = Creds(key["AccessKeyId"], key["SecretAccessKey"], REGION)
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
        self.role_arn = iam.create_role(RoleName="s3gate", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        allow = lambda action, resource: json.dumps(  # noqa: E731
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}]})
        iam.put_user_policy(UserName="s3gate", PolicyName="assume", PolicyDocument=allow("sts:AssumeRole", self.role_arn))
        iam.put_role_policy(RoleName="s3gate", PolicyName="s3", PolicyDocument=allow("s3:*", "*"))
        boto3.client("s3", **kw).create_bucket(Bucket="aws-data")
        # From here on every request is authenticated and authorized.
        r = requests.post(self.endpoint + "/moto-api/reset-auth", data=b"0", timeout=10)
        assert r.ok, r.text

    def _up(self) -> bool:
        try:
            return requests.get(self.endpoint + "/moto-api/data.json", timeout=1).ok
        except requests.RequestException:
            return False

    def s3(self, creds: Creds, token: str | None = None):
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key, aws_session_token=token,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))  # fmt: skip


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    m = Moto(tmp_path_factory.mktemp("moto"))
    yield m
    m.proc.stop()


def role_backend(name: str, moto: Moto, role_arn: str, sts_endpoint: str | None = None, **extra) -> dict:
    return dict(name=name, endpoint=moto.endpoint, region=REGION,
                credentials=dict(kind="aws_assume_role", role_arn=role_arn, access_key=moto.user.access_key,
                                 secret_key="env:" + ROLE_SECRET_ENV, sts_endpoint=sts_endpoint or moto.endpoint,
                                 duration="15m", session_name="s3gate-e2e", **extra))  # fmt: skip


class ShortSessions:
    """In front of moto's STS: passes every request through unchanged (the
    Host header too, so moto checks the signature s3gate made) and
    shortens the session's `Expiration` to `lifetime` seconds from now, so
    a refresh is due within a test's patience (STS itself never issues
    sessions shorter than 15 minutes). Counts the AssumeRole answers."""

    def __init__(self, moto: Moto, lifetime: int):
        import http.server
        import re
        import threading
        import urllib.request

        self.calls = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                req = urllib.request.Request(moto.endpoint + self.path, data=body, method="POST",
                                             headers={k: v for k, v in self.headers.items()})  # fmt: skip
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                if status == 200 and b"<AssumeRoleResult>" in data:
                    outer.calls += 1
                    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + lifetime))
                    data = re.sub(rb"<Expiration>[^<]*</Expiration>", f"<Expiration>{at}</Expiration>".encode(), data)
                self.send_response(status)
                self.send_header("content-type", "text/xml")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.endpoint = "http://127.0.0.1:%d" % self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_aws_assume_role(moto, tmp_path):
    """Requests are signed with the role session STS issued, with its
    session token (moto refuses a missing or wrong one): the user's own key
    may not use S3 at all, so success proves the session was used. A role
    the user may not assume, or a wrong secret, gives 503."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        moto.s3(moto.user).put_object(Bucket="aws-data", Key="direct", Body=b"x")
    assert e.value.response["Error"]["Code"] == "AccessDenied", "moto does not enforce IAM: the test proves nothing"
    gw = Serve(tmp_path, "aws-role",
               gateway_config([role_backend("aws", moto, moto.role_arn),
                               role_backend("other-role", moto, "arn:aws:iam::123456789012:role/not-allowed")],
                              {"aws": ("aws", "aws-data"), "denied": ("other-role", "aws-data")}),
               {ROLE_SECRET_ENV: moto.user.secret_key})  # fmt: skip
    try:
        c = gw.client()
        key = f"role/{uuid.uuid4().hex}.txt"
        c.put_object(Bucket="aws", Key=key, Body=b"through a role")
        assert c.get_object(Bucket="aws", Key=key)["Body"].read() == b"through a role"
        # No prefix: moto's signature check reads a `/` in a query value
        # unencoded, as neither AWS nor s3gate does.
        assert key in [o["Key"] for o in c.list_objects_v2(Bucket="aws").get("Contents", [])]
        c.delete_object(Bucket="aws", Key=key)
        status, code, took = s3_error(lambda: c.get_object(Bucket="denied", Key=key))
        assert (status, code) == (503, "ServiceUnavailable") and took < 3
    finally:
        text = gw.stop()
    assert "STS answered HTTP 403 (AccessDenied)" in text, "the refusal is not named in the log"
    assert_quiet({"aws-role": text}, {"the user's secret key": moto.user.secret_key})
    # The session secret (issued by moto) never shows either.
    assert "SecretAccessKey" not in text and "SessionToken" not in text


def test_aws_assume_role_refreshed_before_expiry(moto, tmp_path):
    """A session that nears its expiry is replaced by a new AssumeRole
    before it runs out, and requests keep working with the new one."""
    short = ShortSessions(moto, lifetime=20)  # refreshed once half of it is left
    gw = Serve(tmp_path, "aws-refresh", gateway_config([role_backend("aws", moto, moto.role_arn, short.endpoint)],
                                                       {"aws": ("aws", "aws-data")}),
               {ROLE_SECRET_ENV: moto.user.secret_key})  # fmt: skip
    try:
        c = gw.client()
        c.put_object(Bucket="aws", Key="refresh.txt", Body=b"session one")
        assert short.calls == 1
        time.sleep(11)
        assert c.get_object(Bucket="aws", Key="refresh.txt")["Body"].read() == b"session one"
        assert short.calls == 2, "the session was not refreshed before expiry"
        c.put_object(Bucket="aws", Key="refresh.txt", Body=b"session two")
        assert short.calls == 2
    finally:
        text = gw.stop()
        short.close()
    assert "exchanged backend credential refreshed" in text
    assert_quiet({"aws-refresh": text}, {"the user's secret key": moto.user.secret_key})


def test_check_config_shows_kinds_never_secrets(tmp_path):
    """check-config prints each backend's credential kind and its
    non-secret fields, never the API key or the secret key; a bad setting
    is located (file, line) and named, without the secret."""
    api_key, secret = "ibmkey-" + secrets.token_hex(16), "rolesecret-" + secrets.token_hex(16)
    config = gateway_config(
        [dict(name="ibm", endpoint="https://s3.eu-de.cloud-object-storage.appdomain.cloud", region="eu-de",
              credentials=dict(kind="ibm_iam", api_key=api_key, service_instance_id=INSTANCE)),
         dict(name="aws", endpoint="https://s3.eu-west-1.amazonaws.com", region="eu-west-1",
              credentials=dict(kind="aws_assume_role", role_arn="arn:aws:iam::123456789012:role/s3gate",
                               access_key="AKIAEXAMPLE", secret_key=secret, duration="2h"))],
        {"cos": ("ibm", "cos"), "aws": ("aws", "aws")})  # fmt: skip
    cfg = tmp_path / "s3gate.toml"
    cfg.write_text(config)

    def check(path):
        return subprocess.run([str(gateway_bin()), "check-config", str(path)], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip

    r = check(cfg)
    assert r.returncode == 0, r.stderr
    assert 'credentials = { kind = "ibm_iam", api_key = "<redacted>"' in r.stdout, r.stdout
    assert 'credentials = { kind = "aws_assume_role"' in r.stdout and 'secret_key = "<redacted>"' in r.stdout
    assert INSTANCE in r.stdout and 'duration = "2h"' in r.stdout
    assert api_key not in r.stdout + r.stderr and secret not in r.stdout + r.stderr
    cfg.write_text(config.replace('duration = "2h"', 'duration = "20h"'))
    r = check(cfg)
    assert r.returncode == 64, (r.returncode, r.stderr)
    assert str(cfg) in r.stderr and "duration" in r.stderr and "15m..12h" in r.stderr, r.stderr
    assert secret not in r.stderr and api_key not in r.stderr


def test_ibm_iam_through_the_admin_cli(cos):
    """`s3gate admin backends put --kind ibm_iam`: an update that leaves the
    API key out keeps the stored one (requests keep working, now with the
    new service instance); `backends list` shows the kind and the
    non-secret fields, never the key; the API key is taken from the
    environment only."""
    tmp, fs, iam, upstream = cos
    tmp = tmp / "admin"
    token = "admin-" + secrets.token_hex(16)
    config = gateway_config([ibm_backend("ibm", upstream, iam.endpoint)], {"cos": ("ibm", "other")})
    tmp.mkdir()
    (tmp / "s3gate.toml").write_text(config)
    ready = tmp / "ready.json"
    proc = Proc("ibm-admin", [str(gateway_bin()), "serve", "--config", str(tmp / "s3gate.toml"), "--listen", "127.0.0.1:0",
                              "--grpc-listen", "127.0.0.1:0", "--admin-token", token, "--ready-file", str(ready)],
                tmp / "s3gate.log", {**os.environ, "S3GATE_LOG": "trace", API_KEY_ENV: iam.api_key})  # fmt: skip
    try:
        info = wait_for(lambda: (read_ready_file(ready) or {}).get("grpc") and read_ready_file(ready), "ready", proc)
        grpc = "http://" + info["grpc"]

        def admin(*args, env=None):
            return subprocess.run([str(gateway_bin()), "admin", "--control-plane", grpc, "--token", token, *args],
                                  capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                                  env={**{k: v for k, v in os.environ.items() if not k.startswith("S3GATE_")}, **(env or {})})  # fmt: skip

        c = _client("http://" + info["s3"], ALICE.access_key, ALICE.secret_key)
        fs.put("other", "admin.txt", b"admin")
        assert c.get_object(Bucket="cos", Key="admin.txt")["Body"].read() == b"admin"
        new_instance = "crn:v1:bluemix:public:cloud-object-storage:global:a/0123456789:second::"
        r = admin("backends", "put", "--name", "ibm", "--kind", "ibm_iam", "--endpoint", upstream.endpoint,
                  "--iam-endpoint", iam.endpoint, "--service-instance-id", new_instance)  # fmt: skip
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while upstream.requests()[-1].service_instance_id != new_instance:
            assert time.monotonic() < deadline, "the update did not reach the data plane"
            assert c.get_object(Bucket="cos", Key="admin.txt")["Body"].read() == b"admin"
            time.sleep(0.2)
        r = admin("--json", "backends", "list")
        assert r.returncode == 0, r.stderr
        listed = {b["name"]: b for b in json.loads(r.stdout)}
        assert listed["ibm"]["credentials"] == {"kind": "ibm_iam", "iam_endpoint": iam.endpoint,
                                                "service_instance_id": new_instance, "ca_bundle": ""}  # fmt: skip
        assert iam.api_key not in r.stdout
        # Secrets come from the environment, never the command line.
        r = admin("backends", "put", "--name", "ibm2", "--kind", "ibm_iam", "--endpoint", upstream.endpoint,
                  "--ibm-api-key-env", "S3GATE_E2E_UNSET_VAR")  # fmt: skip
        assert r.returncode != 0 and "S3GATE_E2E_UNSET_VAR" in r.stderr
        r = admin("backends", "put", "--name", "ibm2", "--kind", "ibm_iam", "--endpoint", upstream.endpoint)
        assert r.returncode != 0 and "api_key is required" in r.stderr, r.stderr
        r = admin("backends", "put", "--name", "aws2", "--kind", "aws_assume_role", "--endpoint", upstream.endpoint,
                  "--access-key", "AKIAX")  # fmt: skip
        assert r.returncode != 0 and "--role-arn" in r.stderr, r.stderr
        r = admin("backends", "put", "--name", "x", "--kind", "static_hmac", "--endpoint", upstream.endpoint,
                  "--access-key", "AK", "--role-arn", "arn:aws:iam::1:role/r")  # fmt: skip
        assert r.returncode != 0 and "--role-arn does not apply to --kind static_hmac" in r.stderr, r.stderr
    finally:
        code, killed = proc.stop()
    assert not killed and code == 0
    assert_quiet({"ibm-admin": (tmp / "s3gate.log").read_text(errors="replace")}, ibm_secrets(iam))
