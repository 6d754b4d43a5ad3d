"""rclone and s3cmd, the Debian packages, pointed at the gateway (path-style,
us-east-1, SigV4)."""

import filecmp
import os
import shutil
import subprocess
import uuid

import pytest

MiB = 1 << 20


def run(argv, env=None, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def need(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"{tool} not found (apt-get install -y {tool})")
    return exe


@pytest.fixture
def prefix():
    return uuid.uuid4().hex[:8]


@pytest.fixture
def tree(tmp_path):
    """A small directory: a few small files and one multipart-sized file."""
    src = tmp_path / "src"
    files = {"a.txt": 11, "dir/b.bin": 200_000, "dir/c d.txt": 5, "big.bin": 12 * MiB}
    for rel, size in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
    return src


def same_tree(a, b):
    fa = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    fb = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert fa == fb
    for f in fa:
        assert filecmp.cmp(a / f, b / f, shallow=False), f


# ----------------------------------------------------------------- rclone


@pytest.fixture(scope="module")
def rclone(gateway, tmp_path_factory):
    exe = need("rclone")
    home = tmp_path_factory.mktemp("rclone-home")
    conf = home / "rclone.conf"
    conf.write_text("")
    alice = gateway.keys["alice"]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "RCLONE_CONFIG": str(conf),
        "RCLONE_CONFIG_GW_TYPE": "s3",
        "RCLONE_CONFIG_GW_PROVIDER": "Other",
        "RCLONE_CONFIG_GW_ENV_AUTH": "false",
        "RCLONE_CONFIG_GW_ACCESS_KEY_ID": alice.access_key,
        "RCLONE_CONFIG_GW_SECRET_ACCESS_KEY": alice.secret_key,
        "RCLONE_CONFIG_GW_ENDPOINT": gateway.endpoint,
        "RCLONE_CONFIG_GW_REGION": "us-east-1",
        "RCLONE_CONFIG_GW_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG_GW_NO_CHECK_BUCKET": "true",
        # exercise multipart with a 12 MiB file
        "RCLONE_CONFIG_GW_UPLOAD_CUTOFF": "5M",
        "RCLONE_CONFIG_GW_CHUNK_SIZE": "5M",
    }

    def rc(*args, check=True):
        # --disable ListR: rclone's recursive listing sends "delimiter=" (empty),
        # which s3s-fs 0.14.1 mistakes for a one-character delimiter and answers
        # with garbage CommonPrefixes (also when talking to s3s-fs directly).
        # Walking directory by directory ("delimiter=/") works.
        argv = [exe, "--low-level-retries", "1", "--retries", "1", "--disable", "ListR", *args]
        return run(argv, env=env, check=check)

    return rc


def test_rclone_copy_list_copy_back(rclone, backend, tree, tmp_path, prefix):
    rclone("copy", str(tree), f"gw:data/rclone/{prefix}")
    for p in tree.rglob("*"):
        if p.is_file():
            stored = backend.file("data-prod", f"rclone/{prefix}/{p.relative_to(tree)}")
            assert filecmp.cmp(p, stored, shallow=False), p
    listed = sorted(rclone("lsf", "-R", "--files-only", f"gw:data/rclone/{prefix}").stdout.split("\n"))
    assert [x for x in listed if x] == sorted(["a.txt", "big.bin", "dir/b.bin", "dir/c d.txt"])
    out = tmp_path / "out"
    rclone("copy", f"gw:data/rclone/{prefix}", str(out))
    same_tree(tree, out)
    # rclone check compares sizes and hashes (MD5 from ETag / metadata) on both sides
    rclone("check", str(tree), f"gw:data/rclone/{prefix}")


def test_rclone_denied(rclone, tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"x")
    p = rclone("copyto", str(f), "gw:data/secret/rclone-x", check=False)
    assert p.returncode != 0
    assert "AccessDenied" in p.stderr or "403" in p.stderr, p.stderr


# ----------------------------------------------------------------- s3cmd


@pytest.fixture(scope="module")
def s3cmd(gateway, tmp_path_factory):
    exe = need("s3cmd")
    home = tmp_path_factory.mktemp("s3cmd-home")
    cfg = home / "s3cfg"
    alice = gateway.keys["alice"]
    hostport = f"127.0.0.1:{gateway.port}"
    cfg.write_text(
        "[default]\n"
        f"access_key = {alice.access_key}\n"
        f"secret_key = {alice.secret_key}\n"
        f"host_base = {hostport}\n"
        f"host_bucket = {hostport}\n"
        "bucket_location = us-east-1\n"
        "use_https = False\n"
        "signature_v2 = False\n"
        "multipart_chunk_size_mb = 5\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}

    def s(*args, check=True):
        return run([exe, "-c", str(cfg), "--no-progress", *args], env=env, check=check)

    return s


def test_s3cmd_put_ls_get(s3cmd, backend, tree, tmp_path, prefix):
    s3cmd("put", "--recursive", str(tree) + "/", f"s3://data/s3cmd/{prefix}/")
    for p in tree.rglob("*"):
        if p.is_file():
            stored = backend.file("data-prod", f"s3cmd/{prefix}/{p.relative_to(tree)}")
            assert filecmp.cmp(p, stored, shallow=False), p
    out = s3cmd("ls", "--recursive", f"s3://data/s3cmd/{prefix}/").stdout
    urls = sorted(line.split(None, 3)[3] for line in out.splitlines() if "s3://" in line)
    assert urls == sorted(f"s3://data/s3cmd/{prefix}/{r}" for r in ["a.txt", "big.bin", "dir/b.bin", "dir/c d.txt"])
    # One file at a time: `s3cmd get --recursive` needs <ETag> in ListObjects
    # entries, which s3s-fs 0.14.1 leaves out (s3cmd dies with KeyError: 'ETag',
    # against s3s-fs directly too).
    dst = tmp_path / "out"
    for p in tree.rglob("*"):
        if p.is_file():
            rel = p.relative_to(tree)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            s3cmd("get", f"s3://data/s3cmd/{prefix}/{rel}", str(dst / rel))
    same_tree(tree, dst)


def test_s3cmd_del(s3cmd, backend, prefix):
    backend.put("data-prod", f"s3cmd/{prefix}/gone", b"x")
    s3cmd("del", f"s3://data/s3cmd/{prefix}/gone")
    assert not backend.exists("data-prod", f"s3cmd/{prefix}/gone")
