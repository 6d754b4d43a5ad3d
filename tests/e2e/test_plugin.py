"""Plugins (`s3gate.plugin.v1.Plugin`, the Python SDK in sdk/python) as real
Python processes behind real s3gate processes, through boto3 and the aws
cli.

Two plugins, both written with the SDK and started by the tests:

- the ported example, sdk/python/examples/original_callables.py, unchanged:
  the three original callables (the access key is the principal);
- tests/harness/plugin_server.py, a test plugin on the same JSON database
  that a test can slow down while it runs and that records every call it
  gets (the example must stay a one-to-one port, so the test hooks live
  there).

Backends: the suite's s3s-fs (real files, checked on disk), or
tests/e2e/recorder.py's Recorder made to verify SigV4 for a fixed set of key
pairs with botocore's signer and to record which key signed each request
(the proof of per-principal credentials). Nothing is mocked.

Covers: decisions and secrets from the plugin, and a dead one failing
closed (boto3, `serve`); the aws cli; distributed mode (Redis, `s3gate
controlplane`, `s3gate dataplane`); per-principal backend credentials proven
by the backend, and a principal without any failing closed; a slow plugin:
timeout → 503 at about the timeout, then the breaker failing fast, then
recovery after its cool-down; SIGKILL under load: cached decisions keep
serving, uncached requests get 503, nothing new reaches the backend; a CORS
preflight on a plugin-credential bucket, answered from the bucket's rules
without asking the plugin for credentials.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import (
    REGION,
    _client,
    gateway_bin,
    gateway_env,
    make_keys,
    node_files,
    render_config,
    stop_gateway,
    unused_port,
)
from harness.cluster import Redis, gen_master_key, start_controlplane, start_dataplane
from harness.config import toml_table
from harness.procs import Proc, read_ready_file, start_with_ready_file, wait_for
from recorder import ACCESS_KEY, BACKEND_BUCKET, SECRET_KEY, Recorder, launch_gateway

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "sdk" / "python" / "examples" / "original_callables.py"
TEST_PLUGIN = ROOT / "tests" / "harness" / "plugin_server.py"
AK = "AKIAPLUGINALICE00001"
SECRET = "plugin-alice-secret-key-000000000000000"
BOB_AK = "AKIAPLUGINBOB0000001"
BOB_SECRET = "plugin-bob-secret-key-00000000000000000"
CAROL_AK = "AKIAPLUGINCAROL00001"
CAROL_SECRET = "plugin-carol-secret-key-000000000000000"
# The backend key pairs the plugin hands out, one per principal.
BACKEND_A = ("BKPLUGINALICE0000001", "backend-secret-for-alice-000000000000")
BACKEND_B = ("BKPLUGINBOB000000001", "backend-secret-for-bob-00000000000000")


def start_plugin(tmp: Path, db: dict | None = None, script: Path = EXAMPLE, name: str = "plugin",
                 extra: tuple[str, ...] = ()) -> tuple[Proc, str]:  # fmt: skip
    """A plugin process on a port the kernel picks; (process, host:port)."""
    path = tmp / f"{name}-db.json"
    path.write_text(json.dumps(db if db is not None else {"secrets": {AK: SECRET}, "grants": {AK: ["data"]}}))
    ready = tmp / f"{name}.ready.json"
    argv = [sys.executable, str(script), "--listen", "127.0.0.1:0", "--db", str(path), "--ready-file", str(ready), *extra]
    return start_with_ready_file(name, argv, ready, "grpc", tmp / f"{name}.log")


def plugin_tables(addr: str, timeout: str = "300ms", identity: bool = True) -> str:
    """`[[policy]]` (and `[[identity]]`) entries asking the plugin at `addr`."""
    out = toml_table("policy", dict(kind="plugin", url=f"http://{addr}", timeout=timeout))
    if identity:
        out += toml_table("identity", dict(kind="plugin", url=f"http://{addr}", timeout=timeout))
    return "\n".join(out) + "\n"


def rec_tables(rec: Recorder, credentials: dict | None = None, cors: list[dict] = ()) -> str:
    """Backend "rec" (the recorder; its own keys are ACCESS_KEY/SECRET_KEY)
    and bucket "rec" on it, with `credentials` and CORS rules if given."""
    out = toml_table("backends", dict(name="rec", endpoint=rec.endpoint, region=REGION, addressing_style="path",
                                      access_key=ACCESS_KEY, secret_key=SECRET_KEY))  # fmt: skip
    out += toml_table("buckets", dict(name="rec", backend="rec", backend_bucket=BACKEND_BUCKET, credentials=credentials))
    for rule in cors:
        out += toml_table("buckets.cors", rule)
    return "\n".join(out) + "\n"


@pytest.fixture
def stack(backend, tmp_path):
    plugin, addr = start_plugin(tmp_path)
    keys = make_keys()
    cfg = tmp_path / "s3gate.toml"
    cfg.write_text(render_config(backend, keys, unused_port()) + plugin_tables(addr))
    ready = tmp_path / "s3gate.ready.json"
    gw = Proc("s3gate", [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                         "--ready-file", str(ready)], tmp_path / "s3gate.log", gateway_env(backend, keys, "debug"))
    info = wait_for(lambda: read_ready_file(ready), "s3gate ready", gw)
    yield plugin, f"http://{info['s3']}", backend
    gw.stop()
    if plugin.alive():
        plugin.stop()


def client(endpoint: str, secret: str = SECRET, ak: str = AK, read_timeout: float = 60):
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ak, aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"},
                      connect_timeout=10, read_timeout=read_timeout))  # fmt: skip


def status_of(call) -> int:
    try:
        call()
        return 200
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]


def error_of(call) -> tuple[int, str]:
    with pytest.raises(ClientError) as e:
        call()
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- serve, boto3


def test_decisions_and_secrets_come_from_the_plugin_and_a_dead_one_fails_closed(stack):
    plugin, endpoint, backend = stack
    s3 = client(endpoint)
    s3.put_object(Bucket="data", Key="plugin/a.txt", Body=b"hello")
    assert backend.exists("data-prod", "plugin/a.txt")
    assert s3.get_object(Bucket="data", Key="plugin/a.txt")["Body"].read() == b"hello"
    # validator says no for this bucket: denied.
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="other", Key="x")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    # A wrong secret for a key the plugin knows: the signature fails.
    with pytest.raises(ClientError) as e:
        client(endpoint, secret="wrong-secret").get_object(Bucket="data", Key="plugin/a.txt")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"

    plugin.stop()
    # Cached decision (and signing key) still serves.
    assert s3.get_object(Bucket="data", Key="plugin/a.txt")["Body"].read() == b"hello"
    # An uncached decision cannot be made: 503, and nothing is written.
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="data", Key="plugin/never.txt", Body=b"x")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert not backend.exists("data-prod", "plugin/never.txt")


# --------------------------------------------------------------------------- per-principal credentials


def test_per_principal_backend_credentials_are_proven_by_the_backend(backend, tmp_path):
    """alice and bob write through the same bucket; the plugin (the ported
    example) gives each a backend key pair of their own, and the backend,
    which verifies SigV4 for exactly those pairs and the bucket's own,
    records which pair signed what. carol is allowed but has no pair: she
    gets 503, never the backend's own keys."""
    db = {
        "secrets": {AK: SECRET, BOB_AK: BOB_SECRET, CAROL_AK: CAROL_SECRET},
        "grants": {AK: ["rec"], BOB_AK: ["rec"], CAROL_AK: ["rec"]},
        "bucket_creds": {
            AK: {"rec": {"access_key": BACKEND_A[0], "secret_key": BACKEND_A[1]}},
            BOB_AK: {"rec": {"access_key": BACKEND_B[0], "secret_key": BACKEND_B[1]}},
        },
    }
    plugin, addr = start_plugin(tmp_path, db)
    # The bucket's own key pair verifies too: had the gateway signed with it,
    # the backend would have accepted and said so.
    with Recorder(keys={BACKEND_A[0]: BACKEND_A[1], BACKEND_B[0]: BACKEND_B[1], ACCESS_KEY: SECRET_KEY}) as rec:
        gw = launch_gateway(tmp_path, backend, "s3gate-creds",
                            extra_config=plugin_tables(addr) + rec_tables(rec, credentials=dict(kind="plugin")))  # fmt: skip
        try:
            alice, bob = client(gw.endpoint), client(gw.endpoint, BOB_SECRET, BOB_AK)
            alice.put_object(Bucket="rec", Key="alice.txt", Body=b"from alice")
            bob.put_object(Bucket="rec", Key="bob.txt", Body=b"from bob")
            alice.put_object(Bucket="rec", Key="alice-2.txt", Body=b"again")  # the cached route
            alice.get_object(Bucket="rec", Key="bob.txt")["Body"].read()
            seen = [(r.method, r.path, r.signed_by) for r in rec.taken()]
            b = f"/{BACKEND_BUCKET}"
            assert seen == [
                ("PUT", f"{b}/alice.txt", BACKEND_A[0]),
                ("PUT", f"{b}/bob.txt", BACKEND_B[0]),
                ("PUT", f"{b}/alice-2.txt", BACKEND_A[0]),
                ("GET", f"{b}/bob.txt", BACKEND_A[0]),
            ], seen
            assert [r.body for r in rec.taken()[:2]] == [b"from alice", b"from bob"]

            # No pair for carol: fail closed (503), nothing reaches the backend.
            carol = client(gw.endpoint, CAROL_SECRET, CAROL_AK)
            assert error_of(lambda: carol.put_object(Bucket="rec", Key="carol.txt", Body=b"x")) == (
                503, "ServiceUnavailable")  # fmt: skip
            assert len(rec.taken()) == 4

            # The check can fail: alice's backend key with another secret is
            # refused by this backend.
            direct = client(rec.endpoint, "not-" + BACKEND_A[1], BACKEND_A[0])
            assert error_of(lambda: direct.put_object(Bucket=BACKEND_BUCKET, Key="forged.txt", Body=b"x")) == (
                403, "SignatureDoesNotMatch")  # fmt: skip
            assert rec.taken()[-1].signed_by is None and rec.taken()[-1].refused == "SignatureDoesNotMatch"
        finally:
            stop_gateway(gw)
            plugin.stop()
        log = gw.log_path.read_text(errors="replace")
        for secret in (BACKEND_A[1], BACKEND_B[1], SECRET, BOB_SECRET):
            assert secret not in log, "a plugin-supplied secret reached the gateway's log"


