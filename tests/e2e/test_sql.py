"""SQL decision and secret lookup sources (`[[policy]] kind = "sql"`,
`[[identity]] kind = "sql"`) against the machine's PostgreSQL and a SQLite
file, through boto3 and the aws cli.

PostgreSQL: `S3GATE_E2E_POSTGRES_URL` (default
postgres://postgres@127.0.0.1:5432/postgres, trust auth, as .ci/run sets it
up) names a server where the tests create a database of their own per
session and drop it at the end; the tests write to it with `psql`. SQLite: a
file in the test's tmp dir, written with Python's sqlite3.

Covers, for both: prefix grants and group grants from a grants table; an
explicit deny row beating a built-in allow; a grant changed in the database
seen after the row's TTL, and after a policy invalidation (any Admin write to
the rules publishes one to every data plane); secrets from a keys table
(SigV4 through boto3 and the aws cli, SigV2, a wrong secret refused with
SignatureDoesNotMatch, an unknown key with InvalidAccessKeyId); a database
that is not there at start: s3gate starts, answers 503 and forwards
nothing, then decides once the database exists; a query that does not
prepare is logged at start and answers 503. PostgreSQL only: a slow
query (pg_sleep) past the source's timeout is a 503 and forwards nothing;
the distributed mode (control plane and data plane processes).

Bucket credentials from SQL (`[[buckets]] credentials = { kind = "sql" }`),
for both: two principals write through one bucket and a backend that
verifies SigV4 for several key pairs (keyed_backend.py) proves which key
signed; no row is a 503 with nothing forwarded; a changed row is used after
the route's expiry and after an invalidation; a database that is not there
is a 503. In distributed mode, a bucket put through the Admin CLI with an
`env:` URL (a URL with a password refused).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import REGION, _client, gateway_bin, gateway_env, make_keys, node_files, render_config, rules_config, stop_gateway, unused_port
from harness.cluster import start_controlplane, start_dataplane
from harness.config import q
from harness.procs import ready_field, wait_for
from keyed_backend import KeyedBackend
from recorder import Recorder, launch_gateway, recorder_config

PG_URL = os.environ.get("S3GATE_E2E_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex

# --------------------------------------------------------------------------- databases

GRANTS = """
CREATE TABLE grants (
  principal text NOT NULL,     -- a principal, or group:NAME
  bucket    text NOT NULL,
  prefix    text NOT NULL,     -- key prefix; '' = the whole bucket
  action    text NOT NULL,     -- s3:GetObject, ..., or s3:*
  effect    text NOT NULL,     -- allow | deny
  ttl_s     integer,           -- NULL: the [cache] decision_ttl
  reason    text
);
"""

# The grants that apply to a request; the prefix of each is its cache scope.
POLICY_QUERY = """
SELECT effect, reason, ttl_s, prefix AS scope_prefix
FROM grants
WHERE bucket = :bucket
  AND (action = :action OR action = 's3:*')
  AND (principal = :principal OR principal IN ({groups}))
  AND substr(:key || :prefix, 1, length(prefix)) = prefix
