"""The SDK against a real gRPC server on 127.0.0.1 (port 0), called through
the generated stubs as s3gate calls it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

import s3gate_plugin
from s3gate_plugin._proto import health_pb2, health_pb2_grpc, plugin_pb2, plugin_pb2_grpc

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "original_callables.py"


def request(**fields) -> plugin_pb2.AuthorizeRequest:
    base = dict(
        principal="alice",
        groups=["staff", "ops"],
        identity=plugin_pb2.Identity(source="jwt", claims={"email": "a@example.com"}),
        action="s3:GetObject",
        bucket="reports",
        key="q1/summary.csv",
        prefix="",
        kind="object",
        method="GET",
        client_ip="127.0.0.1",
        time="2026-12-03T18:00:00Z",
        headers={"content-type": "text/csv"},
    )
    base.update(fields)
    return plugin_pb2.AuthorizeRequest(**base)


@pytest.fixture
def serve():
    """Starts a plugin; yields a stub factory bound to it."""
    servers = []

    def start(plugin: s3gate_plugin.Plugin):
        server, port = plugin.server("127.0.0.1:0")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        servers.append((server, channel))
        return plugin_pb2_grpc.PluginStub(channel), health_pb2_grpc.HealthStub(channel)

    yield start
    for server, channel in servers:
        channel.close()
        server.stop(None)


def test_the_handler_sees_the_input_document(serve):
    seen = []
    plugin = s3gate_plugin.Plugin()

    @plugin.authorize
    def authorize(req: s3gate_plugin.AuthorizeRequest) -> bool:
        seen.append(req)
        return True

    stub, _ = serve(plugin)
    assert stub.Authorize(request()).allow
    (req,) = seen
    assert (req.principal, tuple(req.groups), req.action, req.bucket) == (
        "alice", ("staff", "ops"), "s3:GetObject", "reports")
    assert (req.key, req.prefix, req.kind, req.method) == ("q1/summary.csv", "", "object", "GET")
    assert req.identity.source == "jwt" and req.identity.claims["email"] == "a@example.com"
    assert req.client_ip == "127.0.0.1" and req.time == "2026-12-03T18:00:00Z"
    assert req.headers == {"content-type": "text/csv"}


def test_booleans_allow_or_abstain_and_decisions_carry_scope_and_ttl(serve):
    answers = iter([
        True,
        False,
        s3gate_plugin.Decision(deny=True, reason="frozen"),
        s3gate_plugin.Decision(allow=True, reason="grant 7", ttl_s=5, scope_prefix="q1/"),
        s3gate_plugin.Decision(allow=True, scope_prefix=""),
    ])
    plugin = s3gate_plugin.Plugin()
    plugin.authorize(lambda req: next(answers))
    stub, _ = serve(plugin)

    r = stub.Authorize(request())
    assert (r.allow, r.deny) == (True, False)
    assert not r.HasField("ttl_s") and not r.HasField("scope_prefix")
    r = stub.Authorize(request())
    assert (r.allow, r.deny) == (False, False), "False abstains, it is not a deny"
    r = stub.Authorize(request())
    assert (r.allow, r.deny, r.reason) == (False, True, "frozen")
    r = stub.Authorize(request())
    assert (r.allow, r.reason, r.ttl_s, r.scope_prefix) == (True, "grant 7", 5, "q1/")
    r = stub.Authorize(request())
    assert r.HasField("scope_prefix") and r.scope_prefix == "", "an empty prefix is a scope, not silence"
    assert not r.HasField("ttl_s")


def test_secret_lookup(serve):
    plugin = s3gate_plugin.Plugin()

    @plugin.lookup_secret
    def lookup(access_key: str):
        if access_key == "AKIA1":
            return s3gate_plugin.Identity(secret="s3cr3t", principal="alice", groups=["staff"])
        return None

    stub, _ = serve(plugin)
    r = stub.LookupSecret(plugin_pb2.LookupSecretRequest(access_key="AKIA1"))
    assert (r.found, r.secret, r.principal, list(r.groups)) == (True, "s3cr3t", "alice", ["staff"])
    assert not stub.LookupSecret(plugin_pb2.LookupSecretRequest(access_key="nope")).found
    assert "s3cr3t" not in repr(s3gate_plugin.Identity(secret="s3cr3t", principal="a"))


def test_bucket_credentials(serve):
    plugin = s3gate_plugin.Plugin()
    calls = []

    @plugin.bucket_credentials
    def creds(principal: str, bucket: str):
        calls.append((principal, bucket))
        if bucket != "reports":
            return None
        return s3gate_plugin.Credentials(access_key=f"AK-{principal}", secret_key="sk", expires_unix=1900000000)

    stub, _ = serve(plugin)
    ask = plugin_pb2.BucketCredentialsRequest
    r = stub.BucketCredentials(ask(principal="alice", groups=["g"], bucket="reports", backend="b1"))
    assert (r.found, r.access_key, r.secret_key, r.session_token) == (True, "AK-alice", "sk", "")
    assert r.per_principal and r.expires_unix == 1900000000
    assert not stub.BucketCredentials(ask(principal="alice", bucket="other")).found
    assert calls == [("alice", "reports"), ("alice", "other")]
    shared = s3gate_plugin.Credentials(access_key="a", secret_key="topsecret", session_token="tkn-9f3", per_principal=False)
    assert "topsecret" not in repr(shared) and "tkn-9f3" not in repr(shared)


def test_a_failing_handler_is_internal_and_the_server_keeps_serving(serve, caplog):
    plugin = s3gate_plugin.Plugin()
    state = {"fail": True}

    @plugin.authorize
    def authorize(req):
        if state["fail"]:
            raise RuntimeError("database is down")
        return True

    @plugin.lookup_secret
    def lookup(access_key):
        return "just a string"  # not an Identity

    stub, _ = serve(plugin)
    with pytest.raises(grpc.RpcError) as e:
        stub.Authorize(request())
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "database is down" in caplog.text
    state["fail"] = False
    assert stub.Authorize(request()).allow
    with pytest.raises(grpc.RpcError) as e:
        stub.LookupSecret(plugin_pb2.LookupSecretRequest(access_key="AK"))
    assert e.value.code() == grpc.StatusCode.INTERNAL


def test_a_wrong_answer_type_is_internal_not_an_allow(serve):
    plugin = s3gate_plugin.Plugin()
    plugin.authorize(lambda req: "yes")  # truthy, but not a bool
    stub, _ = serve(plugin)
    with pytest.raises(grpc.RpcError) as e:
        stub.Authorize(request())
    assert e.value.code() == grpc.StatusCode.INTERNAL


def test_methods_without_a_handler_are_unimplemented(serve):
    stub, _ = serve(s3gate_plugin.Plugin())
    for call in (
        lambda: stub.Authorize(request()),
        lambda: stub.LookupSecret(plugin_pb2.LookupSecretRequest(access_key="AK")),
        lambda: stub.BucketCredentials(plugin_pb2.BucketCredentialsRequest(bucket="b")),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health(serve):
    _, health = serve(s3gate_plugin.Plugin())
    for service in ("", s3gate_plugin.SERVICE_NAME):
        r = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        health.Check(health_pb2.HealthCheckRequest(service="other"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    first = next(iter(health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)))
    assert first.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def example(tmp_path) -> Iterator[tuple[subprocess.Popen, str]]:
    """The ported example as a real process on port 0."""
    db = tmp_path / "db.json"
    db.write_text(json.dumps({
        "secrets": {"AKIAALICE": "alice-secret"},
        "grants": {"AKIAALICE": ["reports"]},
        "bucket_creds": {"AKIAALICE": {"reports": {"access_key": "BACKEND-A", "secret_key": "bsk"}}},
    }))
    ready = tmp_path / "ready.json"
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--listen", "127.0.0.1:0", "--db", str(db), "--ready-file", str(ready)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not ready.exists() or not ready.read_text():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "the example did not get ready"
        time.sleep(0.05)  # polling a ready file the process writes
    yield proc, json.loads(ready.read_text())["grpc"]
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_the_ported_example_answers_as_the_original_callables(example):
    proc, addr = example
    with grpc.insecure_channel(addr) as channel:
        stub = plugin_pb2_grpc.PluginStub(channel)
        assert stub.Authorize(request(principal="AKIAALICE", bucket="reports")).allow
        assert not stub.Authorize(request(principal="AKIAALICE", bucket="other")).allow
        assert not stub.Authorize(request(principal="AKIABOB", bucket="reports")).allow
        r = stub.LookupSecret(plugin_pb2.LookupSecretRequest(access_key="AKIAALICE"))
        assert (r.found, r.secret, r.principal) == (True, "alice-secret", "AKIAALICE")
        assert not stub.LookupSecret(plugin_pb2.LookupSecretRequest(access_key="AKIABOB")).found
        r = stub.BucketCredentials(plugin_pb2.BucketCredentialsRequest(principal="AKIAALICE", bucket="reports"))
        assert (r.found, r.access_key, r.secret_key, r.per_principal) == (True, "BACKEND-A", "bsk", True)
    # SIGTERM stops it cleanly.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