# --------------------------------------------------------------------------- slow plugin, breaker

TIMEOUT_MS = 300
COOL_DOWN_S = 2.0  # controlplane/src/sources/guard.rs COOL_DOWN


class HarnessPlugin:
    """tests/harness/plugin_server.py: set_delay() while it runs, calls()."""

    def __init__(self, tmp: Path, db: dict, name: str = "test-plugin"):
        self.control = tmp / f"{name}.control.json"
        self.calls_file = tmp / f"{name}.calls.jsonl"
        self.set_delay(0)
        self.proc, self.addr = start_plugin(tmp, db, TEST_PLUGIN, name,
                                            ("--control", str(self.control), "--calls", str(self.calls_file)))  # fmt: skip

    def set_delay(self, ms: int) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"delay_ms": ms}))
        os.replace(tmp, self.control)

    def calls(self, rpc: str | None = None) -> list[dict]:
        try:
            lines = self.calls_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        calls = [json.loads(line) for line in lines if line]
        return [c for c in calls if rpc is None or c["rpc"] == rpc]


def test_a_slow_plugin_times_out_then_the_breaker_fails_fast_then_it_recovers(backend, tmp_path):
    """Decisions for alice (an s3gate key) come only from the test plugin,
    exact-scoped, so every new key asks it. Measured: a slow plugin costs
    about the timeout per request until the breaker opens, then almost
    nothing, and the plugin is not even asked; once it is fast again the
    breaker's probe closes it after the cool-down."""
    plugin = HarnessPlugin(tmp_path, {"grants": {"alice": ["rec"]}})
    with Recorder(keys={ACCESS_KEY: SECRET_KEY}) as rec:
        gw = launch_gateway(tmp_path, backend, "s3gate-slow",
                            extra_config=plugin_tables(plugin.addr, f"{TIMEOUT_MS}ms", identity=False) + rec_tables(rec))  # fmt: skip
        try:
            k = gw.keys["alice"]
            alice = client(gw.endpoint, k.secret_key, k.access_key)

            def put() -> tuple[int, float, str]:
                key, t = unique("slow/"), time.monotonic()
                code = status_of(lambda: alice.put_object(Bucket="rec", Key=key, Body=b"x"))
                return code, time.monotonic() - t, key

            assert put()[0] == 200
            forwarded = len(rec.taken())
            plugin.set_delay(TIMEOUT_MS * 4)
            slow = [put() for _ in range(5)]
            opened_at = time.monotonic()
            asked = len(plugin.calls("authorize"))
            fast = [put() for _ in range(5)]
            assert [c for c, _, _ in slow + fast] == [503] * 10, slow + fast
            assert len(plugin.calls("authorize")) == asked, "the open breaker still asked the plugin"
            assert len(rec.taken()) == forwarded, "a request the plugin could not decide reached the backend"

            slow_s, fast_s = sorted(t for _, t, _ in slow), sorted(t for _, t, _ in fast)
            print(f"\nslow plugin ({TIMEOUT_MS} ms timeout): 503 after {[round(t * 1000) for t in slow_s]} ms; "
                  f"breaker open: {[round(t * 1000) for t in fast_s]} ms")  # fmt: skip
            # About the timeout: never before it, and not the plugin's full delay.
            assert slow_s[0] >= TIMEOUT_MS / 1000 * 0.9, slow_s
            assert slow_s[2] < TIMEOUT_MS * 4 / 1000, slow_s
            # Far below it once open (generous: a loaded 2-core machine).
            assert fast_s[2] < slow_s[2] / 3, (slow_s, fast_s)

            # Fast again, but the breaker is still cooling down: 503 at once.
            plugin.set_delay(0)
            code, took, _ = put()
            assert code == 503 and took < slow_s[2], (code, took)
            # After the cool-down one probe goes through and closes it.
            while True:
                code, _, key = put()
                if code == 200:
                    break
                assert code == 503, code
                assert time.monotonic() - opened_at < COOL_DOWN_S + 10, "the breaker never closed"
                time.sleep(0.1)
            closed_after = time.monotonic() - opened_at
            print(f"breaker closed {closed_after:.2f} s after it opened (cool-down {COOL_DOWN_S} s)")
            assert closed_after >= COOL_DOWN_S * 0.75, closed_after
            assert [r.path for r in rec.taken()[forwarded:]] == [f"/{BACKEND_BUCKET}/{key}"]
            assert put()[0] == 200
        finally:
            stop_gateway(gw)
            plugin.proc.stop()


