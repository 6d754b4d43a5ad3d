"""`[[policy]] kind = "rego"`: the real .rego policy of tests/fixtures/policy
evaluated in-process, after the built-in rules, through boto3, the aws cli and
`admin explain`, in `serve` and in distributed mode.

Covers: prefix grants (each principal's home/ prefix, which no [[rules]]
grant), group grants from the keys' groups (ops → data/ops/), an explicit
deny in Rego beating a built-in allow (data/quarantine/) and a built-in deny
beating a Rego allow (alice's data/secret/), a time window read from the
input's `time` whose answers are not cached (ttl 0, exact: the same request
flips when the window closes, with no reload), the per-source explanation,
a reload on file change that reaches the data plane's cache without a
restart, a broken file keeping the old policy, a broken file at start
refusing to start, and the same policy through a control plane and a data
plane.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from conftest import REGION, Proc, gateway_bin, gateway_env, make_keys, node_files, render_config, stop_gateway, unused_port, wait_for
from harness.cluster import start_controlplane, start_dataplane
from policyutil import CLOSED_WINDOW, error_code, explain, policy_dir, policy_tables, start_policy_gateway, status, unique


def rego_policy(d) -> str:
    return policy_tables(dict(kind="builtin"),
                         dict(kind="rego", files=[str(d / "s3.rego"), str(d / "window.rego")]))  # fmt: skip


@pytest.fixture(scope="module")
def rego(backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rego")
    d = policy_dir(tmp)
    gw, grpc = start_policy_gateway(tmp, backend, rego_policy(d), "s3gate-rego")
    yield gw, grpc, d
    stop_gateway(gw)


def client(gw, s3_client, who):
    k = gw.keys[who]
    return s3_client(k.access_key, k.secret_key, endpoint_url=gw.endpoint)


def test_prefix_grants_give_each_principal_its_home(rego, s3_client, backend):
    gw, _, _ = rego
    bob = client(gw, s3_client, "bob")
    key = unique("home/bob/")
    bob.put_object(Bucket="data", Key=key, Body=b"mine")
    assert bob.get_object(Bucket="data", Key=key)["Body"].read() == b"mine"
    listed = bob.list_objects_v2(Bucket="data", Prefix="home/bob/")
    assert key in [o["Key"] for o in listed.get("Contents", [])]
    # Another principal's home: nothing allows it, nothing reaches the backend.
    other = unique("home/dave/")
    assert error_code(lambda: bob.put_object(Bucket="data", Key=other, Body=b"x")) == "AccessDenied"
    assert not backend.exists("data-prod", other)
    # Without the Rego source, bob has nothing under home/ (only data/reports/*).
    assert backend.exists("data-prod", key)


def test_group_grants_come_from_the_keys_groups(rego, s3_client, backend):
    gw, _, _ = rego
    key = unique("ops/")
    # carol is in ops: [[rules]] give ops only the bucket "other"; Rego adds data/ops/.
    client(gw, s3_client, "carol").put_object(Bucket="data", Key=key, Body=b"ops")
    assert backend.exists("data-prod", key)
    denied = unique("ops/")
    assert error_code(lambda: client(gw, s3_client, "bob").put_object(Bucket="data", Key=denied, Body=b"x")) == "AccessDenied"
    assert not backend.exists("data-prod", denied)


def test_a_rego_deny_beats_a_builtin_allow(rego, s3_client, backend):
    gw, grpc, _ = rego
    alice = client(gw, s3_client, "alice")
    # [[rules]] allow alice everything on data ...
    ok = unique("plain/")
    alice.put_object(Bucket="data", Key=ok, Body=b"x")
    # ... but Rego quarantines data/quarantine/.
    key = unique("quarantine/")
    assert error_code(lambda: alice.put_object(Bucket="data", Key=key, Body=b"x")) == "AccessDenied"
    assert not backend.exists("data-prod", key)
    e = explain(grpc, "--principal", "alice", "--group", "analysts", "--action", "s3:PutObject", "--bucket", "data",
                "--key", key)  # fmt: skip
    assert (e["allow"], e["decided_by"], e["reason"]) == (False, "rego", "quarantined by rego")
    assert [(s["source"], s["verdict"]) for s in e["sources"]] == [("rules", "allow"), ("rego", "deny")]


def test_a_builtin_deny_beats_a_rego_allow(rego, s3_client, backend):
    gw, grpc, _ = rego
    key = unique("secret/")
    backend.put("data-prod", key, b"classified")
    # Rego grants the analysts data/secret/; [[rules]] deny alice data/secret/*.
    assert error_code(lambda: client(gw, s3_client, "alice").get_object(Bucket="data", Key=key)) == "AccessDenied"
    assert client(gw, s3_client, "dave").get_object(Bucket="data", Key=key)["Body"].read() == b"classified"
    e = explain(grpc, "--principal", "alice", "--group", "analysts", "--action", "s3:GetObject", "--bucket", "data",
                "--key", key)  # fmt: skip
    assert (e["allow"], e["decided_by"]) == (False, "rules")
    answers = {s["source"]: s for s in e["sources"]}
    assert answers["rules"]["verdict"] == "deny"
    assert answers["rego"]["verdict"] == "allow"
    assert answers["rego"]["scope"] == 'prefix "secret/"' and answers["rego"]["ttl_ms"] == 30_000


def window_rego(start_ns: int, end_ns: int) -> str:
    return f"package s3gate\n\nwindow_start_ns := {start_ns}\n\nwindow_end_ns := {end_ns}\n"


def test_a_time_window_is_decided_per_request_and_not_cached(rego, s3_client, backend):
    gw, grpc, d = rego
    dave = client(gw, s3_client, "dave")
    key = unique("window/")
    ask = ("--principal", "dave", "--group", "analysts", "--action", "s3:PutObject", "--bucket", "data", "--key", key)
    assert error_code(lambda: dave.put_object(Bucket="data", Key=key, Body=b"x")) == "AccessDenied"
    # Open the window for a few seconds; the file change is picked up within ~2 s.
    # `time` in the input has whole seconds: the window ends on a second.
    now = time.time_ns()
    end = (now // 1_000_000_000 + 8) * 1_000_000_000
    (d / "window.rego").write_text(window_rego(now - 1_000_000_000, end))
    try:
        wait_for(lambda: explain(grpc, *ask)["allow"], "the window to open", gw.proc, timeout=15)
        e = explain(grpc, *ask)
        # Depends on `time`: exact scope, TTL 0, so the data plane keeps nothing.
        assert (e["decided_by"], e["scope"], e["ttl_ms"]) == ("rego", "exact", 0)
        dave.put_object(Bucket="data", Key=key, Body=b"inside")
        assert backend.exists("data-prod", key)
        # The same request once the window has closed: no reload, no
        # invalidation; only a decision made per request can refuse it.
        time.sleep(max(0.0, (end - time.time_ns()) / 1e9) + 1.1)
        assert error_code(lambda: dave.put_object(Bucket="data", Key=key, Body=b"after")) == "AccessDenied"
        rego_answer = [s for s in explain(grpc, *ask)["sources"] if s["source"] == "rego"][0]
        assert (rego_answer["verdict"], rego_answer["reason"]) == ("abstain", "rego: outside the time window")
    finally:
        (d / "window.rego").write_text(CLOSED_WINDOW)


def test_the_aws_cli(rego, tmp_path, backend):
    gw, _, _ = rego
    bob = gw.keys["bob"]
    src = tmp_path / "f.txt"
    src.write_text("from the aws cli\n")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": bob.access_key, "AWS_SECRET_ACCESS_KEY": bob.secret_key,
           "AWS_DEFAULT_REGION": REGION, "HOME": str(tmp_path)}  # fmt: skip

    def aws(*args):
        return subprocess.run(["aws", "--endpoint-url", gw.endpoint, "s3", *args], capture_output=True, text=True,
                              env=env, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip

    key = unique("home/bob/cli-")
    r = aws("cp", str(src), f"s3://data/{key}")
    assert r.returncode == 0, r.stderr
    assert backend.file("data-prod", key).read_text() == "from the aws cli\n"
    r = aws("ls", "s3://data/home/bob/")
    assert r.returncode == 0 and key.split("/")[-1] in r.stdout, r.stderr
    denied = unique("home/carol/cli-")
    r = aws("cp", str(src), f"s3://data/{denied}")
    assert r.returncode != 0 and "AccessDenied" in r.stderr
    assert not backend.exists("data-prod", denied)


def test_a_changed_file_reloads_and_a_broken_one_keeps_the_old_policy(backend, tmp_path, s3_client):
    d = policy_dir(tmp_path)
    gw, grpc = start_policy_gateway(tmp_path, backend, rego_policy(d), "s3gate-rego-reload")
    try:
        alice = client(gw, s3_client, "alice")
        key = unique("quarantine/")
        backend.put("data-prod", key, b"held")
        # Denied, and the denial is cached by the data plane (30 s).
        assert error_code(lambda: alice.get_object(Bucket="data", Key=key)) == "AccessDenied"
        assert error_code(lambda: alice.get_object(Bucket="data", Key=key)) == "AccessDenied"
        # Move the quarantine: the new policy and a policy invalidation
        # reach the data plane long before the cached denial's TTL.
        text = (d / "s3.rego").read_text()
        (d / "s3.rego").write_text(text.replace('"quarantine/"', '"quarantine-v2/"'))
        started = time.monotonic()
        wait_for(lambda: status(lambda: alice.get_object(Bucket="data", Key=key)) == 200,
                 "the reloaded policy to allow the cached key", gw.proc, timeout=15)  # fmt: skip
        assert time.monotonic() - started < 15
        # Logged before the new decisions were served; the log thread writes
        # its batch on its own schedule, so the line may land a moment later.
        wait_for(lambda: "rego policy reloaded" in gw.log_path.read_text(), "the reload in the log", gw.proc,
                 timeout=10)  # fmt: skip
        moved = unique("quarantine-v2/")
        assert error_code(lambda: alice.put_object(Bucket="data", Key=moved, Body=b"x")) == "AccessDenied"
        # A file that no longer compiles: logged, and the last good policy stays.
        (d / "s3.rego").write_text(text.replace('"quarantine/"', '"quarantine-v2/"') + "\nbroken := {{{\n")
        wait_for(lambda: "rego policy not reloaded" in gw.log_path.read_text(), "the refusal in the log", gw.proc,
                 timeout=15)  # fmt: skip
        again = unique("quarantine-v2/")
        assert error_code(lambda: alice.put_object(Bucket="data", Key=again, Body=b"x")) == "AccessDenied"
        # (A fresh client: the denied PUT's connection may be closed under
        # the pooled client, and retries are off in this suite.)
        alice = client(gw, s3_client, "alice")
        assert status(lambda: alice.get_object(Bucket="data", Key=key)) == 200
    finally:
        stop_gateway(gw)


def test_a_broken_file_at_start_refuses_to_start(backend, tmp_path):
    d = policy_dir(tmp_path)
    (d / "s3.rego").write_text("package s3gate\n\nimport rego.v1\n\ndecision := {\n  \"allow\": true,,\n}\n")
    keys = make_keys()
    cfg = tmp_path / "broken.toml"
    cfg.write_text(render_config(backend, keys, unused_port()) + rego_policy(d))
    r = subprocess.run([str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                       env=gateway_env(backend, keys, "info"))  # fmt: skip
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert f"{d / 's3.rego'}:6" in out, out


def test_distributed_control_plane_and_data_plane(backend, tmp_path):
    """The Rego source lives in the control plane; the data plane caches its
    answers and forgets them when the control plane reloads the files."""
    d = policy_dir(tmp_path)
    keys = make_keys()
    cfg = tmp_path / "cp.toml"
    cfg.write_text(render_config(backend, keys, unused_port()) + rego_policy(d))
    env = gateway_env(backend, keys, "debug")
    cp, grpc = start_controlplane(gateway_bin(), "cp-rego", config=cfg, env=env, **node_files(tmp_path, "cp"))
    dp, s3 = start_dataplane(gateway_bin(), "dp-rego", control_planes=[f"http://{grpc}"], region=REGION, env=env,
                             **node_files(tmp_path, "dp"))  # fmt: skip
    try:
        from conftest import _client

        def c(who):
            return _client(f"http://{s3}", keys[who].access_key, keys[who].secret_key)

        key = unique("home/bob/")
        c("bob").put_object(Bucket="data", Key=key, Body=b"dp")
        assert backend.exists("data-prod", key)
        q = unique("quarantine/")
        backend.put("data-prod", q, b"held")
        assert error_code(lambda: c("alice").get_object(Bucket="data", Key=q)) == "AccessDenied"
        text = (d / "s3.rego").read_text()
        (d / "s3.rego").write_text(text.replace('"quarantine/"', '"quarantine-v2/"'))
        wait_for(lambda: status(lambda: c("alice").get_object(Bucket="data", Key=q)) == 200,
                 "the data plane to forget the cached denial", dp, timeout=15)  # fmt: skip
    finally:
        dp.stop()
        cp.stop()
