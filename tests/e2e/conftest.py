"""Real processes for the end-to-end suite.

One signature-verifying S3 server (s3s-fs) and one s3gate are started per
session, both on 127.0.0.1 and on ports the kernel picks. Nothing sleeps for
readiness: s3gate reports its address in --ready-file, and the backend's
listening port is read from /proc. On a test failure the tail of every
running process's log is attached to the report. Processes get SIGTERM, then
SIGKILL, at the end.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import re
import secrets
import socket
import shutil
import sys
from pathlib import Path

import boto3
import botocore
import pytest
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.config import q, toml_table  # noqa: E402
from harness.procs import PROCS, Proc, free_port, kill_all, listening_ports, peak_rss_kib, read_ready_file, wait_for  # noqa: E402,F401
from s3util import Creds, Raw  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
BACKEND_SECRET_ENV = "S3GATE_E2E_BACKEND_SECRET"
CAROL_SECRET_ENV = "S3GATE_E2E_CAROL_SECRET"

# The suite must not pick up the developer's AWS settings.
for _v in list(os.environ):
    if _v.startswith("AWS_"):
        del os.environ[_v]
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


# --------------------------------------------------------------------------- processes

atexit.register(kill_all)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for p in list(PROCS):
            rep.sections.append((f"{p.name} log, last 80 lines ({p.log_path})", p.tail(80)))


def unused_port() -> int:
    """A port nothing listens on (for the 'backend unreachable' case only)."""
    return free_port()


# --------------------------------------------------------------------------- backend


@dataclasses.dataclass
class Backend:
    proc: Proc
    root: Path
    addr: tuple[str, int]
    creds: Creds

    @property
    def endpoint(self) -> str:
        return f"http://{self.addr[0]}:{self.addr[1]}"

    def client(self, secret: str | None = None):
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.creds.access_key,
            aws_secret_access_key=secret or self.creds.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"}),
        )

    def put(self, bucket: str, key: str, body: bytes) -> None:
        """Write an object straight to the backend. Plain http.client rather than
        boto3: botocore's `Expect: 100-continue` handling against s3s-fs
        occasionally hangs for the full read timeout on a busy machine."""
        r = Raw(self.addr, self.creds).request("PUT", f"/{bucket}/{key}", body=body)
        assert r.status == 200, f"backend PUT {bucket}/{key}: {r.describe()}"

    def file(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def exists(self, bucket: str, key: str) -> bool:
        """Ask the backend itself (not the gateway) whether the object exists."""
        try:
            self.client().head_object(Bucket=bucket, Key=key)
            return True
        except botocore.exceptions.ClientError as e:
            if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return False
            raise


BACKEND_BUCKETS = ["data-prod", "public", "other"]


def start_backend(tmp: Path) -> Backend:
    exe = shutil.which("s3s-fs")
    if exe is None:
        pytest.fail("s3s-fs is not on PATH: cargo install s3s-fs --version 0.14.1 --features binary --locked")
    root = tmp / "backend-root"
    for b in BACKEND_BUCKETS:
        (root / b).mkdir(parents=True)
    creds = Creds("BK" + secrets.token_hex(8).upper(), "bsec-" + secrets.token_urlsafe(24), REGION)
    proc = Proc(
        "s3s-fs",
        [exe, "--host", "127.0.0.1", "--port", "0", "--access-key", creds.access_key, "--secret-key", creds.secret_key, str(root)],
        tmp / "s3s-fs.log",
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
    )
    ports = wait_for(lambda: listening_ports(proc.pid), "s3s-fs to listen", proc)
    return Backend(proc, root, ("127.0.0.1", ports[0]), creds)


@pytest.fixture(scope="session")
def backend(tmp_path_factory) -> Backend:
    b = start_backend(tmp_path_factory.mktemp("backend"))
    yield b
    b.proc.stop()


# --------------------------------------------------------------------------- gateway


def gateway_bin() -> Path:
    p = Path(os.environ.get("S3GATE_BIN", REPO / "target" / "release" / "s3gate"))
    if not p.is_absolute():
        p = REPO / p
    if not p.exists():
        pytest.fail(f"s3gate binary not found at {p}; run `cargo build --release --bin s3gate` or set S3GATE_BIN")
    return p


@dataclasses.dataclass
class Key:
    principal: str
    access_key: str
    secret_key: str
    groups: list[str]
    from_env: str | None = None

    @property
    def creds(self) -> Creds:
        return Creds(self.access_key, self.secret_key, REGION)


def make_keys() -> dict[str, Key]:
    def sec() -> str:
        return "csec-" + secrets.token_urlsafe(24)

    return {
        "alice": Key("alice", "S3GATEALICE01", sec(), ["analysts"]),
        "bob": Key("bob", "S3GATEBOB0001", sec(), []),
        "carol": Key("carol", "S3GATECAROL01", sec(), ["ops"], from_env=CAROL_SECRET_ENV),
        "dave": Key("dave", "S3GATEDAVE001", sec(), ["analysts"]),
    }


RULES = [
    # alice: everything on data, public and the bucket whose backend is down ...
    ("allow", ["alice"], ["s3:*"], ["data", "data/*", "public", "public/*", "dead", "dead/*"]),
    # ... except data/secret/*: deny wins.
    ("deny", ["alice"], ["s3:*"], ["data/secret/*"]),
    # ... and *.forbidden: a glob that depends on the whole key, so alice's
    # decisions on data objects are exact-scoped (one per key), which the
    # failover tests rely on for "an uncached decision".
    ("deny", ["alice"], ["s3:*"], ["data/*.forbidden"]),
    # bob: read/write/list only under data/reports/.
    ("allow", ["bob"], ["s3:GetObject", "s3:PutObject", "s3:ListBucket"], ["data/reports/*"]),
    # the analysts group (dave, alice): read-only on data.
    ("allow", ["group:analysts"], ["s3:GetObject", "s3:ListBucket"], ["data", "data/*"]),
    # the ops group (carol): everything on other.
    ("allow", ["group:ops"], ["s3:*"], ["other", "other/*"]),
    # everyone, including anonymous: read public.
    ("allow", ["*"], ["s3:GetObject", "s3:ListBucket"], ["public", "public/*"]),
]

# client bucket -> (backend, backend bucket)
BUCKETS = {"data": ("local", "data-prod"), "public": ("local", "public"), "other": ("local", "other"), "dead": ("dead", "dead")}


def render_config(backend: Backend, keys: dict[str, Key], dead_port: int) -> str:
    out = [
        'listen = "127.0.0.1:0"',
        f"region = {q(REGION)}",
        'base_domains = ["s3.localhost"]',
        # the credential as a tagged table ...
        *toml_table("backends", dict(name="local", endpoint=backend.endpoint, region=REGION, addressing_style="path",
                                     credentials=dict(kind="static_hmac", access_key=backend.creds.access_key,
                                                      secret_key="env:" + BACKEND_SECRET_ENV))),
        # ... or, for static HMAC keys, as flat fields
        *toml_table("backends", dict(name="dead", endpoint=f"http://127.0.0.1:{dead_port}", region=REGION,
                                     addressing_style="path", access_key="DEADKEY", secret_key="dead-secret-not-used-0000")),
    ]
    for name, (be, bb) in BUCKETS.items():
        out += toml_table("buckets", dict(name=name, backend=be, backend_bucket=bb if bb != name else None))
    for k in keys.values():
        secret = f"env:{k.from_env}" if k.from_env else k.secret_key
        out += toml_table("keys", dict(access_key=k.access_key, secret_key=secret, principal=k.principal, groups=k.groups))
    return "\n".join(out) + "\n" + rules_config(RULES)


def rules_config(rules) -> str:
    """`[[rules]]` tables for (effect, principals, actions, resources) tuples."""
    out = []
    for effect, principals, actions, resources in rules:
        out += toml_table("rules", dict(effect=effect, principals=principals, actions=actions, resources=resources))
    return "\n".join(out) + "\n"


def gateway_env(backend: Backend, keys: dict[str, Key], log_level: str, **extra: str) -> dict[str, str]:
    """The environment of an s3gate process (serve, controlplane, dataplane)
    running render_config's config: the secrets it names by env:, the log
    level (S3GATE_LOG overrides), and `extra`."""
    return {
        **os.environ,
        "S3GATE_LOG": os.environ.get("S3GATE_LOG", log_level),
        BACKEND_SECRET_ENV: backend.creds.secret_key,
        CAROL_SECRET_ENV: keys["carol"].secret_key,
        **extra,
    }


def node_files(tmp: Path, name: str) -> dict[str, Path]:
    """`ready=` and `log_path=` of an s3gate process called `name` in `tmp`
    (for harness.cluster's start_controlplane and start_dataplane)."""
    return {"ready": tmp / f"{name}.ready.json", "log_path": tmp / f"{name}.log"}


@dataclasses.dataclass
class Gateway:
    proc: Proc
    addr: tuple[str, int]
    config_path: Path
    log_path: Path
    ready_file: Path
    keys: dict[str, Key]
    backend: Backend

    @property
    def endpoint(self) -> str:
        return f"http://{self.addr[0]}:{self.addr[1]}"

    @property
    def port(self) -> int:
        return self.addr[1]

    def raw(self, who: str | None) -> Raw:
        """Hand-signed requests as `who` (a principal name), or anonymous for None."""
        return Raw(self.addr, self.keys[who].creds if who else None)

    def secrets(self) -> dict[str, str]:
        s = {"backend secret": self.backend.creds.secret_key}
        s.update({f"{k.principal}'s secret": k.secret_key for k in self.keys.values()})
        return s


def start_gateway(
    tmp: Path, backend: Backend, name: str = "s3gate", keys: dict[str, Key] | None = None, log_level: str = "trace"
) -> Gateway:
    """Starts a gateway. The default log level is trace, so the secret check at
    shutdown covers every level (S3GATE_LOG overrides)."""
    exe = gateway_bin()
    keys = keys or make_keys()
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / f"{name}.toml"
    cfg.write_text(render_config(backend, keys, unused_port()))
    ready = tmp / f"{name}.ready.json"
    log = tmp / f"{name}.log"
    env = gateway_env(backend, keys, log_level)
    proc = Proc(name, [str(exe), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--ready-file", str(ready)], log, env)
    info = wait_for(lambda: read_ready_file(ready), f"{name} ready file {ready}", proc)
    assert isinstance(info, dict) and "s3" in info, f"unexpected ready file content: {info!r}"
    host, port = info["s3"].rsplit(":", 1)
    assert host == "127.0.0.1", f"gateway bound {info['s3']}, expected 127.0.0.1"
    return Gateway(proc, (host, int(port)), cfg, log, ready, keys, backend)


def leaked_secrets(gw: Gateway) -> list[str]:
    text = gw.log_path.read_text(errors="replace")
    return [what for what, value in gw.secrets().items() if value in text]


def stop_gateway(gw: Gateway) -> None:
    """Stop and check: graceful exit on SIGTERM, and no secret in the log."""
    code, killed = gw.proc.stop()
    problems = []
    if killed:
        problems.append(f"{gw.proc.name} did not exit within 10s of SIGTERM")
    elif code != 0:
        problems.append(f"{gw.proc.name} exited with {code} after SIGTERM")
    leaked = leaked_secrets(gw)
    if leaked:
        problems.append(f"{gw.log_path} contains: {', '.join(leaked)}")
    if problems:
        tail = "\n".join(gw.log_path.read_text(errors="replace").splitlines()[-40:])
        raise AssertionError("; ".join(problems) + f"\nlog tail:\n{tail}")


@pytest.fixture(scope="session")
def gateway(backend, tmp_path_factory) -> Gateway:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), backend)
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def keys(gateway) -> dict[str, Key]:
    return gateway.keys


def _client(endpoint: str, access_key: str | None, secret: str | None, region: str = REGION, **config):
    s3cfg = {"addressing_style": "path", **config.pop("s3", {})}
    cfg = Config(
        s3=s3cfg,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        **({"signature_version": botocore.UNSIGNED} if access_key is None else {"signature_version": "s3v4"}),
        **config,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key or "unused",
        aws_secret_access_key=secret or "unused",
        config=cfg,
    )


@pytest.fixture(scope="session")
def s3_client(gateway):
    """s3_client(access_key, secret, endpoint_url=..., region=..., **botocore_config) -> boto3 client.

    access_key=None gives an anonymous (unsigned) client. Path-style by default;
    retries are off so every gateway error is seen.
    """

    def make(access_key: str | None, secret: str | None = None, endpoint_url: str | None = None, **config):
        return _client(endpoint_url or gateway.endpoint, access_key, secret, **config)

    return make


@pytest.fixture(scope="session")
def client_as(s3_client, keys):
    """client_as("alice", **config) -> boto3 client signed with alice's s3gate key."""

    def make(who: str, **config):
        k = keys[who]
        return s3_client(k.access_key, k.secret_key, **config)

    return make


@pytest.fixture
def resolve_s3_localhost(monkeypatch):
    """Make s3.localhost and *.s3.localhost (virtual-host-style buckets under
    the base domain render_config names) resolve to 127.0.0.1 inside this
    process: glibc does not resolve subdomains of localhost."""
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if isinstance(host, str) and (host == "s3.localhost" or host.endswith(".s3.localhost")):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
