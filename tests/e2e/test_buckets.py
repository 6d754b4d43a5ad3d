"""Bucket patterns, templates, default_backend and bucket operations, through
real processes: two s3s-fs backends with different keys, `s3gate serve`
with the Admin API on, and the aws cli, rclone and s3cmd.

Backends and entries (see `render`):
- backend "one" (s3s-fs A), backend "two" (s3s-fs B), each with its own key;
- `data` (exact) → one, as data-prod;
- `team-*` → one, as `prod-{name}` (a templated rename);
- `lab-*` → two, under the client's name;
- `team-special` (exact) → two: exact wins over the pattern;
- default_backend off in the file, switched on and off with the Admin API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import botocore
import pytest

from conftest import (REGION, Proc, _client, gateway_bin, make_keys, rules_config, start_backend, unused_port,  # noqa: F401
                      wait_for)
from harness.config import toml_table
from harness.procs import ready_field

TOKEN = "admin-" + uuid.uuid4().hex
SECRET_ONE = "S3GATE_E2E_BUCKETS_ONE"
SECRET_TWO = "S3GATE_E2E_BUCKETS_TWO"

RULES = [
    # alice may do anything anywhere.
    ("allow", ["alice"], ["s3:*"], ["*", "*/*"]),
    # bob may see and read the lab-* buckets, nothing else; he may not
    # create or delete any bucket.
    ("allow", ["bob"], ["s3:ListBucket", "s3:GetObject"], ["lab-*", "lab-*/*"]),
]


def render(one, two, keys) -> str:
    out = [
        f"region = {json.dumps(REGION)}",
        *toml_table("backends", dict(name="one", endpoint=one.endpoint, region=REGION, addressing_style="path",
                                     access_key=one.creds.access_key, secret_key="env:" + SECRET_ONE)),
        *toml_table("backends", dict(name="two", endpoint=two.endpoint, region=REGION, addressing_style="path",
                                     access_key=two.creds.access_key, secret_key="env:" + SECRET_TWO)),
        *toml_table("buckets", dict(name="data", backend="one", backend_bucket="data-prod")),
        *toml_table("buckets", dict(name="team-*", backend="one", backend_bucket="prod-{name}")),
        *toml_table("buckets", dict(name="lab-*", backend="two")),
        *toml_table("buckets", dict(name="team-special", backend="two")),
    ]
    for k in keys.values():
        out += toml_table("keys", dict(access_key=k.access_key, secret_key=k.secret_key, principal=k.principal,
                                       groups=k.groups))
    return "\n".join(out) + "\n" + rules_config(RULES)


class Setup:
    def __init__(self, tmp: Path):
        self.one = start_backend(tmp / "one")
        self.two = start_backend(tmp / "two")
        assert self.one.creds.access_key != self.two.creds.access_key
        self.keys = make_keys()
        cfg = tmp / "s3gate.toml"
        cfg.write_text(render(self.one, self.two, self.keys))
        ready = tmp / "ready.json"
        env = {**os.environ, "S3GATE_LOG": os.environ.get("S3GATE_LOG", "debug"), "S3GATE_ADMIN_TOKEN": TOKEN,
               SECRET_ONE: self.one.creds.secret_key, SECRET_TWO: self.two.creds.secret_key,
               "S3GATE_E2E_CAROL_SECRET": self.keys["carol"].secret_key}
        self.log = tmp / "s3gate.log"
        self.proc = Proc("s3gate-buckets", [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                                            "--grpc-listen", "127.0.0.1:0", "--ready-file", str(ready)], self.log, env)  # fmt: skip
        self.grpc = "http://" + wait_for(ready_field(ready, "grpc"), "s3gate gRPC address", self.proc)
        self.endpoint = "http://" + wait_for(ready_field(ready, "s3"), "s3gate S3 address", self.proc)

    def client(self, who: str):
        k = self.keys[who]
        return _client(self.endpoint, k.access_key, k.secret_key)

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("S3GATE_ADMIN_TOKEN", "S3GATE_CONTROL_PLANE")}
        r = subprocess.run([str(gateway_bin()), "admin", "--control-plane", self.grpc, "--token", TOKEN, *args],
                           capture_output=True, text=True, env=env, timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
        if check:
            assert r.returncode == 0, f"admin {args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    s = Setup(tmp_path_factory.mktemp("buckets"))
    yield s
    code, killed = s.proc.stop()
    s.one.proc.stop()
    s.two.proc.stop()
    assert not killed and code == 0, f"s3gate exit {code}, killed: {killed}"
    text = s.log.read_text(errors="replace")
    for secret in (s.one.creds.secret_key, s.two.creds.secret_key):
        assert secret not in text, "a backend secret is in the log"


def code_of(e: botocore.exceptions.ClientError) -> tuple[int, str]:
    return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]


def fails(call, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kwargs)
    return code_of(e.value)


def names(listing) -> list[str]:
    return sorted(b["Name"] for b in listing["Buckets"])


# --------------------------------------------------------------------------- tools


def aws_env(home: Path, access_key: str, secret_key: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "config"
    cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n    signature_version = s3v4\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "AWS_CONFIG_FILE": str(cfg),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "AWS_ACCESS_KEY_ID": access_key,
           "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_MAX_ATTEMPTS": "1"}  # fmt: skip
    for k in ("PYENV_ROOT", "PYENV_VERSION", "LANG", "LC_ALL"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} not found (.ci/run installs it)")
    return exe


def aws(endpoint: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("aws"), "--endpoint-url", endpoint, *args], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


# --------------------------------------------------------------------------- tests


def test_aws_mb_pattern_bucket_with_rename_then_put_get_list_rb(gw, tmp_path):
    env = aws_env(tmp_path / "home", gw.keys["alice"].access_key, gw.keys["alice"].secret_key)
    r = aws(gw.endpoint, env, "s3", "mb", "s3://team-x")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "make_bucket: team-x"
    # Created on backend one under the template's name, and nowhere else.
    assert (gw.one.root / "prod-team-x").is_dir()
    assert not (gw.one.root / "team-x").exists() and not (gw.two.root / "team-x").exists()
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello pattern bucket\n")
    r = aws(gw.endpoint, env, "s3", "cp", str(src), "s3://team-x/dir/hello.txt")
    assert r.returncode == 0, r.stderr
    assert (gw.one.root / "prod-team-x" / "dir" / "hello.txt").read_bytes() == src.read_bytes()
    r = aws(gw.endpoint, env, "s3", "ls", "s3://team-x/dir/")
    assert r.returncode == 0 and "hello.txt" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "back.txt"
    r = aws(gw.endpoint, env, "s3", "cp", "s3://team-x/dir/hello.txt", str(out))
    assert r.returncode == 0 and out.read_bytes() == src.read_bytes(), r.stderr
    # The bucket is listed under the client's name, not the backend's.
    r = aws(gw.endpoint, env, "s3", "ls")
    listed = [line.split()[-1] for line in r.stdout.splitlines()]
    assert "team-x" in listed and "prod-team-x" not in listed, r.stdout
    # HeadBucket and GetBucketLocation pass through.
    c = gw.client("alice")
    c.head_bucket(Bucket="team-x")
    assert "LocationConstraint" in c.get_bucket_location(Bucket="team-x")
    r = aws(gw.endpoint, env, "s3", "rb", "s3://team-x", "--force")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("remove_bucket: team-x"), r.stdout
    assert not (gw.one.root / "prod-team-x").exists()
    assert fails(c.head_bucket, Bucket="team-x")[0] == 404


def test_exact_entry_wins_over_pattern(gw):
    c = gw.client("alice")
    c.create_bucket(Bucket="team-special")
    try:
        assert (gw.two.root / "team-special").is_dir()
        assert not (gw.one.root / "prod-team-special").exists()
        c.put_object(Bucket="team-special", Key="k", Body=b"on two")
        assert (gw.two.root / "team-special" / "k").read_bytes() == b"on two"
    finally:
        c.delete_object(Bucket="team-special", Key="k")
        c.delete_bucket(Bucket="team-special")
    assert not (gw.two.root / "team-special").exists()


def test_list_buckets_is_the_union_filtered_by_policy_with_real_dates(gw):
    one, two = gw.one.client(), gw.two.client()
    one.create_bucket(Bucket="prod-team-a")  # → team-a
    one.create_bucket(Bucket="stray-one")  # served by no entry
    two.create_bucket(Bucket="lab-1")  # → lab-1
    two.create_bucket(Bucket="prod-team-b")  # team-* lives on one: not served
    try:
        alice = gw.client("alice").list_buckets()
        got = names(alice)
        assert {"data", "team-a", "lab-1"} <= set(got), got
        for hidden in ("stray-one", "prod-team-a", "prod-team-b", "team-b", "data-prod", "public", "other"):
            assert hidden not in got, (hidden, got)
        # Each bucket keeps its backend's CreationDate.
        direct = {b["Name"]: b["CreationDate"] for b in one.list_buckets()["Buckets"]}
        direct |= {"two:" + b["Name"]: b["CreationDate"] for b in two.list_buckets()["Buckets"]}
        dates = {b["Name"]: b["CreationDate"] for b in alice["Buckets"]}
        assert dates["team-a"] == direct["prod-team-a"]
        assert dates["data"] == direct["data-prod"]
        assert dates["lab-1"] == direct["two:lab-1"]
        assert all(d.year > 2000 for d in dates.values()), dates
        # bob may list only lab-* buckets: that is all he sees.
        assert names(gw.client("bob").list_buckets()) == ["lab-1"]
        # carol has no rule at all: an empty list, not an error.
        assert names(gw.client("carol").list_buckets()) == []
    finally:
        for c, b in ((one, "prod-team-a"), (one, "stray-one"), (two, "lab-1"), (two, "prod-team-b")):
            c.delete_bucket(Bucket=b)


def test_unauthorized_bucket_operations_are_denied_and_change_nothing(gw):
    bob = gw.client("bob")
    assert fails(bob.create_bucket, Bucket="team-bob") == (403, "AccessDenied")
    assert not (gw.one.root / "prod-team-bob").exists() and not (gw.one.root / "team-bob").exists()
    assert fails(bob.create_bucket, Bucket="lab-bob") == (403, "AccessDenied")
    assert not (gw.two.root / "lab-bob").exists()
    gw.client("alice").create_bucket(Bucket="team-keep")
    try:
        assert fails(bob.delete_bucket, Bucket="team-keep") == (403, "AccessDenied")
        assert (gw.one.root / "prod-team-keep").is_dir()
        # Authorized before routed: bob cannot tell an existing bucket from
        # a missing one, nor a served name from an unserved one.
        assert fails(bob.head_bucket, Bucket="team-keep")[0] == 403
        assert fails(bob.head_bucket, Bucket="team-missing")[0] == 403
        assert fails(bob.head_bucket, Bucket="nothing-serves-this")[0] == 403
        assert fails(bob.get_bucket_location, Bucket="team-keep") == (403, "AccessDenied")
    finally:
        gw.client("alice").delete_bucket(Bucket="team-keep")
    # alice may: a missing bucket is 404, an unserved name NoSuchBucket.
    alice = gw.client("alice")
    assert fails(alice.head_bucket, Bucket="team-missing")[0] == 404
    assert fails(alice.list_objects_v2, Bucket="nothing-serves-this") == (404, "NoSuchBucket")


def test_unserved_and_invalid_names(gw):
    alice = gw.client("alice")
    # No entry, no default: CreateBucket is refused with a clear message.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.create_bucket(Bucket="nowhere-bucket")
    assert code_of(e.value) == (403, "AccessDenied")
    assert "no bucket entry or pattern matches" in e.value.response["Error"]["Message"]
    # A pattern routes it, but S3 would not accept the name.
    for bad in ("team-UPPER", "team-a..b", "team-x_y"):
        assert fails(alice.create_bucket, Bucket=bad) == (400, "InvalidBucketName"), bad
    assert not any(p.name.startswith("prod-team-") for p in gw.one.root.iterdir())


def test_default_backend_on_and_off(gw):
    alice = gw.client("alice")
    assert fails(alice.create_bucket, Bucket="free-1")[1] == "AccessDenied"
    assert "default backend: off" in gw.admin("buckets", "list").stdout
    gw.admin("buckets", "default", "two")
    try:
        assert "default backend: two" in gw.admin("buckets", "list").stdout
        assert json.loads(gw.admin("--json", "status").stdout)["default_backend"] == "two"
        # The change reaches the data plane (the unknown name it remembered
        # is forgotten): the name is served now, on backend two.
        alice.create_bucket(Bucket="free-1")
        assert (gw.two.root / "free-1").is_dir()
        alice.put_object(Bucket="free-1", Key="k", Body=b"default")
        assert alice.get_object(Bucket="free-1", Key="k")["Body"].read() == b"default"
        assert "free-1" in names(alice.list_buckets())
        # bob has no rule for it: denied, and he does not see it.
        assert fails(gw.client("bob").get_object, Bucket="free-1", Key="k") == (403, "AccessDenied")
        assert "free-1" not in names(gw.client("bob").list_buckets())
        # A backend in use cannot be deleted (that it is the default is
        # checked too: state.rs `patterns_and_the_default_backend`).
        assert gw.admin("backends", "delete", "two", check=False).returncode != 0
    finally:
        gw.admin("buckets", "default", "--off")
    assert json.loads(gw.admin("--json", "status").stdout)["default_backend"] is None
    assert fails(alice.head_bucket, Bucket="free-1")[0] == 404
    assert "free-1" not in names(alice.list_buckets())
    # Still on the backend: turning the default off forgets no data.
    assert (gw.two.root / "free-1" / "k").exists()
    (gw.two.root / "free-1" / "k").unlink()
    (gw.two.root / "free-1").rmdir()


def test_admin_put_bucket_pattern_and_overlap(gw):
    r = gw.admin("buckets", "put", "--name", "te*", "--backend", "two", check=False)
    assert r.returncode != 0
    assert 'pattern "te*" overlaps pattern "team-*"' in r.stderr, r.stderr
    r = gw.admin("buckets", "put", "--name", "ops-*", "--backend", "two", "--backend-bucket", "fixed", check=False)
    assert r.returncode != 0 and "must contain {name}" in r.stderr, r.stderr
    gw.admin("buckets", "put", "--name", "ops-*", "--backend", "two", "--backend-bucket", "x-{name}")
    try:
        listed = gw.admin("buckets", "list").stdout
        assert "ops-*" in listed and "x-{name}" in listed, listed
        alice = gw.client("alice")
        alice.create_bucket(Bucket="ops-1")
        assert (gw.two.root / "x-ops-1").is_dir()
        assert "ops-1" in names(alice.list_buckets())
        alice.delete_bucket(Bucket="ops-1")
    finally:
        gw.admin("buckets", "delete", "ops-*")
    assert fails(gw.client("alice").create_bucket, Bucket="ops-2")[1] == "AccessDenied"


def test_overlapping_patterns_are_a_config_error(tmp_path):
    text = "\n".join([
        *toml_table("backends", dict(name="one", endpoint="http://127.0.0.1:9", access_key="a", secret_key="s" * 20)),
        *toml_table("buckets", dict(name="team-*", backend="one")),
        *toml_table("buckets", dict(name="t*-x", backend="one")),
    ]) + "\n"  # fmt: skip
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = subprocess.run([str(gateway_bin()), "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 64, r.stdout + r.stderr
    assert 'buckets[1] ("t*-x")' in r.stderr and 'overlaps pattern "team-*"' in r.stderr, r.stderr
    # Disjoint patterns, a template and a default backend are fine, and
    # check-config shows them.
    cfg.write_text('default_backend = "one"\n' + text.replace('"t*-x"', '"lab-?"'))
    r = subprocess.run([str(gateway_bin()), "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert 'default_backend = "one"' in r.stdout and 'name = "lab-?"' in r.stdout, r.stdout
    assert 'backend_bucket = "{name}"' in r.stdout, r.stdout
    cfg.write_text('default_backend = "nope"\n' + text.replace('"t*-x"', '"lab-?"'))
    r = subprocess.run([str(gateway_bin()), "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 64 and 'default_backend "nope" is not a configured backend' in r.stderr, r.stderr


# ----------------------------------------------- same results as the backend


def run_sequence(kind: str, endpoint: str, access_key: str, secret_key: str, bucket: str, home: Path) -> list:
    """One tool's create / list / delete sequence; the outcome of each step
    with the bucket's name replaced by BUCKET, so that runs against
    different endpoints (and bucket names) compare."""
    home.mkdir(parents=True, exist_ok=True)
    steps: list = []

    def record(what: str, p: subprocess.CompletedProcess, listed: bool | None = None) -> None:
        err = p.stderr.replace(bucket, "BUCKET")
        codes = [c for c in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists", "BucketNotEmpty", "NoSuchBucket",
                             "AccessDenied") if c in err]  # fmt: skip
        steps.append((what, p.returncode == 0, codes, listed))

    def has(out: str) -> bool:
        return any(bucket in line.split() or f"s3://{bucket}" in line.split() for line in out.splitlines())

    src = home / "obj.txt"
    src.write_bytes(b"x")
    if kind == "aws":
        env = aws_env(home, access_key, secret_key)

        def a(*args):
            return aws(endpoint, env, *args)

        record("mb", a("s3", "mb", f"s3://{bucket}"))
        p = a("s3", "ls")
        record("ls", p, has(p.stdout))
        record("mb again", a("s3", "mb", f"s3://{bucket}"))
        record("cp", a("s3", "cp", str(src), f"s3://{bucket}/k"))
        record("rb non-empty", a("s3", "rb", f"s3://{bucket}"))
        record("rm", a("s3", "rm", f"s3://{bucket}/k"))
        record("rb", a("s3", "rb", f"s3://{bucket}"))
        p = a("s3", "ls")
        record("ls after", p, has(p.stdout))
        record("ls gone bucket", a("s3", "ls", f"s3://{bucket}"))
        record("rb again", a("s3", "rb", f"s3://{bucket}"))
    elif kind == "rclone":
        conf = home / "rclone.conf"
        conf.write_text("")
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "RCLONE_CONFIG": str(conf),
               "RCLONE_CONFIG_R_TYPE": "s3", "RCLONE_CONFIG_R_PROVIDER": "Other", "RCLONE_CONFIG_R_ENV_AUTH": "false",
               "RCLONE_CONFIG_R_ACCESS_KEY_ID": access_key, "RCLONE_CONFIG_R_SECRET_ACCESS_KEY": secret_key,
               "RCLONE_CONFIG_R_ENDPOINT": endpoint, "RCLONE_CONFIG_R_REGION": REGION,
               "RCLONE_CONFIG_R_FORCE_PATH_STYLE": "true"}  # fmt: skip

        def r(*args):
            return subprocess.run([tool("rclone"), "--low-level-retries", "1", "--retries", "1", *args], env=env,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip

        record("mkdir", r("mkdir", f"r:{bucket}"))
        p = r("lsd", "r:")
        record("lsd", p, has(p.stdout))
        record("copyto", r("copyto", str(src), f"r:{bucket}/k"))
        record("deletefile", r("deletefile", f"r:{bucket}/k"))
        record("rmdir", r("rmdir", f"r:{bucket}"))
        p = r("lsd", "r:")
        record("lsd after", p, has(p.stdout))
    elif kind == "s3cmd":
        cfg = home / "s3cfg"
        hostport = endpoint.removeprefix("http://")
        cfg.write_text(f"[default]\naccess_key = {access_key}\nsecret_key = {secret_key}\nhost_base = {hostport}\n"
                       f"host_bucket = {hostport}\nbucket_location = us-east-1\nuse_https = False\n"
                       "signature_v2 = False\n")  # fmt: skip
        env = {"PATH": os.environ["PATH"], "HOME": str(home)}

        def s(*args):
            return subprocess.run([tool("s3cmd"), "-c", str(cfg), "--no-progress", *args], env=env,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip

        record("mb", s("mb", f"s3://{bucket}"))
        p = s("ls")
        record("ls", p, has(p.stdout))
        record("put", s("put", str(src), f"s3://{bucket}/k"))
        record("rb non-empty", s("rb", f"s3://{bucket}"))
        record("del", s("del", f"s3://{bucket}/k"))
        record("rb", s("rb", f"s3://{bucket}"))
        p = s("ls")
        record("ls after", p, has(p.stdout))
    return steps


@pytest.mark.parametrize("kind", ["aws", "rclone", "s3cmd"])
def test_a_tool_that_creates_and_deletes_its_own_buckets_gets_the_same_results(gw, tmp_path, kind):
    """The same sequence against s3s-fs directly and through s3gate (a
    `lab-*` bucket, served by pattern on backend two): every step succeeds
    or fails alike, with the same error codes, and listings agree."""
    tag = uuid.uuid4().hex[:6]
    direct = run_sequence(kind, gw.two.endpoint, gw.two.creds.access_key, gw.two.creds.secret_key,
                          f"lab-direct-{tag}", tmp_path / "direct")  # fmt: skip
    alice = gw.keys["alice"]
    through = run_sequence(kind, gw.endpoint, alice.access_key, alice.secret_key, f"lab-gw-{tag}", tmp_path / "gw")
    assert through == direct
    # The sequence really made and removed buckets (it is not all failures).
    assert any(ok for _, ok, _, _ in direct) and any(listed for *_, listed in direct)
    assert not (gw.two.root / f"lab-gw-{tag}").exists() and not (gw.two.root / f"lab-direct-{tag}").exists()
