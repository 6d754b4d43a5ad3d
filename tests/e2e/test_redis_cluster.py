"""Control planes sharing state through a real redis-server, two data planes,
and the `s3gate admin` CLI.

- a key created through one control plane works at both data planes within 1 s;
  revoking it (through the other control plane) stops it within 1 s at both;
- a rule change takes effect at both data planes within 1 s;
- Redis paused: control planes keep answering from their local state, Admin
  writes fail with a clear error; Redis back: writes work again;
- Redis restarted (append-only file): nothing is lost;
- secrets are encrypted at rest in Redis.
"""

import json
import os
import shutil
import signal
import subprocess
import time
import uuid

import botocore.exceptions
import pytest

from conftest import REGION, Proc, _client, gateway_bin, gateway_env, make_keys, node_files, render_config, unused_port
from harness.cluster import Redis, gen_master_key, start_controlplane, start_dataplane

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
CLUSTER_TOKEN = "cluster-" + uuid.uuid4().hex


class RedisCluster:
    def __init__(self, tmp, backend, redis: Redis):
        self.tmp, self.backend, self.redis = tmp, backend, redis
        self.keys = make_keys()
        self.config = tmp / "seed.toml"
        # short TTLs so "within the TTL" stays quick to observe
        self.config.write_text(render_config(backend, self.keys, unused_port())
                               + '\n[cache]\ndecision_ttl = "3s"\nkey_ttl = "3s"\nroute_ttl = "3s"\n')
        self.master_key = gen_master_key(gateway_bin())
        self.env = gateway_env(backend, self.keys, "debug", S3GATE_MASTER_KEY=self.master_key,
                               S3GATE_ADMIN_TOKEN=ADMIN_TOKEN, S3GATE_CLUSTER_TOKEN=CLUSTER_TOKEN)
        self.procs: dict[str, Proc] = {}
        self.addrs: dict[str, str] = {}

    def start_cp(self, name):
        self.procs[name], self.addrs[name] = start_controlplane(
            gateway_bin(), name, config=self.config, redis_url=self.redis.url, replica=name, env=self.env,
            **node_files(self.tmp, name))

    def start_dp(self, name):
        # the control planes as separate --control-plane values
        urls = [f"http://{self.addrs[c]}" for c in ("cp1", "cp2")]
        self.procs[name], self.addrs[name] = start_dataplane(
            gateway_bin(), name, control_planes=urls, region=REGION, env=self.env, **node_files(self.tmp, name))

    def admin(self, cp: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(gateway_bin()), "admin", "--control-plane", f"http://{self.addrs[cp]}", "--json", *args]
        env = {k: v for k, v in self.env.items() if k != "S3GATE_MASTER_KEY"}
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
        if check:
            assert r.returncode == 0, f"admin {args} failed: {r.stderr}"
        return r

    def admin_json(self, cp: str, *args: str):
        return json.loads(self.admin(cp, *args).stdout)

    def s3(self, dp: str, access_key: str, secret: str):
        return _client(f"http://{self.addrs[dp]}", access_key, secret)


@pytest.fixture(scope="module")
def rc(tmp_path_factory, backend):
    tmp = tmp_path_factory.mktemp("redis-cluster")
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    # appendonly: a restart keeps the data, as a production Redis would
    redis = Redis(exe, tmp, tmp / "redis.log", appendonly=True)
    redis.start()
    c = RedisCluster(tmp, backend, redis)
    c.start_cp("cp1")
    c.start_cp("cp2")
    c.start_dp("dp1")
    c.start_dp("dp2")
    yield c
    for p in list(c.procs.values()):
        p.stop()
    if redis.proc:
        redis.proc.stop()


