"""STS in the distributed mode: two control-plane replicas sharing Redis, two
data planes each asking a different replica, a real OpenID Connect provider.

Covers: a session minted through data plane A (control plane 1) works at data
plane B (control plane 2, which only knows it from Redis); revoking it, by
access key or by principal, through either replica, is refused at both data
planes within 1 s although both had it cached; Redis holds neither the
session secret, nor the session token, nor the web identity token, and
expires the session record at the session's expiry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import boto3
import botocore
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import (
    REGION, Proc, gateway_bin, gateway_env, make_keys, node_files, render_config, rules_config, unused_port,
)  # fmt: skip
from harness.cluster import Redis, gen_master_key, start_controlplane, start_dataplane
from harness.idp import Idp
from test_sts import RULES, SECRETS, WRITERS, mint, s3_code, sts_config

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
CLUSTER_TOKEN = "cluster-" + uuid.uuid4().hex


class StsCluster:
    def __init__(self, tmp, backend, redis: Redis, idp: Idp):
        self.tmp, self.backend, self.redis = tmp, backend, redis
        self.keys = make_keys()
        self.config = tmp / "sts-cluster.toml"
        self.config.write_text(render_config(backend, self.keys, unused_port()) + rules_config(RULES)
                               + sts_config(idp.issuer, f"http://127.0.0.1:{unused_port()}"))  # fmt: skip
        self.env = gateway_env(backend, self.keys, "trace", S3GATE_MASTER_KEY=gen_master_key(gateway_bin()),
                               S3GATE_ADMIN_TOKEN=ADMIN_TOKEN, S3GATE_CLUSTER_TOKEN=CLUSTER_TOKEN)  # fmt: skip
        self.procs: dict[str, Proc] = {}
        self.addrs: dict[str, str] = {}

    def start_cp(self, name: str) -> None:
        self.procs[name], self.addrs[name] = start_controlplane(
            gateway_bin(), name, config=self.config, redis_url=self.redis.url, replica=name, env=self.env,
            **node_files(self.tmp, name))  # fmt: skip

    def start_dp(self, name: str, cp: str) -> None:
        # one replica each: what a data plane learns, it learns from that replica
        self.procs[name], self.addrs[name] = start_dataplane(
            gateway_bin(), name, control_planes=[f"http://{self.addrs[cp]}"], region=REGION, env=self.env,
            **node_files(self.tmp, name))  # fmt: skip

    def endpoint(self, dp: str) -> str:
        return f"http://{self.addrs[dp]}"

    def sts(self, dp: str):
        return boto3.session.Session().client("sts", endpoint_url=self.endpoint(dp), region_name=REGION,
                                              config=Config(signature_version=botocore.UNSIGNED))  # fmt: skip

    def s3(self, dp: str, creds: dict):
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint(dp), region_name=REGION, aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"],
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))  # fmt: skip

    def assume(self, dp: str, token: str) -> dict:
        c = self.sts(dp).assume_role_with_web_identity(RoleArn=WRITERS, RoleSessionName="dist",
                                                       WebIdentityToken=token)["Credentials"]  # fmt: skip
        SECRETS.extend([c["SecretAccessKey"], c["SessionToken"]])
        return c

    def admin(self, cp: str, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in self.env.items() if k != "S3GATE_MASTER_KEY"}
        return subprocess.run([str(gateway_bin()), "admin", "--control-plane", f"http://{self.addrs[cp]}", "--json",
                               *args], capture_output=True, text=True, env=env, timeout=30)  # fmt: skip

    def redis_dump(self) -> bytes:
        """Every key in Redis and everything it holds, whatever its type."""
        out = b""
        for key in self.redis.call("KEYS", "*").split(b"\r\n"):
            if not key or key[:1] in b"*$":
                continue
            name = key.decode()
            kind = self.redis.call("TYPE", name)
            out += key + b"=" + kind
            if b"string" in kind:
                out += self.redis.call("GET", name)
            elif b"hash" in kind:
                out += self.redis.call("HGETALL", name)
            elif b"zset" in kind:
                out += self.redis.call("ZRANGE", name, "0", "-1", "WITHSCORES")
            elif b"set" in kind:
                out += self.redis.call("SMEMBERS", name)
        return out


@pytest.fixture(scope="module")
def sc(tmp_path_factory, backend):
    tmp = tmp_path_factory.mktemp("sts-cluster")
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    redis = Redis(exe, tmp, tmp / "redis.log")
    redis.start()
    idp = Idp(tmp, name="sts-cluster-idp").start()
    c = StsCluster(tmp, backend, redis, idp)
    c.idp = idp
    c.start_cp("cp1")
    c.start_cp("cp2")
    c.start_dp("dpA", "cp1")
    c.start_dp("dpB", "cp2")
    yield c
    for p in list(c.procs.values()):
        p.stop()
    idp.stop()
    redis.proc.stop()
    for p in c.procs.values():
        text = p.log_path.read_text(errors="replace")
        for s in SECRETS:
            # As test_sts.assert_nothing_secret_in: short malformed tokens
            # are not checked.
            if len(s) >= 16:
                assert s not in text, f"a token or session secret leaked into {p.name}'s log"


def refused_at_both(sc, clients, key: str, within: float = 1.0) -> float:
    start = time.monotonic()
    pending = dict(clients)
    while pending:
        for name, client in list(pending.items()):
            try:
                client.get_object(Bucket="data", Key=key)
            except botocore.exceptions.ClientError as e:
                assert s3_code(e) == (403, "InvalidAccessKeyId"), e.response
                del pending[name]
        took = time.monotonic() - start
        if took > within + 2:
            pytest.fail(f"still accepted at {sorted(pending)} after {took:.2f}s")
        time.sleep(0.02)
    took = time.monotonic() - start
    assert took <= within, f"revocation reached both data planes after {took:.2f}s"
    return took


def test_a_session_minted_at_one_data_plane_works_at_the_other(sc, backend):
    token = mint(sc.idp, sub="dana", groups=[])
    c = sc.assume("dpA", token)
    key = f"sts/{uuid.uuid4().hex}"
    sc.s3("dpB", c).put_object(Bucket="data", Key=key, Body=b"minted at A, used at B")
    assert backend.file("data-prod", key).read_bytes() == b"minted at A, used at B"
    assert sc.s3("dpA", c).get_object(Bucket="data", Key=key)["Body"].read() == b"minted at A, used at B"
    # without its token, at either
    for dp in ("dpA", "dpB"):
        bare = dict(c, SessionToken=None)
        s3 = boto3.session.Session().client(
            "s3", endpoint_url=sc.endpoint(dp), region_name=REGION, aws_access_key_id=c["AccessKeyId"],
            aws_secret_access_key=c["SecretAccessKey"], config=Config(retries={"total_max_attempts": 1}))  # fmt: skip
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket="data", Key=key)
        assert s3_code(e.value) == (400, "InvalidToken"), (dp, bare["AccessKeyId"])

    # Redis: the record expires with the session; nothing secret in clear
    record = f"s3gate:session:{c['AccessKeyId']}"
    pttl = int(sc.redis.call("PTTL", record).strip()[1:])
    left = (c["Expiration"].timestamp() - time.time()) * 1000
    assert abs(pttl - left) < 5000, (pttl, left)
    dump = sc.redis_dump()
    assert c["AccessKeyId"].encode() in dump, "the scan must see the session"
    for secret in (c["SecretAccessKey"], c["SessionToken"], token, token.rsplit(".", 1)[-1]):
        assert secret.encode() not in dump, "Redis holds a session secret, token or web identity token in clear"


def test_revocation_reaches_every_data_plane_within_a_second(sc, backend):
    key = f"sts/{uuid.uuid4().hex}"
    backend.put("data-prod", key, b"revocable")
    c = sc.assume("dpB", mint(sc.idp, sub="erin", groups=[]))
    clients = {dp: sc.s3(dp, c) for dp in ("dpA", "dpB")}
    for client in clients.values():  # cached at both
        assert client.get_object(Bucket="data", Key=key)["Body"].read() == b"revocable"
    listed = json.loads(sc.admin("cp1", "sessions", "list", "--principal", "erin").stdout)
    assert [s["access_key"] for s in listed] == [c["AccessKeyId"]]
    r = sc.admin("cp2", "sessions", "revoke", "--access-key", c["AccessKeyId"])
    assert r.returncode == 0, r.stderr
    refused_at_both(sc, clients, key)

    # by principal, through the other replica: every session of it
    frank = [sc.assume(dp, mint(sc.idp, sub="frank", groups=[])) for dp in ("dpA", "dpB")]
    keep = sc.assume("dpA", mint(sc.idp, sub="gina", groups=[]))
    clients = {f"{dp}-{i}": sc.s3(dp, f) for i, f in enumerate(frank) for dp in ("dpA", "dpB")}
    for client in [*clients.values(), sc.s3("dpB", keep)]:
        assert client.get_object(Bucket="data", Key=key)["Body"].read() == b"revocable"
    r = sc.admin("cp1", "sessions", "revoke", "--principal", "frank")
    assert r.returncode == 0 and len(json.loads(r.stdout)["revoked"]) == 2, r
    refused_at_both(sc, clients, key)
    assert sc.s3("dpB", keep).get_object(Bucket="data", Key=key)["Body"].read() == b"revocable"
    assert sc.redis.call("EXISTS", "s3gate:sessions-of:frank").strip() == b":0"


def pb_string(field: int, value: str) -> bytes:
    data = value.encode()
    assert len(data) < 128
    return bytes([field << 3 | 2, len(data)]) + data


def test_a_data_plane_that_would_not_check_tokens_gets_no_session_key(sc):
    """SigningKeyRequest.session_aware: an older data plane, which would
    ignore a grant's token and expiry, is told the key is unknown."""
    import grpc

    c = sc.assume("dpA", mint(sc.idp, sub="hank", groups=[]))
    date = time.strftime("%Y%m%d", time.gmtime())
    request = (pb_string(1, c["AccessKeyId"]) + pb_string(2, date) + pb_string(3, REGION) + pb_string(4, "s3"))
    channel = grpc.insecure_channel(sc.addrs["cp2"])
    try:
        signing_key = channel.unary_unary("/s3gate.v1.Decisions/SigningKey")
        auth = (("authorization", f"Bearer {CLUSTER_TOKEN}"),)
        with pytest.raises(grpc.RpcError) as e:
            signing_key(request, metadata=auth, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
        answer = signing_key(request + b"\x28\x01", metadata=auth, timeout=5)  # session_aware = true
        # field 4: the 32-byte SHA-256 of the session token
        assert b"\x22\x20" in answer and len(answer) > 64
    finally:
        channel.close()
