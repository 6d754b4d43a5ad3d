"""The key-segment guard is per backend (`key_segment_guard`, on by default).

s3s-fs (the `local` backend) stores objects as files, so `reports/../x`
would be `x` there: the guard refuses keys with `.`/`..` segments or a
leading `/` for it. keyed_backend.py stores keys literally, as AWS S3 and
IBM COS do (and verifies SigV4, over the raw path): with
`key_segment_guard = false` such keys pass, are authorized as written, and
are stored under exactly that name.
"""

from __future__ import annotations

import subprocess

import pytest

from conftest import gateway_bin, gateway_env, rules_config, stop_gateway
from harness.config import q
from keyed_backend import KeyedBackend
from recorder import launch_gateway

PAIR = ("LITERALBACKENDKEY", "literal-backend-secret-0000")


@pytest.fixture(scope="module")
def literal(backend, tmp_path_factory):
    with KeyedBackend({PAIR[0]: (PAIR[1], None)}) as kb:
        extra = "\n".join([
            "", "[[backends]]", 'name = "literal"', f"endpoint = {q(kb.endpoint)}", 'region = "us-east-1"',
            f"access_key = {q(PAIR[0])}", f"secret_key = {q(PAIR[1])}",
            "key_segment_guard = false",
            "", "[[buckets]]", 'name = "lit"', 'backend = "literal"', "",
        ]) + rules_config([
            ("allow", ["alice"], ["s3:*"], ["lit", "lit/*"]),
            ("allow", ["bob"], ["s3:GetObject", "s3:PutObject"], ["lit/reports/*"]),
        ])  # fmt: skip
        gw = launch_gateway(tmp_path_factory.mktemp("literal"), backend, "s3gate-literal", extra)
        yield gw, kb
        stop_gateway(gw)


@pytest.mark.parametrize("key", ["dot/./seg.txt", "dot/../up.txt", "./lead.txt", "/leading-slash.txt", ".."])
def test_a_literal_backend_takes_dot_segment_keys_as_written(literal, key):
    gw, kb = literal
    alice = gw.raw("alice")
    r = alice.request("PUT", f"/lit/{key}", body=b"literal " + key.encode())
    assert r.status == 200, r.describe()
    # Stored under exactly the key written, signed for that path.
    assert kb.signers(f"/lit/{key}") == [PAIR[0]], kb.seen()[-3:]
    r = alice.request("GET", f"/lit/{key}")
    assert r.status == 200, r.describe()
    assert r.body == b"literal " + key.encode()
    r = alice.request("DELETE", f"/lit/{key}")
    assert r.status == 204, r.describe()


def test_on_a_literal_backend_a_dot_segment_is_authorized_as_written(literal):
    """bob may write lit/reports/*. `reports/../x` is such a key, and on a
    literal backend it is the object `reports/../x`, not `x`."""
    gw, kb = literal
    bob = gw.raw("bob")
    r = bob.request("PUT", "/lit/reports/../x", body=b"bob's")
    assert r.status == 200, r.describe()
    assert kb.signers("/lit/reports/../x") == [PAIR[0]]
    assert kb.signers("/lit/x") == []
    r = bob.request("PUT", "/lit/x", body=b"no")
    assert r.status == 403, r.describe()


@pytest.mark.parametrize("key", ["dot/./seg.txt", "reports/../secret/x", "/leading-slash.txt"])
def test_the_guard_still_refuses_them_on_a_path_resolving_backend(literal, backend, key):
    gw, _ = literal
    r = gw.raw("alice").request("PUT", f"/data/{key}", body=b"x")
    assert r.status == 400, r.describe()
    assert b"<Code>InvalidArgument</Code>" in r.body, r.describe()
    # and a listing prefix, and a copy source
    r = gw.raw("alice").request("GET", "/data", query=[("list-type", "2"), ("prefix", key)])
    assert r.status == 400, r.describe()
    r = gw.raw("alice").request("PUT", "/data/copy-target", headers={"x-amz-copy-source": f"/data/{key}"})
    assert r.status == 400, r.describe()
    assert not backend.file("data-prod", "copy-target").exists()


def test_check_config_shows_the_setting(literal):
    gw, _ = literal
    env = gateway_env(gw.backend, gw.keys, "info")
    r = subprocess.run(
        [str(gateway_bin()), "check-config", str(gw.config_path)], capture_output=True, text=True, timeout=30, env=env
    )
    assert r.returncode == 0, r.stderr
    shown = r.stdout
    # the local backend keeps the default; the literal one says false
    local, literal_part = shown.split('name = "literal"', 1)
    assert "key_segment_guard = true" in local
    assert "key_segment_guard = false" in literal_part.split("[[", 1)[0]