def eventually(pred, what: str, within: float = 1.0):
    """Polls `pred` until it holds; fails if it takes longer than `within` seconds."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < within + 2:  # keep polling a little longer to report the real delay
        try:
            if pred():
                took = time.monotonic() - start
                assert took <= within, f"{what} took {took:.2f}s (> {within}s)"
                return took
        except botocore.exceptions.ClientError as e:
            last = e
        time.sleep(0.02)
    pytest.fail(f"{what} did not happen within {within}s (last error: {last})")


def works(client, key="probe.txt") -> bool:
    try:
        client.put_object(Bucket="data", Key=f"rc/{key}", Body=b"x")
        return True
    except botocore.exceptions.ClientError as e:
        if e.response["ResponseMetadata"]["HTTPStatusCode"] in (403,):
            return False
        raise


def test_admin_key_lifecycle_reaches_every_data_plane(rc):
    k = rc.admin_json("cp1", "keys", "create", "--principal", "alice")
    assert k["principal"] == "alice" and len(k["secret_key"]) >= 40
    listed = rc.admin_json("cp2", "keys", "list")
    assert k["access_key"] in [x["access_key"] for x in listed]
    assert all("secret" not in json.dumps(x).lower() for x in listed), "listing must not carry secrets"

    c1 = rc.s3("dp1", k["access_key"], k["secret_key"])
    c2 = rc.s3("dp2", k["access_key"], k["secret_key"])
    eventually(lambda: works(c1) and works(c2), "new key usable at both data planes")

    # rotate: the old secret stops, the new one works
    rotated = rc.admin_json("cp2", "keys", "rotate", k["access_key"])
    assert rotated["secret_key"] != k["secret_key"]
    c1_new = rc.s3("dp1", k["access_key"], rotated["secret_key"])
    eventually(lambda: not works(c1) and works(c1_new), "rotation at dp1")

    # revoke through the *other* control plane
    rc.admin("cp2", "keys", "revoke", k["access_key"])
    eventually(lambda: not works(c1_new) and not works(rc.s3("dp2", k["access_key"], rotated["secret_key"])),
               "revoked key refused at both data planes")


def test_rule_change_reaches_every_data_plane(rc):
    bob = rc.keys["bob"]
    c1 = rc.s3("dp1", bob.access_key, bob.secret_key)
    c2 = rc.s3("dp2", bob.access_key, bob.secret_key)
    key = f"shared/{uuid.uuid4().hex}"
    assert not works(c1, key) and not works(c2, key)  # bob is limited to reports/
    rc.admin("cp1", "rules", "put", "--id", "bob-shared", "--effect", "allow", "--principal", "bob",
             "--action", "s3:PutObject", "--resource", "data/rc/shared/*")
    eventually(lambda: works(c1, key) and works(c2, key), "new allow rule at both data planes")
    explain = rc.admin_json("cp2", "explain", "--access-key", bob.access_key, "--action", "s3:PutObject",
                            "--bucket", "data", "--key", f"rc/{key}")
    assert {k: explain[k] for k in ("allow", "reason", "rule", "principal", "identity", "decided_by")} == {
        "allow": True, "reason": "allowed by rule bob-shared", "rule": "bob-shared", "principal": "bob",
        "identity": "key", "decided_by": "rules"}  # fmt: skip
    assert [(s["source"], s["verdict"]) for s in explain["sources"]] == [("rules", "allow")]
    as_jwt = rc.admin_json("cp2", "explain", "--principal", "bob", "--identity", "jwt", "--action",
                           "s3:PutObject", "--bucket", "data", "--key", f"rc/{key}")
    assert as_jwt["identity"] == "jwt" and as_jwt["allow"], as_jwt
    rc.admin("cp2", "rules", "put", "--id", "bob-shared-deny", "--effect", "deny", "--principal", "bob",
             "--action", "s3:*", "--resource", "data/rc/shared/*")
    eventually(lambda: not works(c1, key) and not works(c2, key), "deny rule at both data planes")
    rc.admin("cp1", "rules", "delete", "bob-shared-deny")
    rc.admin("cp1", "rules", "delete", "bob-shared")


def test_bucket_patterns_and_default_backend_reach_every_data_plane(rc, backend):
    """A pattern and the default backend set through one control plane reach
    both data planes through Redis and Watch, within a second: sooner than
    the 5 s for which a data plane remembers a name nothing served."""
    alice = rc.keys["alice"]
    c1 = rc.s3("dp1", alice.access_key, alice.secret_key)
    c2 = rc.s3("dp2", alice.access_key, alice.secret_key)
    tag = uuid.uuid4().hex[:6]
    pat, free = f"rcpat-{tag}", f"rcfree-{tag}"
    rc.admin("cp1", "rules", "put", "--id", "alice-rc-buckets", "--effect", "allow", "--principal", "alice",
             "--action", "s3:*", "--resource", "rcpat-*", "--resource", "rcpat-*/*", "--resource", "rcfree-*",
             "--resource", "rcfree-*/*")  # fmt: skip

    def status(call, **kw) -> int:
        try:
            call(**kw)
            return 200
        except botocore.exceptions.ClientError as e:
            return e.response["ResponseMetadata"]["HTTPStatusCode"]

    # Allowed but unserved: each data plane now remembers both names as unknown.
    eventually(lambda: status(c1.head_bucket, Bucket=pat) == 404 and status(c2.head_bucket, Bucket=pat) == 404
               and status(c1.head_bucket, Bucket=free) == 404, "the rule at both data planes")  # fmt: skip
    rc.admin("cp1", "buckets", "put", "--name", "rcpat-*", "--backend", "local", "--backend-bucket", "rc-{name}")
    try:
        eventually(lambda: status(c2.create_bucket, Bucket=pat) == 200, "the pattern at dp2")
        assert (backend.root / f"rc-{pat}").is_dir()
        eventually(lambda: status(c1.head_bucket, Bucket=pat) == 200, "the pattern at dp1")
        rc.admin("cp2", "buckets", "default", "local")
        eventually(lambda: status(c1.create_bucket, Bucket=free) == 200, "the default backend at dp1")
        assert (backend.root / free).is_dir()
        listed = {b["Name"] for b in c2.list_buckets()["Buckets"]}
        assert {pat, free} <= listed and f"rc-{pat}" not in listed, listed
        assert rc.admin_json("cp2", "status")["default_backend"] == "local"
        c1.delete_bucket(Bucket=free)
        rc.admin("cp1", "buckets", "default", "--off")
        eventually(lambda: status(c2.create_bucket, Bucket=free) == 403, "default off at dp2")
        assert not (backend.root / free).exists()
        c2.delete_bucket(Bucket=pat)
        assert not (backend.root / f"rc-{pat}").exists()
    finally:
        rc.admin("cp1", "buckets", "default", "--off")
        rc.admin("cp2", "buckets", "delete", "rcpat-*")
        rc.admin("cp1", "rules", "delete", "alice-rc-buckets")
    eventually(lambda: status(c1.head_bucket, Bucket=pat) == 403, "the pattern gone at dp1")


def test_admin_requires_the_token(rc):
    argv = [str(gateway_bin()), "admin", "--control-plane", f"http://{rc.addrs['cp1']}", "--token", "wrong",
            "keys", "list"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if k != "S3GATE_ADMIN_TOKEN"})
    assert r.returncode != 0
    assert "did not accept the admin token" in r.stderr, r.stderr


def test_decisions_require_the_cluster_token(rc):
    """GetRoute answers carry backend credentials: no token, no answer."""
    import grpc

    channel = grpc.insecure_channel(rc.addrs["cp1"])
    get_route = channel.unary_unary("/s3gate.v1.Decisions/GetRoute")
    request = b"\x0a\x04data"  # GetRouteRequest{bucket: "data"}
    try:
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", f"Bearer {ADMIN_TOKEN}")]):
            with pytest.raises(grpc.RpcError) as e:
                get_route(request, metadata=metadata, timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = get_route(request, metadata=[("authorization", f"Bearer {CLUSTER_TOKEN}")], timeout=5)
        assert b"data-prod" in answer
    finally:
        channel.close()


def test_secrets_are_encrypted_at_rest(rc):
    k = rc.admin_json("cp1", "keys", "create", "--principal", "carol", "--group", "ops")
    dump = rc.redis.call("HGETALL", "s3gate:keys") + rc.redis.call("HGETALL", "s3gate:backends")
    assert k["access_key"].encode() in dump, "the test must be looking at the right hashes"
    assert k["secret_key"].encode() not in dump
    assert rc.backend.creds.secret_key.encode() not in dump
    for key in rc.keys.values():
        assert key.secret_key.encode() not in dump


def test_redis_outage_and_recovery(rc):
    alice = rc.keys["alice"]
    c1 = rc.s3("dp1", alice.access_key, alice.secret_key)
    assert works(c1)
    before = rc.admin_json("cp1", "keys", "create", "--principal", "dave", "--group", "analysts")

    # Redis stops answering: reads go on from the replicas' local state ...
    rc.redis.proc.popen.send_signal(signal.SIGSTOP)
    try:
        for i in range(5):
            assert works(c1, f"outage-{i}-{uuid.uuid4().hex}")  # new keys: uncached decisions
        status = rc.admin_json("cp2", "status")
        assert status["store"] == "redis" and status["store_healthy"] is False
        # ... and writes fail with a clear error
        r = rc.admin("cp1", "keys", "create", "--principal", "erin", check=False)
        assert r.returncode != 0
        assert "state store unavailable" in r.stderr, r.stderr
    finally:
        rc.redis.proc.popen.send_signal(signal.SIGCONT)

    # Redis back: writes work again, nothing lost
    k = rc.admin_json("cp1", "keys", "create", "--principal", "alice")
    assert rc.admin_json("cp2", "status")["store_healthy"] is True
    eventually(lambda: works(rc.s3("dp2", k["access_key"], k["secret_key"])), "key made after the outage", 2.0)

    # a full Redis restart (append-only file) keeps everything
    rc.redis.proc.stop()
    rc.redis.start()
    listed = {x["access_key"] for x in rc.admin_json("cp2", "keys", "list")}
    assert {before["access_key"], k["access_key"], alice.access_key} <= listed
    k2 = rc.admin_json("cp2", "keys", "create", "--principal", "alice")
    eventually(lambda: works(rc.s3("dp1", k2["access_key"], k2["secret_key"])), "key made after a Redis restart", 3.0)


def test_status_lists_every_replica(rc):
    status = rc.admin_json("cp1", "status")
    assert status["store"] == "redis" and status["store_healthy"] is True
    assert {"cp1", "cp2"} <= set(status["replicas_seen"]), status


def test_admin_manages_backends_and_buckets(rc, backend):
    env_var = "S3GATE_TEST_FS2_SECRET"
    rc.env[env_var] = backend.creds.secret_key
    try:
        rc.admin("cp1", "backends", "put", "--name", "fs2", "--endpoint", backend.endpoint,
                 "--access-key", backend.creds.access_key, "--secret-key-env", env_var)
    finally:
        del rc.env[env_var]
    listed = rc.admin_json("cp2", "backends", "list")
    assert "fs2" in [b["name"] for b in listed]
    assert backend.creds.secret_key not in json.dumps(listed)
    # the credential's kind and public part, never its secret; a backend
    # seeded from the config file lists the same way
    by_name = {b["name"]: b for b in listed}
    for name in ("fs2", "local"):
        assert by_name[name]["credentials"] == {"kind": "static_hmac", "access_key": backend.creds.access_key}
    # an update that leaves the secret out keeps the stored one (the moved
    # bucket below signs with it)
    rc.admin("cp1", "backends", "put", "--name", "fs2", "--endpoint", backend.endpoint,
             "--access-key", backend.creds.access_key)

    rc.admin("cp2", "buckets", "put", "--name", "moved", "--backend", "fs2", "--backend-bucket", "other")
    assert {"name": "moved", "backend": "fs2", "backend_bucket": "other", "cors": []} in rc.admin_json("cp1", "buckets", "list")
    rc.admin("cp1", "rules", "put", "--id", "alice-moved", "--effect", "allow", "--principal", "alice",
             "--action", "s3:*", "--resource", "moved", "--resource", "moved/*")
    assert "alice-moved" in [r["id"] for r in rc.admin_json("cp2", "rules", "list")]

    alice = rc.keys["alice"]
    c1, c2 = rc.s3("dp1", alice.access_key, alice.secret_key), rc.s3("dp2", alice.access_key, alice.secret_key)
    key = f"moved-{uuid.uuid4().hex}.txt"

    def put_moved(client) -> bool:
        client.put_object(Bucket="moved", Key=key, Body=b"moved")
        return True

    eventually(lambda: put_moved(c1), "new bucket usable")
    assert backend.file("other", key).read_bytes() == b"moved"
    assert c2.get_object(Bucket="moved", Key=key)["Body"].read() == b"moved"

    # a backend in use cannot go; the bucket can, and every data plane forgets its route
    r = rc.admin("cp1", "backends", "delete", "fs2", check=False)
    assert r.returncode != 0 and "used by bucket" in r.stderr
    rc.admin("cp2", "buckets", "delete", "moved")

    def gone(client) -> bool:
        try:
            client.head_object(Bucket="moved", Key=key)
            return False
        except botocore.exceptions.ClientError as e:
            return e.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    eventually(lambda: gone(c1) and gone(c2), "deleted bucket gone at both data planes")
    rc.admin("cp1", "backends", "delete", "fs2")
    rc.admin("cp1", "rules", "delete", "alice-moved")
    assert "fs2" not in [b["name"] for b in rc.admin_json("cp2", "backends", "list")]


def test_revoke_holds_within_the_ttl_when_a_control_plane_stalls(rc):
    """cp1 stops answering without closing its connections (SIGSTOP): a data
    plane watching it hears nothing. Calls fail over to cp2, and a revocation
    made there still takes effect within key_ttl (3 s) plus one call timeout."""
    k = rc.admin_json("cp2", "keys", "create", "--principal", "alice")
    c1 = rc.s3("dp1", k["access_key"], k["secret_key"])
    eventually(lambda: works(c1), "new key usable", 1.0)
    rc.procs["cp1"].popen.send_signal(signal.SIGSTOP)
    try:
        rc.admin("cp2", "keys", "revoke", k["access_key"])
        eventually(lambda: not works(c1), "revocation with a stalled control plane", 3.0 + 2.0 + 1.0)
    finally:
        rc.procs["cp1"].popen.send_signal(signal.SIGCONT)