# --------------------------------------------------------------------------- SIGKILL under load


def test_killed_under_load_cached_decisions_hold_and_nothing_new_is_written(stack):
    """Four threads, each alternating a GET of an object whose decision is
    cached and a PUT of a new key (a decision the plugin must make), while
    the ported example is SIGKILLed. After the kill: GETs 200, PUTs 503,
    no other status, no hang, and none of those PUTs is on the backend's
    disk."""
    plugin, endpoint, backend = stack
    prefix = unique("load/") + "/"
    cached = [f"{prefix}cached-{i}" for i in range(8)]
    warm = client(endpoint)
    for key in cached:
        warm.put_object(Bucket="data", Key=key, Body=key.encode())
        assert warm.get_object(Bucket="data", Key=key)["Body"].read() == key.encode()

    results: list[tuple[str, str, float, float, object]] = []  # op, key, start, end, status or exception
    lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int) -> None:
        s3 = client(endpoint, read_timeout=20)
        i = 0
        while not stop.is_set():
            i += 1
            for op in ("GET", "PUT"):
                key = cached[(n + i) % len(cached)] if op == "GET" else f"{prefix}new-{n}-{i}"
                t = time.monotonic()
                try:
                    if op == "GET":
                        assert s3.get_object(Bucket="data", Key=key)["Body"].read() == key.encode()
                    else:
                        s3.put_object(Bucket="data", Key=key, Body=b"new")
                    outcome: object = 200
                except ClientError as e:
                    outcome = e.response["ResponseMetadata"]["HTTPStatusCode"]
                except Exception as e:  # noqa: BLE001 - a timeout or a broken connection is a finding
                    outcome = e
                with lock:
                    results.append((op, key, t, time.monotonic(), outcome))

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    # Until a PUT (a plugin decision) has succeeded: on a loaded machine the
    # first may take longer than a fixed second.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with lock:
            if any(op == "PUT" and s == 200 for op, _, _, _, s in results):
                break
        time.sleep(0.05)
    time.sleep(0.5)
    plugin.popen.send_signal(signal.SIGKILL)
    plugin.popen.wait()
    killed_at = time.monotonic()
    time.sleep(2.5)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung"

    before = [r for r in results if r[3] < killed_at]
    after = [r for r in results if r[2] > killed_at]
    bad = [r for r in results if r[4] not in (200, 503)]
    assert not bad, f"statuses other than 200/503 (or errors): {bad[:5]}"
    assert any(op == "PUT" and s == 200 for op, _, _, _, s in before), "no PUT succeeded before the kill"
    after_gets = [s for op, _, _, _, s in after if op == "GET"]
    after_puts = [(k, s) for op, k, _, _, s in after if op == "PUT"]
    print(f"\nkill under load: {len(before)} requests before the kill, {len(after)} after "
          f"({len(after_gets)} cached GETs, {len(after_puts)} new PUTs)")  # fmt: skip
    assert len(after_gets) >= 8 and len(after_puts) >= 8, (len(after_gets), len(after_puts))
    assert set(after_gets) == {200}, "a cached decision stopped serving"
    assert {s for _, s in after_puts} == {503}, "an uncached decision was made without the plugin"
    # The backend's disk: every PUT that got 200 is there, nothing else is.
    on_disk = {prefix + p.name for p in (backend.root / "data-prod" / prefix).iterdir()}
    written = {k for op, k, _, _, s in results if op == "PUT" and s == 200}
    assert on_disk == set(cached) | written, sorted(on_disk ^ (set(cached) | written))[:5]
    assert not on_disk & {k for k, _ in after_puts}