"""
PG_GROUPS = "SELECT 'group:' || g FROM jsonb_array_elements_text(:groups::jsonb) AS g"
SQLITE_GROUPS = "SELECT 'group:' || value FROM json_each(:groups)"

KEYS_QUERY = "SELECT secret, principal, groups FROM s3_keys WHERE access_key = :access_key"


def psql(url: str, sql: str) -> str:
    exe = shutil.which("psql")
    if exe is None:
        pytest.fail("psql is not on PATH (apt-get install postgresql-client; .ci/run installs PostgreSQL)")
    r = subprocess.run([exe, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert r.returncode == 0, f"psql failed ({r.returncode}): {r.stderr}\n{sql}"
    return r.stdout


def lit(s: str | None) -> str:
    """A SQL string literal (or NULL)."""
    return "NULL" if s is None else "'" + s.replace("'", "''") + "'"


class Postgres:
    kind = "postgres"

    def __init__(self, name: str):
        self.name = name
        parts = urlsplit(PG_URL)
        self.url = urlunsplit(parts._replace(path="/" + name))

    def create(self) -> None:
        psql(PG_URL, f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        psql(PG_URL, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def exec(self, sql: str) -> None:
        psql(self.url, sql)

    def policy_query(self) -> str:
        return POLICY_QUERY.format(groups=PG_GROUPS)

    def keys_table(self) -> str:
        return "CREATE TABLE s3_keys (access_key text PRIMARY KEY, secret text NOT NULL, principal text NOT NULL, groups text[]);"

    def groups(self, groups: list[str]) -> str:
        return "ARRAY[" + ",".join(lit(g) for g in groups) + "]::text[]"


class Sqlite:
    kind = "sqlite"

    def __init__(self, path: Path):
        self.path = path
        self.url = f"sqlite://{path}"

    def create(self) -> None:
        sqlite3.connect(self.path).close()

    def drop(self) -> None:
        self.path.unlink(missing_ok=True)

    def exec(self, sql: str) -> None:
        with sqlite3.connect(self.path) as c:
            c.executescript(sql)
        c.close()

    def policy_query(self) -> str:
        return POLICY_QUERY.format(groups=SQLITE_GROUPS)

    def keys_table(self) -> str:
        return "CREATE TABLE s3_keys (access_key text PRIMARY KEY, secret text NOT NULL, principal text NOT NULL, groups text);"

    def groups(self, groups: list[str]) -> str:
        return lit(json.dumps(groups))


def new_database(kind: str, tmp: Path):
    if kind == "postgres":
        return Postgres(f"s3gate_e2e_{uuid.uuid4().hex[:12]}")
    return Sqlite(tmp / f"s3gate-{uuid.uuid4().hex[:8]}.db")


def grant(db, principal: str, prefix: str, action: str = "s3:*", effect: str = "allow", bucket: str = "data",
          ttl_s: int | None = None, reason: str | None = None) -> None:  # fmt: skip
    ttl = "NULL" if ttl_s is None else str(ttl_s)
    db.exec(f"INSERT INTO grants VALUES ({lit(principal)}, {lit(bucket)}, {lit(prefix)}, {lit(action)}, "
            f"{lit(effect)}, {ttl}, {lit(reason)});")  # fmt: skip


def revoke(db, principal: str, prefix: str) -> None:
    db.exec(f"DELETE FROM grants WHERE principal = {lit(principal)} AND prefix = {lit(prefix)};")


def sql_config(db, timeout: str = "2s", policy_query: str | None = None, keys_query: str = KEYS_QUERY) -> str:
    """[[policy]]: the built-in rules, then the grants table; [[identity]]:
    the keys table."""
    return "\n".join([
        "",
        "[[policy]]",
        'kind = "builtin"',
        "",
        "[[policy]]",
        'kind = "sql"',
        f"url = {q(db.url)}",
        f"query = {q(policy_query or db.policy_query())}",
        f"timeout = {q(timeout)}",
        "",
        "[[identity]]",
        'kind = "sql"',
        f"url = {q(db.url)}",
        f"query = {q(keys_query)}",
        f"timeout = {q(timeout)}",
        "",
    ])  # fmt: skip


class SqlKey:
    """A key kept in the database's s3_keys table."""

    def __init__(self, principal: str, groups: list[str]):
        self.principal = principal
        self.groups = groups
        self.access_key = "SQLK" + secrets.token_hex(8).upper()
        self.secret_key = "sqlsec-" + secrets.token_urlsafe(24)

    def insert(self, db) -> None:
        db.exec(f"INSERT INTO s3_keys VALUES ({lit(self.access_key)}, {lit(self.secret_key)}, "
                f"{lit(self.principal)}, {db.groups(self.groups)});")  # fmt: skip


def seed(db, erin: SqlKey) -> None:
    db.exec(GRANTS + db.keys_table())
    erin.insert(db)
    grant(db, "erin", "erin/")  # erin: everything under data/erin/
    grant(db, "group:eng", "shared/", "s3:GetObject")  # her group: read data/shared/
    grant(db, "alice", "blocked/", effect="deny", reason="blocked by the grants table")


def code(e: pytest.ExceptionInfo) -> tuple[int, str]:
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


def key(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}.txt"


# --------------------------------------------------------------------------- the gateway


