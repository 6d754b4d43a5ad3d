"""`[[policy]] kind = "opa"`: decisions from an OPA server over its REST data
API, after the built-in rules, through boto3 and `admin explain`.

The OPA server is tests/harness/opa_server.py, NOT the real OPA: no OPA
binary can be installed from crates.io, PyPI, npm or Debian. It implements
OPA's data API (POST /v1/data/<path> {"input": …} → {"result": …}) and
evaluates the same tests/fixtures/policy/s3.rego as the Rego tests with a real
Rego engine (regorus, from PyPI).

Covers: a prefix grant and a deny exception answered by OPA, through boto3
and the aws cli; fail closed: OPA down → 503 and nothing reaches the
backend; a slow OPA → timeout → 503; the breaker: once open, requests fail
fast (the latency drop is measured); the recovery when OPA is back; and
distributed mode (OPA asked by `s3gate controlplane`, its answers cached by
`s3gate dataplane`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REGION, Proc, gateway_bin, gateway_env, make_keys, node_files, read_ready_file, render_config, stop_gateway, unused_port, wait_for
from harness.cluster import start_controlplane, start_dataplane
from policyutil import error_code, explain, policy_dir, policy_tables, start_policy_gateway, status, unique

TIMEOUT_MS = 300


class Opa:
    def __init__(self, tmp, files):
        self.tmp, self.files = tmp, files
        self.proc = None
        self.port = 0

    def start(self):
        ready = self.tmp / "opa.ready.json"
        ready.unlink(missing_ok=True)
        script = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "harness" / "opa_server.py")
        self.proc = Proc("opa", [sys.executable, script, "--port", str(self.port), "--ready-file", str(ready),
                                 *map(str, self.files)], self.tmp / "opa.log", append=True)  # fmt: skip
        info = wait_for(lambda: read_ready_file(ready), "the OPA server ready file", self.proc)
        self.port = int(info["addr"].rsplit(":", 1)[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.stop()

    def delay(self, ms: int):
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/test/delay", data=str(ms).encode()), timeout=5)

    def count(self) -> int:
        return json.load(urllib.request.urlopen(f"{self.url}/test/count", timeout=5))["count"]


@pytest.fixture(scope="module")
def opa_gw(backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opa")
    d = policy_dir(tmp)
    opa = Opa(tmp, [d / "s3.rego", d / "window.rego"]).start()
    policy = policy_tables(dict(kind="builtin"),
                           dict(kind="opa", url=f"{opa.url}/v1/data/s3gate/decision", timeout=f"{TIMEOUT_MS}ms"))  # fmt: skip
    gw, grpc = start_policy_gateway(tmp, backend, policy, "s3gate-opa")
    yield gw, grpc, opa
    stop_gateway(gw)
    if opa.proc.alive():
        opa.stop()


def client(gw, s3_client, who):
    k = gw.keys[who]
    return s3_client(k.access_key, k.secret_key, endpoint_url=gw.endpoint)


def test_opa_grants_a_prefix_and_its_deny_beats_a_builtin_allow(opa_gw, s3_client, backend):
    gw, grpc, opa = opa_gw
    asked = opa.count()
    bob = client(gw, s3_client, "bob")
    key = unique("home/bob/")
    bob.put_object(Bucket="data", Key=key, Body=b"via opa")
    assert backend.exists("data-prod", key)
    assert opa.count() > asked, "OPA was not asked"
    other = unique("home/carol/")
    assert error_code(lambda: bob.put_object(Bucket="data", Key=other, Body=b"x")) == "AccessDenied"
    q = unique("quarantine/")
    assert error_code(lambda: client(gw, s3_client, "alice").put_object(Bucket="data", Key=q, Body=b"x")) == "AccessDenied"
    assert not backend.exists("data-prod", q)
    e = explain(grpc, "--principal", "bob", "--action", "s3:PutObject", "--bucket", "data", "--key", key)
    assert (e["allow"], e["decided_by"]) == (True, "opa")
    answers = {s["source"]: s for s in e["sources"]}
    assert answers["rules"]["verdict"] == "abstain"
    assert answers["opa"]["verdict"] == "allow"
    assert answers["opa"]["scope"] == 'prefix "home/bob/"'
    assert e["scope"] == 'prefix "home/bob/"'


def test_the_aws_cli(opa_gw, tmp_path, backend):
    gw, _, opa = opa_gw
    dave = gw.keys["dave"]  # nobody else here asks for home/dave/: OPA decides anew
    src = tmp_path / "f.txt"
    src.write_text("from the aws cli, decided by OPA\n")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": dave.access_key, "AWS_SECRET_ACCESS_KEY": dave.secret_key,
           "AWS_DEFAULT_REGION": REGION, "HOME": str(tmp_path)}  # fmt: skip

    def aws(*args):
        return subprocess.run(["aws", "--endpoint-url", gw.endpoint, "s3", *args], capture_output=True, text=True,
                              env=env, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip

    asked = opa.count()
    key = unique("home/dave/cli-")
    r = aws("cp", str(src), f"s3://data/{key}")
    assert r.returncode == 0, r.stderr
    assert backend.file("data-prod", key).read_text() == "from the aws cli, decided by OPA\n"
    assert opa.count() > asked, "OPA was not asked"
    r = aws("ls", "s3://data/home/dave/")
    assert r.returncode == 0 and key.split("/")[-1] in r.stdout, r.stderr
    denied = unique("home/carol/cli-")
    r = aws("cp", str(src), f"s3://data/{denied}")
    assert r.returncode != 0 and "AccessDenied" in r.stderr
    assert not backend.exists("data-prod", denied)


def put_timed(alice, key) -> tuple[int, float]:
    t = time.monotonic()
    code = status(lambda: alice.put_object(Bucket="data", Key=key, Body=b"x"))
    return code, time.monotonic() - t


def test_fail_closed_slow_then_breaker_then_down_then_back(opa_gw, s3_client, backend):
    gw, grpc, opa = opa_gw
    # alice: [[rules]] allow data/*, then OPA is asked (exact-scoped, so
    # every new key is a new decision).
    alice = client(gw, s3_client, "alice")
    warm = unique("plain/")
    assert put_timed(alice, warm)[0] == 200
    # A slow OPA: past the timeout the source cannot decide: 503.
    opa.delay(TIMEOUT_MS * 4)
    slow = []
    try:
        for _ in range(5):
            key = unique("plain/")
            code, took = put_timed(alice, key)
            assert code == 503, code
            assert not backend.exists("data-prod", key)
            slow.append(took)
        # Five failures in a row opened the breaker: no more waiting.
        fast = []
        for _ in range(5):
            key = unique("plain/")
            code, took = put_timed(alice, key)
            assert code == 503
            assert not backend.exists("data-prod", key)
            fast.append(took)
        # Still slow: should the breaker's cool-down end while the CLI starts
        # (a loaded machine), its probe meets the slow OPA and fails too.
        e = explain(grpc, "--principal", "alice", "--action", "s3:PutObject", "--bucket", "data", "--key", unique("plain/"))
        assert e["unavailable"] and e["decided_by"] == "opa"
    finally:
        opa.delay(0)
    slow_med, fast_med = sorted(slow)[2], sorted(fast)[2]
    print(f"\nslow OPA: median {slow_med * 1000:.0f} ms per request; breaker open: median {fast_med * 1000:.0f} ms")
    assert slow_med >= TIMEOUT_MS / 1000 * 0.9
    assert fast_med < slow_med / 3, (slow, fast)
    # Down: refused connections, 503, nothing at the backend.
    opa.stop()
    time.sleep(2.2)  # the breaker's cool-down (2 s): the next request probes the dead server
    for _ in range(3):
        key = unique("plain/")
        assert put_timed(alice, key)[0] == 503
        assert not backend.exists("data-prod", key)
    # Back on the same port: after the cool-down a probe succeeds and closes the breaker.
    opa.start()
    key = unique("plain/")
    wait_for(lambda: put_timed(alice, key)[0] == 200, "OPA decisions again", gw.proc, timeout=15)
    assert backend.exists("data-prod", key)


def test_distributed_control_plane_asks_opa(backend, tmp_path):
    """OPA is asked by `s3gate controlplane`; `s3gate dataplane` caches the
    answers: a cached allow holds while OPA is down, a new decision is 503
    and reaches nothing."""
    d = policy_dir(tmp_path)
    opa = Opa(tmp_path, [d / "s3.rego", d / "window.rego"]).start()
    keys = make_keys()
    cfg = tmp_path / "cp.toml"
    cfg.write_text(render_config(backend, keys, unused_port())
                   + policy_tables(dict(kind="opa", url=f"{opa.url}/v1/data/s3gate/decision", timeout=f"{TIMEOUT_MS}ms")))  # fmt: skip
    env = gateway_env(backend, keys, "debug")
    cp, grpc = start_controlplane(gateway_bin(), "cp-opa", config=cfg, env=env, **node_files(tmp_path, "cp"))
    dp, s3 = start_dataplane(gateway_bin(), "dp-opa", control_planes=[f"http://{grpc}"], region=REGION, env=env,
                             **node_files(tmp_path, "dp"))  # fmt: skip
    try:
        from conftest import _client

        def c(who):
            return _client(f"http://{s3}", keys[who].access_key, keys[who].secret_key)

        bob = c("bob")
        key = unique("home/bob/")
        asked = opa.count()
        bob.put_object(Bucket="data", Key=key, Body=b"dp")
        assert backend.exists("data-prod", key)
        assert opa.count() > asked, "OPA was not asked"
        assert error_code(lambda: bob.put_object(Bucket="data", Key=unique("home/carol/"), Body=b"x")) == "AccessDenied"
        # OPA's answer for bob's home is prefix-scoped: cached by the data
        # plane, it holds while OPA is down; another principal's new
        # decision cannot be made.
        opa.stop()
        again = unique("home/bob/")
        assert status(lambda: bob.put_object(Bucket="data", Key=again, Body=b"cached")) == 200
        assert backend.exists("data-prod", again)
        never = unique("home/alice/")
        assert status(lambda: c("alice").put_object(Bucket="data", Key=never, Body=b"x")) == 503
        assert not backend.exists("data-prod", never)
    finally:
        dp.stop()
        cp.stop()
        if opa.proc.alive():
            opa.stop()
