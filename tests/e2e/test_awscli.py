"""The aws cli (v1), configured only through env vars and a temp config file."""

import filecmp
import json
import os
import shutil
import subprocess
import uuid

import pytest
import requests


MiB = 1 << 20


@pytest.fixture(scope="module")
def aws(gateway, tmp_path_factory):
    exe = shutil.which("aws")
    if exe is None:
        pytest.fail("aws cli not found (pip install -r tests/e2e/requirements.txt)")
    home = tmp_path_factory.mktemp("awscli-home")
    cfg = home / "config"
    # signature_version: `aws s3 presign` in cli v1 makes SigV2 URLs unless told otherwise
    cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n    signature_version = s3v4\n")
    alice = gateway.keys["alice"]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(cfg),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_ACCESS_KEY_ID": alice.access_key,
        "AWS_SECRET_ACCESS_KEY": alice.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }
    for k in ("PYENV_ROOT", "PYENV_VERSION", "LANG", "LC_ALL"):
        if k in os.environ:
            env[k] = os.environ[k]

    def run(*args: str, check: bool = True, config: str | None = None) -> subprocess.CompletedProcess:
        argv = [exe, "--endpoint-url", gateway.endpoint, *args]
        e = env if config is None else {**env, "AWS_CONFIG_FILE": config}
        p = subprocess.run(argv, env=e, capture_output=True, text=True, timeout=300)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    return run


@pytest.fixture
def prefix():
    return f"awscli/{uuid.uuid4().hex[:8]}/"


def test_cp_up_and_down(aws, backend, tmp_path, prefix):
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from the aws cli\n")
    aws("s3", "cp", str(small), f"s3://data/{prefix}small.txt")
    assert backend.file("data-prod", prefix + "small.txt").read_bytes() == small.read_bytes()
    out = tmp_path / "small.out"
    aws("s3", "cp", f"s3://data/{prefix}small.txt", str(out))
    assert out.read_bytes() == small.read_bytes()


def test_cp_multipart(aws, backend, tmp_path, prefix):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(25 * MiB))  # above the cli's 8 MiB multipart threshold
    aws("s3", "cp", str(big), f"s3://data/{prefix}big.bin")
    etag = json.loads(aws("s3api", "head-object", "--bucket", "data", "--key", prefix + "big.bin").stdout)["ETag"]
    assert etag.strip('"').endswith("-4"), f"expected a 4-part multipart ETag, got {etag}"
    assert filecmp.cmp(big, backend.file("data-prod", prefix + "big.bin"), shallow=False)
    out = tmp_path / "big.out"
    aws("s3", "cp", f"s3://data/{prefix}big.bin", str(out))
    assert filecmp.cmp(big, out, shallow=False)


def test_ls(aws, backend, prefix):
    for k in ["a.txt", "b.txt", "sub/c.txt"]:
        backend.put("data-prod", prefix + k, b"12345")
    lines = aws("s3", "ls", f"s3://data/{prefix}").stdout.splitlines()
    assert any(line.split()[-1] == "a.txt" for line in lines), lines
    assert any(line.split()[-1] == "b.txt" for line in lines), lines
    assert any(line.strip() == "PRE sub/" for line in lines), lines
    lines = aws("s3", "ls", "--recursive", f"s3://data/{prefix}").stdout.splitlines()
    assert sorted(line.split()[-1] for line in lines) == [prefix + k for k in ["a.txt", "b.txt", "sub/c.txt"]]
    buckets = [line.split()[-1] for line in aws("s3", "ls").stdout.splitlines()]
    assert "data" in buckets and "data-prod" not in buckets and "other" not in buckets


def test_sync_both_ways(aws, tmp_path, prefix):
    src = tmp_path / "src"
    for rel, size in [("a.txt", 10), ("dir/b.bin", 100_000), ("dir/deeper/c with space.txt", 3), ("ü.txt", 1)]:
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
    aws("s3", "sync", str(src), f"s3://data/{prefix}sync/")
    # a second sync has nothing to do
    again = aws("s3", "sync", str(src), f"s3://data/{prefix}sync/")
    assert "upload:" not in again.stdout, again.stdout
    dst = tmp_path / "dst"
    aws("s3", "sync", f"s3://data/{prefix}sync/", str(dst))
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == files
    for f in files:
        assert (src / f).read_bytes() == (dst / f).read_bytes(), f


def test_s3api_list_objects_v2(aws, backend, prefix):
    for i in range(5):
        backend.put("data-prod", f"{prefix}k{i}", b"x" * i)
    out = json.loads(aws("s3api", "list-objects-v2", "--bucket", "data", "--prefix", prefix).stdout)
    assert [o["Key"] for o in out["Contents"]] == [f"{prefix}k{i}" for i in range(5)]
    assert [o["Size"] for o in out["Contents"]] == list(range(5))
    # the cli's auto-pagination drops Name; ask for one page to see it
    one = json.loads(aws("s3api", "list-objects-v2", "--bucket", "data", "--prefix", prefix, "--no-paginate").stdout)
    assert one["Name"] == "data"
    # the cli paginates by itself with a small page size
    out = json.loads(aws("s3api", "list-objects-v2", "--bucket", "data", "--prefix", prefix, "--page-size", "2").stdout)
    assert [o["Key"] for o in out["Contents"]] == [f"{prefix}k{i}" for i in range(5)]


def test_presign(aws, backend, prefix):
    backend.put("data-prod", prefix + "p.txt", b"presigned by the cli")
    url = aws("s3", "presign", f"s3://data/{prefix}p.txt", "--expires-in", "300").stdout.strip()
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.content == b"presigned by the cli"


def test_presign_default_sigv2_works(aws, backend, prefix, tmp_path):
    """Without signature_version = s3v4, cli v1 presigns with SigV2
    (AWSAccessKeyId/Signature/Expires), which s3gate verifies through the
    control plane (test_sigv2.py has the rest)."""
    backend.put("data-prod", prefix + "v2.txt", b"v2")
    cfg = tmp_path / "config-default"
    cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    url = aws("s3", "presign", f"s3://data/{prefix}v2.txt", config=str(cfg)).stdout.strip()
    assert "AWSAccessKeyId=" in url, url
    r = requests.get(url, timeout=30)
    assert (r.status_code, r.content) == (200, b"v2"), r.text


def test_rm(aws, backend, prefix):
    backend.put("data-prod", prefix + "gone.txt", b"x")
    aws("s3", "rm", f"s3://data/{prefix}gone.txt")
    assert not backend.exists("data-prod", prefix + "gone.txt")


def test_denied_is_reported(aws, prefix, tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"x")
    p = aws("s3", "cp", str(f), "s3://data/secret/awscli-x", check=False)
    assert p.returncode != 0
    assert "AccessDenied" in p.stderr, p.stderr