class SqlGateway:
    def __init__(self, gw, db, erin: SqlKey):
        self.gw, self.db, self.erin = gw, db, erin
        self.grpc = ready_field(gw.ready_file, "grpc")()

    def client(self, who: str = "erin", secret: str | None = None, **config):
        if who == "erin":
            return _client(self.gw.endpoint, self.erin.access_key, secret or self.erin.secret_key, **config)
        k = self.gw.keys[who]
        return _client(self.gw.endpoint, k.access_key, secret or k.secret_key, **config)

    def admin(self, *args: str) -> None:
        r = subprocess.run([str(gateway_bin()), "admin", "--control-plane", f"http://{self.grpc}", "--token", ADMIN_TOKEN,
                            *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
        assert r.returncode == 0, f"s3gate admin {' '.join(args)}: {r.stderr}"


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def sqlgw(request, backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"sql-{request.param}")
    db = new_database(request.param, tmp)
    db.create()
    try:
        erin = SqlKey("erin", ["eng"])
        seed(db, erin)
        gw = launch_gateway(tmp, backend, f"s3gate-sql-{db.kind}", sql_config(db), log_level="trace",
                            extra_args=["--grpc-listen", "127.0.0.1:0"], env={"S3GATE_ADMIN_TOKEN": ADMIN_TOKEN})  # fmt: skip
        try:
            yield SqlGateway(gw, db, erin)
        finally:
            stop_gateway(gw)
            log = gw.log_path.read_text(errors="replace")
            assert erin.secret_key not in log, "the secret from the database leaked into the log"
    finally:
        db.drop()


# --------------------------------------------------------------------------- tests


def test_prefix_and_group_grants_from_the_grants_table(sqlgw, backend):
    erin = sqlgw.client()
    k = key("erin/")
    erin.put_object(Bucket="data", Key=k, Body=b"from the database's grant")
    assert backend.file("data-prod", k).read_bytes() == b"from the database's grant"
    assert erin.get_object(Bucket="data", Key=k)["Body"].read() == b"from the database's grant"
    listed = erin.list_objects_v2(Bucket="data", Prefix="erin/")
    assert k in [o["Key"] for o in listed.get("Contents", [])]
    # nothing outside her prefix
    with pytest.raises(botocore.exceptions.ClientError) as e:
        erin.put_object(Bucket="data", Key=key("other/"), Body=b"x")
    assert code(e) == (403, "AccessDenied")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        erin.list_objects_v2(Bucket="data", Prefix="")
    assert code(e) == (403, "AccessDenied")
    # the group grant: read shared/, not write
    shared = key("shared/")
    backend.put("data-prod", shared, b"for eng")
    assert erin.get_object(Bucket="data", Key=shared)["Body"].read() == b"for eng"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        erin.put_object(Bucket="data", Key=key("shared/"), Body=b"x")
    assert code(e) == (403, "AccessDenied")


def test_an_explicit_deny_row_beats_a_builtin_allow(sqlgw, backend):
    alice = sqlgw.client("alice")
    blocked = key("blocked/")
    backend.put("data-prod", blocked, b"blocked")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.get_object(Bucket="data", Key=blocked)
    assert code(e) == (403, "AccessDenied")
    # the built-in rules still allow her everything else on data
    ok = key("open/")
    backend.put("data-prod", ok, b"open")
    assert alice.get_object(Bucket="data", Key=ok)["Body"].read() == b"open"


def test_secret_lookup_from_the_keys_table(sqlgw):
    erin = sqlgw.erin
    with pytest.raises(botocore.exceptions.ClientError) as e:
        sqlgw.client(secret="wrong-" + erin.secret_key).get_object(Bucket="data", Key="erin/x")
    assert code(e) == (403, "SignatureDoesNotMatch")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        _client(sqlgw.gw.endpoint, "SQLKUNKNOWN0000", erin.secret_key).get_object(Bucket="data", Key="erin/x")
    assert code(e) == (403, "InvalidAccessKeyId")
    # SigV2, checked in the control plane with the same secret
    k = key("erin/")
    sqlgw.client().put_object(Bucket="data", Key=k, Body=b"v2")
    assert sigv2(sqlgw, erin.secret_key).get_object(Bucket="data", Key=k)["Body"].read() == b"v2"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        sigv2(sqlgw, "wrong").get_object(Bucket="data", Key=k)
    assert code(e) == (403, "SignatureDoesNotMatch")


def sigv2(sqlgw, secret: str):
    """A boto3 client signing SigV2 (botocore's HmacV1Auth) with erin's key."""
    return boto3.session.Session().client(
        "s3", endpoint_url=sqlgw.gw.endpoint, region_name=REGION, aws_access_key_id=sqlgw.erin.access_key,
        aws_secret_access_key=secret,
        config=Config(signature_version="s3", s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )  # fmt: skip


def test_the_aws_cli_with_a_key_from_the_database(sqlgw, backend, tmp_path):
    exe = shutil.which("aws")
    if exe is None:
        pytest.fail("aws cli not found (pip install -r tests/e2e/requirements.txt)")
    cfg = tmp_path / "config"
    cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_CONFIG_FILE": str(cfg),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), "AWS_ACCESS_KEY_ID": sqlgw.erin.access_key,
           "AWS_SECRET_ACCESS_KEY": sqlgw.erin.secret_key, "AWS_DEFAULT_REGION": REGION,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1"}  # fmt: skip

    def aws(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, "--endpoint-url", sqlgw.gw.endpoint, *args], env=env, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip

    src = tmp_path / "up.txt"
    src.write_bytes(b"through the aws cli\n")
    k = key("erin/cli/")
    r = aws("s3", "cp", str(src), f"s3://data/{k}")
    assert r.returncode == 0, r.stderr
    assert backend.file("data-prod", k).read_bytes() == src.read_bytes()
    r = aws("s3", "ls", "s3://data/erin/cli/")
    assert r.returncode == 0 and k.rsplit("/", 1)[1] in r.stdout, r.stdout + r.stderr
    r = aws("s3", "cp", str(src), "s3://data/other/cli.txt")
    assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stderr


def test_a_changed_grant_is_seen_after_its_ttl(sqlgw):
    """ttl_s = 1 in the row: the revocation is seen within seconds, not after
    the [cache] decision_ttl (30s)."""
    grant(sqlgw.db, "erin", "ttl/", ttl_s=1)
    erin = sqlgw.client()
    k = key("ttl/")
    erin.put_object(Bucket="data", Key=k, Body=b"short-lived")
    assert erin.get_object(Bucket="data", Key=k)["Body"].read() == b"short-lived"
    revoke(sqlgw.db, "erin", "ttl/")
    revoked_at = time.monotonic()
    while True:
        try:
            erin.get_object(Bucket="data", Key=k)
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] == "AccessDenied"
            break
        assert time.monotonic() - revoked_at < 10, "the revoked grant was still honoured 10s later (ttl_s = 1)"
        time.sleep(0.2)


def test_a_changed_grant_is_seen_after_an_invalidation(sqlgw):
    """No ttl_s: the decision is cached for the [cache] decision_ttl (30s) ...
    until an Admin change to the rules invalidates every cached decision."""
    grant(sqlgw.db, "erin", "inval/")
    erin = sqlgw.client()
    k = key("inval/")
    erin.put_object(Bucket="data", Key=k, Body=b"cached")
    assert erin.get_object(Bucket="data", Key=k)["Body"].read() == b"cached"
    revoke(sqlgw.db, "erin", "inval/")
    # still cached: the data plane does not ask again within the TTL
    assert erin.get_object(Bucket="data", Key=k)["Body"].read() == b"cached"
    rule = "sql-e2e-" + uuid.uuid4().hex[:8]
    sqlgw.admin("rules", "put", "--id", rule, "--effect", "allow", "--principal", "nobody", "--action", "s3:GetObject",
                "--resource", "data/nothing/*")  # fmt: skip
    try:
        deadline = time.monotonic() + 10  # the invalidation travels asynchronously
        while True:
            try:
                erin.get_object(Bucket="data", Key=k)
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "AccessDenied"
                break
            assert time.monotonic() < deadline, "the revoked grant was still honoured 10s after the invalidation"
            time.sleep(0.1)
    finally:
        sqlgw.admin("rules", "delete", rule)


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_a_database_missing_at_start_is_503_then_decides(kind, backend, tmp_path):
    """s3gate starts without its database; meanwhile every request that needs
    it is a 503 and nothing is forwarded. Once the database exists, the
    sources decide (the pool kept trying)."""
    db = new_database(kind, tmp_path)
    erin = SqlKey("erin", ["eng"])
    with Recorder() as rec:
        extra = recorder_config(rec, [("allow", ["alice"], ["s3:*"], ["rec", "rec/*"])]) + sql_config(db, timeout="500ms")
        gw = launch_gateway(tmp_path, backend, f"s3gate-sql-down-{kind}", extra)
        try:
            alice = _client(gw.endpoint, gw.keys["alice"].access_key, gw.keys["alice"].secret_key)
            for _ in range(3):
                with pytest.raises(botocore.exceptions.ClientError) as e:
                    alice.get_object(Bucket="rec", Key="a.txt")
                assert code(e) == (503, "ServiceUnavailable")
            # a key only the database could know: cannot tell, so 503, not InvalidAccessKeyId
            with pytest.raises(botocore.exceptions.ClientError) as e:
                _client(gw.endpoint, erin.access_key, erin.secret_key).get_object(Bucket="rec", Key="a.txt")
            assert code(e) == (503, "ServiceUnavailable")
            assert rec.taken() == [], "a request reached the backend while the policy database was down"
            log_says(gw, "cannot reach the database")

            db.create()
            try:
                seed(db, erin)
                grant(db, "erin", "", bucket="rec")
                erin_client = _client(gw.endpoint, erin.access_key, erin.secret_key)
                # the breaker lets a probe through every 2 s
                wait_for(lambda: _answers(erin_client), "the SQL sources to answer once the database exists", gw.proc, 30)
                assert len(rec.taken()) == 1
                with pytest.raises(botocore.exceptions.ClientError) as e:
                    erin_client.get_object(Bucket="data", Key="other/x")
                assert code(e) == (403, "AccessDenied")
            finally:
                db.drop()
        finally:
            stop_gateway(gw)


def log_says(gw, *texts: str, timeout: float = 10) -> None:
    """Wait until the gateway's log (written in batches by a log thread)
    holds one of `texts`."""
    wait_for(lambda: any(t in gw.log_path.read_text(errors="replace") for t in texts),
             f"{' or '.join(texts)} in {gw.log_path}", gw.proc, timeout)  # fmt: skip


def _answers(client) -> bool:
    try:
        client.get_object(Bucket="rec", Key="a.txt")
        return True
    except botocore.exceptions.ClientError as e:
        if code(e) != (503, "ServiceUnavailable"):
            raise
        return False


def test_a_slow_query_times_out_with_503(backend, tmp_path):
    """pg_sleep(3) against a 300ms timeout: a 503 well before the query would
    have answered, and nothing forwarded."""
    db = new_database("postgres", tmp_path)
    db.create()
    try:
        db.exec(GRANTS)
        slow = "SELECT 'allow' AS effect FROM pg_sleep(3) WHERE :bucket = 'rec'"
        with Recorder() as rec:
            extra = recorder_config(rec, [("allow", ["alice"], ["s3:*"], ["rec", "rec/*"])])
            extra += sql_config(db, timeout="300ms", policy_query=slow)
            gw = launch_gateway(tmp_path, backend, "s3gate-sql-slow", extra)
            try:
                alice = _client(gw.endpoint, gw.keys["alice"].access_key, gw.keys["alice"].secret_key)
                started = time.monotonic()
                with pytest.raises(botocore.exceptions.ClientError) as e:
                    alice.get_object(Bucket="rec", Key="slow.txt")
                took = time.monotonic() - started
                assert code(e) == (503, "ServiceUnavailable")
                assert took < 2.5, f"the 503 took {took:.2f}s: the 300ms timeout did not hold"
                assert rec.taken() == []
                # the guard's timeout, or the server's statement_timeout (the same)
                log_says(gw, "no answer within", "statement timeout")
            finally:
                stop_gateway(gw)
    finally:
        db.drop()


def test_a_query_that_does_not_prepare_is_logged_and_is_503(backend, tmp_path):
    """A typo in the query does not stop s3gate; the log says what the
    database said, and the source cannot decide (503)."""
    db = new_database("sqlite", tmp_path)
    db.create()
    db.exec(GRANTS)
    broken = "SELEC effect FROM grants WHERE principal = :principal"
    with Recorder() as rec:
        extra = recorder_config(rec, [("allow", ["alice"], ["s3:*"], ["rec", "rec/*"])])
        extra += sql_config(db, policy_query=broken)
        gw = launch_gateway(tmp_path, backend, "s3gate-sql-typo", extra)
        try:
            log_says(gw, "the query does not prepare")
            assert "SELEC" in gw.log_path.read_text(errors="replace"), "the database's complaint is not in the log"
            alice = _client(gw.endpoint, gw.keys["alice"].access_key, gw.keys["alice"].secret_key)
            with pytest.raises(botocore.exceptions.ClientError) as e:
                alice.get_object(Bucket="rec", Key="a.txt")
            assert code(e) == (503, "ServiceUnavailable")
            assert rec.taken() == []
        finally:
            stop_gateway(gw)


def test_distributed_mode(backend, tmp_path):
    """`s3gate controlplane` asks the database; `s3gate dataplane` never sees
    it, nor the secret: it gets the derived signing key."""
    db = new_database("postgres", tmp_path)
    db.create()
    try:
        erin = SqlKey("erin", ["eng"])
        seed(db, erin)
        keys = make_keys()
        config = tmp_path / "cluster.toml"
        config.write_text(render_config(backend, keys, unused_port()) + sql_config(db))
        env = gateway_env(backend, keys, "debug")
        cp, cp_addr = start_controlplane(gateway_bin(), "cp-sql", config=config, env=env, **node_files(tmp_path, "cp-sql"))
        try:
            dp, dp_addr = start_dataplane(gateway_bin(), "dp-sql", control_planes=[f"http://{cp_addr}"], region=REGION,
                                          env=env, **node_files(tmp_path, "dp-sql"))  # fmt: skip
            try:
                client = _client(f"http://{dp_addr}", erin.access_key, erin.secret_key)
                k = key("erin/")
                client.put_object(Bucket="data", Key=k, Body=b"distributed")
                assert backend.file("data-prod", k).read_bytes() == b"distributed"
                with pytest.raises(botocore.exceptions.ClientError) as e:
                    client.get_object(Bucket="data", Key=key("other/"))
                assert code(e) == (403, "AccessDenied")
                alice = _client(f"http://{dp_addr}", keys["alice"].access_key, keys["alice"].secret_key)
                with pytest.raises(botocore.exceptions.ClientError) as e:
                    alice.get_object(Bucket="data", Key=key("blocked/"))
                assert code(e) == (403, "AccessDenied")
            finally:
                dp.stop()
        finally:
            cp.stop()
        for name in ("cp-sql", "dp-sql"):
            log = (tmp_path / f"{name}.log").read_text(errors="replace")
            assert erin.secret_key not in log, f"the database's secret leaked into {name}'s log"
    finally:
        db.drop()


# --------------------------------------------------------------------------- bucket credentials from SQL

BUCKET_KEYS = ("CREATE TABLE bucket_keys (principal text NOT NULL, bucket text NOT NULL, access_key text NOT NULL, "
               "secret_key text NOT NULL, session_token text, expires_unix bigint);")  # fmt: skip
# Per principal: the query uses :principal.
CREDS_QUERY = ("SELECT access_key, secret_key, session_token, expires_unix FROM bucket_keys "
               "WHERE principal = :principal AND bucket = :bucket")  # fmt: skip
KEYED_DEFAULT = ("KEYEDBACKENDOWNKEY", "keyed-backend-own-secret-000")
# A [[policy]] sql entry that never answers: it names the database a bucket
# credentials query without a url uses.
ABSTAIN = "SELECT effect FROM grants WHERE principal = :principal AND 1 = 0"


def set_bucket_key(db, principal: str, access_key: str, secret_key: str, token: str | None = None,
                   expires_unix: int | None = None) -> None:  # fmt: skip
    db.exec(f"DELETE FROM bucket_keys WHERE principal = {lit(principal)};"
            f"INSERT INTO bucket_keys VALUES ({lit(principal)}, 'kb', {lit(access_key)}, {lit(secret_key)}, "
            f"{lit(token)}, {'NULL' if expires_unix is None else expires_unix});")  # fmt: skip


def test_the_keyed_backend_verifies_signatures():
    """The backend the bucket credential tests rely on refuses a wrong
    secret and an unknown key, and names the key that signed."""
    from keyed_backend import self_test

    self_test()


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_bucket_credentials_from_sql_per_principal(kind, backend, tmp_path):
    """`[[buckets]] credentials = { kind = "sql" }` without a url: the
    database of the [[policy]] sql entry. The backend verifies SigV4 for a
    set of key pairs (keyed_backend.py) and proves which signed: alice's and
    bob's rows, never the backend's own pair. No row (carol): 503, nothing
    forwarded. A changed row is used once the route's expiry (the row's
    expires_unix) passes, and at once after an Admin write to the bucket
    (an invalidation). Nothing is mocked."""
    db = new_database(kind, tmp_path)
    db.create()
    now = int(time.time())
    pairs = {
        "AKALICE1": ("sk-alice-1-" + secrets.token_hex(8), None),
        "AKALICE2": ("sk-alice-2-" + secrets.token_hex(8), None),
        "AKALICE3": ("sk-alice-3-" + secrets.token_hex(8), None),
        "AKBOB": ("sk-bob-" + secrets.token_hex(8), "tok-bob-" + secrets.token_hex(4)),
        KEYED_DEFAULT[0]: (KEYED_DEFAULT[1], None),
    }
    try:
        db.exec(GRANTS + BUCKET_KEYS)
        # Cached by the data plane until a minute before expires_unix: ~4s.
        set_bucket_key(db, "alice", "AKALICE1", pairs["AKALICE1"][0], expires_unix=now + 64)
        set_bucket_key(db, "bob", "AKBOB", *pairs["AKBOB"])
        with KeyedBackend(pairs) as kb:
            extra = "\n".join([
                "", "[[backends]]", 'name = "keyed"', f"endpoint = {q(kb.endpoint)}", 'region = "us-east-1"',
                'addressing_style = "path"', f"access_key = {q(KEYED_DEFAULT[0])}", f"secret_key = {q(KEYED_DEFAULT[1])}",
                "", "[[buckets]]", 'name = "kb"', 'backend = "keyed"',
                f"credentials = {{ kind = \"sql\", query = {q(CREDS_QUERY)}, timeout = \"2s\" }}", "",
            ]) + rules_config([("allow", ["alice", "bob", "carol"], ["s3:*"], ["kb", "kb/*"])]) + "\n".join([
                "", "[[policy]]", 'kind = "builtin"',
                # abstains: there to name the database the bucket's query uses
                "", "[[policy]]", 'kind = "sql"', f"url = {q(db.url)}",
                f"query = {q(ABSTAIN)}", "",
            ])  # fmt: skip
            gw = launch_gateway(tmp_path, backend, f"s3gate-sqlcreds-{kind}", extra, log_level="trace",
                                extra_args=["--grpc-listen", "127.0.0.1:0"], env={"S3GATE_ADMIN_TOKEN": ADMIN_TOKEN})  # fmt: skip
            try:
                who = {n: _client(gw.endpoint, gw.keys[n].access_key, gw.keys[n].secret_key) for n in ("alice", "bob", "carol")}
                who["alice"].put_object(Bucket="kb", Key="a.txt", Body=b"from alice")
                who["bob"].put_object(Bucket="kb", Key="b.txt", Body=b"from bob")
                assert kb.signers("/kb/a.txt") == ["AKALICE1"]
                assert kb.signers("/kb/b.txt") == ["AKBOB"]
                assert [s.session_token for s in kb.seen() if s.path == "/kb/b.txt"] == [pairs["AKBOB"][1]]
                assert who["bob"].get_object(Bucket="kb", Key="a.txt")["Body"].read() == b"from alice"
                assert kb.signers("/kb/a.txt") == ["AKALICE1", "AKBOB"]
                assert all(s.accepted for s in kb.seen()), kb.seen()

                # no row: no credentials, nothing forwarded, never the backend's own keys
                before = len(kb.seen())
                with pytest.raises(botocore.exceptions.ClientError) as e:
                    who["carol"].put_object(Bucket="kb", Key="c.txt", Body=b"x")
                assert code(e) == (503, "ServiceUnavailable")
                assert len(kb.seen()) == before, "a request without credentials reached the backend"
                assert KEYED_DEFAULT[0] not in [s.access_key for s in kb.seen()]

                # a changed row: used once the cached route expires
                set_bucket_key(db, "alice", "AKALICE2", pairs["AKALICE2"][0])
                deadline = time.monotonic() + 20
                n = 0
                while True:
                    n += 1
                    who["alice"].put_object(Bucket="kb", Key=f"ttl-{n}.txt", Body=b"x")
                    if kb.signers(f"/kb/ttl-{n}.txt") == ["AKALICE2"]:
                        break
                    assert kb.signers(f"/kb/ttl-{n}.txt") == ["AKALICE1"]
                    assert time.monotonic() < deadline, "the changed row was not used after the route expired"
                    time.sleep(0.3)
                assert n > 1, "the first answer should have been cached until its expiry"

                # ... and at once after an invalidation (no expiry now: cached for route_ttl, 5 min)
                set_bucket_key(db, "alice", "AKALICE3", pairs["AKALICE3"][0])
                who["alice"].put_object(Bucket="kb", Key="inv-0.txt", Body=b"x")
                assert kb.signers("/kb/inv-0.txt") == ["AKALICE2"], "cached"
                r = subprocess.run([str(gateway_bin()), "admin", "--control-plane", f"http://{ready_field(gw.ready_file, 'grpc')()}",
                                    "--token", ADMIN_TOKEN, "buckets", "put", "--name", "kb", "--backend", "keyed",
                                    "--credentials-sql-query", CREDS_QUERY, "--credentials-timeout", "2s"],
                                   capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
                assert r.returncode == 0, r.stderr
                deadline = time.monotonic() + 5
                n = 0
                while True:
                    n += 1
                    who["alice"].put_object(Bucket="kb", Key=f"inv-{n}.txt", Body=b"x")
                    if kb.signers(f"/kb/inv-{n}.txt") == ["AKALICE3"]:
                        break
                    assert time.monotonic() < deadline, "the changed row was not used after the invalidation"
                    time.sleep(0.1)
                listed = subprocess.run([str(gateway_bin()), "admin", "--control-plane", f"http://{ready_field(gw.ready_file, 'grpc')()}",
                                         "--token", ADMIN_TOKEN, "--json", "buckets", "list"],
                                        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
                kbinfo = next(b for b in json.loads(listed.stdout) if b["name"] == "kb")
                assert kbinfo["credentials"]["kind"] == "sql" and kbinfo["credentials"]["per_principal"], kbinfo
                assert all(s.accepted for s in kb.seen()), [s for s in kb.seen() if not s.accepted]
            finally:
                stop_gateway(gw)
            log = gw.log_path.read_text(errors="replace")
            for secret, token in pairs.values():
                assert secret not in log, "a backend secret from the database is in the log"
                assert token is None or token not in log
    finally:
        db.drop()


def test_bucket_credentials_database_down_is_503(backend, tmp_path):
    """The bucket's database is not there: 503, nothing forwarded, and the
    backend's own keys are not used instead."""
    db = new_database("sqlite", tmp_path)  # never created
    with KeyedBackend({KEYED_DEFAULT[0]: (KEYED_DEFAULT[1], None)}) as kb:
        extra = "\n".join([
            "", "[[backends]]", 'name = "keyed"', f"endpoint = {q(kb.endpoint)}", 'region = "us-east-1"',
            'addressing_style = "path"', f"access_key = {q(KEYED_DEFAULT[0])}", f"secret_key = {q(KEYED_DEFAULT[1])}",
            "", "[[buckets]]", 'name = "kb"', 'backend = "keyed"',
            f"credentials = {{ kind = \"sql\", url = {q(db.url + '?mode=ro')}, query = {q(CREDS_QUERY)}, timeout = \"300ms\" }}", "",
        ]) + rules_config([("allow", ["alice"], ["s3:*"], ["kb", "kb/*"])])  # fmt: skip
        gw = launch_gateway(tmp_path, backend, "s3gate-sqlcreds-down", extra)
        try:
            alice = _client(gw.endpoint, gw.keys["alice"].access_key, gw.keys["alice"].secret_key)
            for _ in range(2):
                with pytest.raises(botocore.exceptions.ClientError) as e:
                    alice.put_object(Bucket="kb", Key="a.txt", Body=b"x")
                assert code(e) == (503, "ServiceUnavailable")
            assert kb.seen() == []
        finally:
            stop_gateway(gw)


def test_bucket_credentials_from_sql_in_distributed_mode(backend, tmp_path):
    """`s3gate controlplane` + `s3gate dataplane`; the bucket is created with
    `s3gate admin buckets put --credentials-sql-url env:VAR
    --credentials-sql-query …`: the control plane reads the URL from its own
    environment, the data plane signs with the row's keys, and the listing
    shows the reference, not a value. A URL with a password is refused."""
    db = new_database("sqlite", tmp_path)
    db.create()
    db.exec(BUCKET_KEYS)
    pairs = {"AKALICEDIST": ("sk-alice-dist-" + secrets.token_hex(8), None),
             KEYED_DEFAULT[0]: (KEYED_DEFAULT[1], None)}  # fmt: skip
    set_bucket_key(db, "alice", "AKALICEDIST", pairs["AKALICEDIST"][0])
    with KeyedBackend(pairs) as kb:
        keys = make_keys()
        config = tmp_path / "cluster.toml"
        config.write_text(render_config(backend, keys, unused_port()) + "\n".join([
            "", "[[backends]]", 'name = "keyed"', f"endpoint = {q(kb.endpoint)}", 'region = "us-east-1"',
            'addressing_style = "path"', f"access_key = {q(KEYED_DEFAULT[0])}", f"secret_key = {q(KEYED_DEFAULT[1])}", "",
        ]) + rules_config([("allow", ["alice"], ["s3:*"], ["kb", "kb/*"])]))  # fmt: skip
        env = gateway_env(backend, keys, "debug", S3GATE_ADMIN_TOKEN=ADMIN_TOKEN, S3GATE_E2E_CREDS_DB=db.url)
        cp, cp_addr = start_controlplane(gateway_bin(), "cp-sqlcreds", config=config, env=env, **node_files(tmp_path, "cp-sqlcreds"))
        try:
            def admin(*args: str) -> subprocess.CompletedProcess:
                return subprocess.run([str(gateway_bin()), "admin", "--control-plane", f"http://{cp_addr}", "--token", ADMIN_TOKEN,
                                       *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip

            r = admin("buckets", "put", "--name", "kb", "--backend", "keyed", "--credentials-sql-url", "postgres://u:pw-0000@db/x",
                      "--credentials-sql-query", CREDS_QUERY)  # fmt: skip
            assert r.returncode != 0 and "carries a password" in r.stderr and "pw-0000" not in r.stderr, r.stderr
            r = admin("buckets", "put", "--name", "kb", "--backend", "keyed", "--credentials-sql-url", "env:S3GATE_E2E_CREDS_DB",
                      "--credentials-sql-query", CREDS_QUERY)  # fmt: skip
            assert r.returncode == 0, r.stderr
            listed = admin("--json", "buckets", "list")
            kbinfo = next(b for b in json.loads(listed.stdout) if b["name"] == "kb")
            assert kbinfo["credentials"]["url"] == "env:S3GATE_E2E_CREDS_DB", kbinfo
            table = admin("buckets", "list").stdout
            assert "sql env:S3GATE_E2E_CREDS_DB per-principal" in table, table
            dp, dp_addr = start_dataplane(gateway_bin(), "dp-sqlcreds", control_planes=[f"http://{cp_addr}"], region=REGION,
                                          env=env, **node_files(tmp_path, "dp-sqlcreds"))  # fmt: skip
            try:
                alice = _client(f"http://{dp_addr}", keys["alice"].access_key, keys["alice"].secret_key)
                alice.put_object(Bucket="kb", Key="d.txt", Body=b"distributed")
                assert kb.signers("/kb/d.txt") == ["AKALICEDIST"]
                assert alice.get_object(Bucket="kb", Key="d.txt")["Body"].read() == b"distributed"
            finally:
                dp.stop()
        finally:
            cp.stop()
        for name in ("cp-sqlcreds", "dp-sqlcreds"):
            log = (tmp_path / f"{name}.log").read_text(errors="replace")
            assert pairs["AKALICEDIST"][0] not in log, f"a backend secret from the database is in {name}'s log"