# --------------------------------------------------------------------------- the aws cli


def test_the_aws_cli_through_a_plugin(stack, tmp_path):
    plugin, endpoint, backend = stack
    exe = shutil.which("aws")
    if exe is None:
        pytest.fail("aws cli not found (pip install -r tests/e2e/requirements.txt)")
    home = tmp_path / "awscli-home"
    home.mkdir()
    cfg = home / "config"
    cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n    signature_version = s3v4\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "AWS_CONFIG_FILE": str(cfg),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "AWS_ACCESS_KEY_ID": AK,
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_MAX_ATTEMPTS": "1"}  # fmt: skip
    for k in ("PYENV_ROOT", "PYENV_VERSION", "LANG", "LC_ALL"):
        if k in os.environ:
            env[k] = os.environ[k]

    def aws(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, "--endpoint-url", endpoint, *args], env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip

    prefix = unique("awscli/") + "/"
    src = tmp_path / "up.txt"
    src.write_bytes(b"through the plugin with the aws cli\n")
    r = aws("s3", "cp", str(src), f"s3://data/{prefix}up.txt")
    assert r.returncode == 0, r.stderr
    assert backend.file("data-prod", prefix + "up.txt").read_bytes() == src.read_bytes()
    out = tmp_path / "down.txt"
    r = aws("s3", "cp", f"s3://data/{prefix}up.txt", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()
    r = aws("s3", "ls", f"s3://data/{prefix}")
    assert r.returncode == 0 and "up.txt" in r.stdout, (r.stdout, r.stderr)
    # The plugin's validator grants only "data".
    r = aws("s3", "cp", str(src), "s3://other/denied.txt")
    assert r.returncode != 0 and "AccessDenied" in r.stderr, (r.returncode, r.stderr)
    assert not backend.file("other", "denied.txt").exists()
    r = aws("s3", "ls", "s3://other/")
    assert r.returncode != 0 and "AccessDenied" in r.stderr, (r.returncode, r.stderr)


# --------------------------------------------------------------------------- distributed mode


def test_distributed_mode_with_redis(backend, tmp_path):
    """`s3gate controlplane` (state in Redis) asks the plugin for secrets and
    decisions; `s3gate dataplane` never talks to it and never sees the
    secret (it gets derived signing keys)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    redis = Redis(exe, tmp_path, tmp_path / "redis.log")
    redis.start()
    plugin, addr = start_plugin(tmp_path)
    keys = make_keys()
    config = tmp_path / "cluster.toml"
    config.write_text(render_config(backend, keys, unused_port()) + plugin_tables(addr))
    env = gateway_env(backend, keys, "debug", S3GATE_MASTER_KEY=gen_master_key(gateway_bin()))
    procs = []
    try:
        cp, cp_addr = start_controlplane(gateway_bin(), "cp-plugin", config=config, redis_url=redis.url, env=env,
                                         **node_files(tmp_path, "cp-plugin"))  # fmt: skip
        procs.append(cp)
        dp, dp_addr = start_dataplane(gateway_bin(), "dp-plugin", control_planes=[f"http://{cp_addr}"], region=REGION,
                                      env=env, **node_files(tmp_path, "dp-plugin"))  # fmt: skip
        procs.append(dp)
        s3 = _client(f"http://{dp_addr}", AK, SECRET)
        key = unique("distributed/")
        s3.put_object(Bucket="data", Key=key, Body=b"via the data plane")
        assert backend.file("data-prod", key).read_bytes() == b"via the data plane"
        assert s3.get_object(Bucket="data", Key=key)["Body"].read() == b"via the data plane"
        assert error_of(lambda: s3.put_object(Bucket="other", Key=key, Body=b"x")) == (403, "AccessDenied")
        assert error_of(lambda: s3.get_object(Bucket="other", Key=key)) == (403, "AccessDenied")
        assert not backend.file("other", key).exists()
        wrong = _client(f"http://{dp_addr}", AK, "not-" + SECRET)
        assert error_of(lambda: wrong.get_object(Bucket="data", Key=key)) == (403, "SignatureDoesNotMatch")
    finally:
        for p in reversed(procs):
            p.stop()
        plugin.stop()
        redis.proc.stop()
    for name in ("cp-plugin", "dp-plugin"):
        assert SECRET not in (tmp_path / f"{name}.log").read_text(errors="replace"), f"the secret leaked into {name}'s log"


# --------------------------------------------------------------------------- CORS preflight


def test_a_preflight_on_a_plugin_credential_bucket_asks_the_plugin_for_nothing(backend, tmp_path):
    """A preflight carries no identity and the CORS rules are the bucket's:
    it is answered from them without asking the plugin for credentials (it
    used to ask BucketCredentials with principal "" and, the plugin having
    none to share, answer 503)."""
    origin = "https://app.example.com"
    plugin = HarnessPlugin(tmp_path, {
        "secrets": {AK: SECRET}, "grants": {AK: ["rec"]},
        "bucket_creds": {AK: {"rec": {"access_key": BACKEND_A[0], "secret_key": BACKEND_A[1]}}},
    })  # fmt: skip
    cors = [dict(allowed_origins=[origin], allowed_methods=["GET", "PUT"], allowed_headers=["content-type"], max_age=60)]
    with Recorder(keys={BACKEND_A[0]: BACKEND_A[1]}) as rec:
        gw = launch_gateway(tmp_path, backend, "s3gate-cors",
                            extra_config=plugin_tables(plugin.addr) + rec_tables(rec, dict(kind="plugin"), cors))  # fmt: skip
        try:
            def preflight(who: str) -> requests.Response:
                return requests.options(f"{gw.endpoint}/rec/page.html", timeout=30, headers={
                    "Origin": who, "Access-Control-Request-Method": "PUT",
                    "Access-Control-Request-Headers": "Content-Type"})  # fmt: skip

            r = preflight(origin)
            assert r.status_code == 200, (r.status_code, r.text)
            assert r.headers["access-control-allow-origin"] == origin
            assert r.headers["access-control-allow-methods"] == "GET, PUT"
            assert r.headers["access-control-max-age"] == "60"
            r = preflight("https://evil.example")
            assert r.status_code == 403 and "<Code>AccessForbidden</Code>" in r.text, (r.status_code, r.text)
            # The signed request that follows gets alice's own credentials.
            client(gw.endpoint).put_object(Bucket="rec", Key="page.html", Body=b"<p>hi</p>")
            assert [r.signed_by for r in rec.taken()] == [BACKEND_A[0]]
            assert preflight(origin).status_code == 200
            asked = [c["principal"] for c in plugin.calls("bucket_credentials")]
            assert asked == [AK], f"BucketCredentials was asked for {asked}"
            assert not rec.taken()[1:], "a preflight reached the backend"
        finally:
            stop_gateway(gw)
            plugin.proc.stop()


# --------------------------------------------------------------------------- health


def test_a_plugin_that_is_not_up_at_startup_is_warned_about_and_used_once_it_is(backend, tmp_path):
    """s3gate asks the plugin's grpc.health.v1 service when it connects:
    nothing listens yet, so the log names the URL in a warning; s3gate
    starts anyway, answers 503 meanwhile, and uses the plugin once it is
    up."""
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    gw = launch_gateway(tmp_path, backend, "s3gate-health", extra_config=plugin_tables(f"127.0.0.1:{port}"))
    try:
        wait_for(lambda: "plugin health check: unreachable" in gw.log_path.read_text(errors="replace"),
                 "the health warning", gw.proc, timeout=15)  # fmt: skip
        line = next(li for li in gw.log_path.read_text(errors="replace").splitlines() if "plugin health check" in li)
        assert "WARN" in line and url in line, line
        s3 = client(gw.endpoint)
        assert status_of(lambda: s3.put_object(Bucket="data", Key=unique("health/"), Body=b"x")) == 503
        db = tmp_path / "late-db.json"
        db.write_text(json.dumps({"secrets": {AK: SECRET}, "grants": {AK: ["data"]}}))
        ready = tmp_path / "late.ready.json"
        plugin, _ = start_with_ready_file("late-plugin", [sys.executable, str(EXAMPLE), "--listen", f"127.0.0.1:{port}",
                                                         "--db", str(db), "--ready-file", str(ready)],
                                          ready, "grpc", tmp_path / "late-plugin.log")  # fmt: skip
        try:
            key = unique("health/")
            # The breaker may be cooling down after the 503s: poll.
            wait_for(lambda: status_of(lambda: s3.put_object(Bucket="data", Key=key, Body=b"late")) == 200,
                     "decisions from the late plugin", gw.proc, timeout=15)  # fmt: skip
            assert backend.file("data-prod", key).read_bytes() == b"late"
        finally:
            plugin.stop()
    finally:
        stop_gateway(gw)
