"""Process lifecycle: ready file, SIGTERM and the drain, bad configuration."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from conftest import _client, gateway_bin, gateway_env, make_keys, render_config, start_gateway, stop_gateway, unused_port
from harness.procs import read_ready_file, start_with_ready_file
from recorder import launch_gateway


def test_ready_file_and_sigterm(backend, tmp_path):
    gw = start_gateway(tmp_path, backend, name="s3gate-lifecycle")
    info = json.loads(gw.ready_file.read_text())
    assert info["s3"] == f"127.0.0.1:{gw.port}"
    r = gw.raw("alice").request("GET", "/data", query=[("list-type", "2"), ("max-keys", "1")])
    assert r.status == 200, r.describe()
    stop_gateway(gw)  # asserts exit status 0 within 10 s of SIGTERM
    assert gw.proc.popen.returncode == 0
    assert sigterm_lines(gw.log_path) == 1


def sigterm_lines(log: Path) -> int:
    return sum("SIGTERM received" in line for line in log.read_text(errors="replace").splitlines())


def test_sigterm_is_handled_once_with_the_grpc_listener(backend, tmp_path):
    """`serve --grpc-listen` stops two servers on one signal: it logs it once."""
    keys = make_keys()
    cfg = tmp_path / "s3gate.toml"
    cfg.write_text(render_config(backend, keys, unused_port()))
    ready, log = tmp_path / "ready.json", tmp_path / "s3gate.log"
    argv = [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
            "--grpc-listen", "127.0.0.1:0", "--ready-file", str(ready)]  # fmt: skip
    proc, _ = start_with_ready_file("s3gate-grpc-sigterm", argv, ready, "grpc", log, gateway_env(backend, keys, "info"))
    code, killed = proc.stop()
    assert not killed and code == 0, f"exit {code}, killed: {killed}\n{proc.tail()}"
    assert sigterm_lines(log) == 1, proc.tail()


def test_two_gateways_get_different_ports(backend, gateway, tmp_path):
    gw = start_gateway(tmp_path, backend, name="s3gate-second")
    try:
        assert gw.port != gateway.port
    finally:
        stop_gateway(gw)


def test_bad_config_fails_fast(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('listen = "127.0.0.1:0"\n[[buckets]]\nname = "x"\nbackend = "missing"\n')
    p = subprocess.run(
        [str(gateway_bin()), "serve", "--config", str(cfg), "--ready-file", str(tmp_path / "ready.json")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode != 0
    assert p.stderr.strip(), "no error message on stderr"
    assert not (tmp_path / "ready.json").exists()


def test_missing_env_secret_fails_fast(backend, tmp_path):
    cfg = tmp_path / "env.toml"
    cfg.write_text(
        'listen = "127.0.0.1:0"\nregion = "us-east-1"\n'
        f'[[backends]]\nname = "local"\nendpoint = "{backend.endpoint}"\nregion = "us-east-1"\n'
        'addressing_style = "path"\naccess_key = "K"\nsecret_key = "env:S3GATE_E2E_DEFINITELY_UNSET"\n'
        '[[buckets]]\nname = "data"\nbackend = "local"\n'
    )
    p = subprocess.run(
        [str(gateway_bin()), "serve", "--config", str(cfg), "--ready-file", str(tmp_path / "ready.json")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert p.returncode != 0
    assert "S3GATE_E2E_DEFINITELY_UNSET" in p.stderr, p.stderr


# --------------------------------------------------------------------------- drain

GIB = 1 << 30
MIB = 1 << 20


def write_object(path: Path, size: int) -> str:
    """Writes `size` bytes to `path` (a file of the s3s-fs backend: no upload
    through anything) and returns their SHA-256. Every MiB differs (a random
    block stamped with its index), so bytes out of place change the hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(MIB))
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size // MIB):
            block[:8] = i.to_bytes(8, "big")
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def refused(addr: tuple[str, int]) -> bool:
    """Whether a new TCP connection to `addr` is refused (not accepted, and
    not left hanging in a backlog nobody reads)."""
    try:
        with socket.create_connection(addr, timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def readyz(admin: str) -> int:
    """The status of the admin listener's /readyz."""
    try:
        with urllib.request.urlopen(admin + "/readyz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_sigterm_drains_a_1gib_get(backend, tmp_path):
    """SIGTERM while a 1 GiB GET streams through `s3gate serve`: the listener
    closes at once (new connections are refused), the GET completes with every
    byte right (hashed as it streams, never held), and the process then exits 0
    well inside --drain-timeout. Meanwhile the admin listener's /readyz
    answers 503, so a load balancer takes the instance out."""
    key = f"drain/{uuid.uuid4().hex[:8]}.bin"
    started = time.monotonic()
    want = write_object(backend.file("data-prod", key), GIB)
    gw = launch_gateway(tmp_path, backend, "s3gate-drain", extra_args=["--drain-timeout", "60s", "--admin-listen", "127.0.0.1:0"],
                        log_level="info")  # fmt: skip
    try:
        admin = "http://" + read_ready_file(gw.ready_file)["admin"]
        assert readyz(admin) == 200
        client = _client(gw.endpoint, gw.keys["alice"].access_key, gw.keys["alice"].secret_key)
        obj = client.get_object(Bucket="data", Key=key)
        assert obj["ContentLength"] == GIB
        body = obj["Body"]
        digest = hashlib.sha256()
        got = 0
        # Some of it first: the response is streaming when the signal comes.
        while got < 64 * MIB:
            chunk = body.read(MIB)
            assert chunk, f"body ended after {got} bytes"
            digest.update(chunk)
            got += len(chunk)
        assert refused(gw.addr) is False
        gw.proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "shutting down, draining connections" not in gw.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "SIGTERM not acted on within 10s"
            time.sleep(0.05)
        assert refused(gw.addr), "a new connection was accepted after SIGTERM"
        # The admin listener keeps answering while the process drains: not ready.
        assert readyz(admin) == 503
        assert gw.proc.alive(), "exited with a GET in flight"
        while chunk := body.read(MIB):
            digest.update(chunk)
            got += len(chunk)
        assert got == GIB
        assert digest.hexdigest() == want, "the drained GET returned other bytes"
        # Drained: the process exits on its own, well before the timeout.
        code = gw.proc.popen.wait(timeout=20)
        assert code == 0, gw.proc.tail()
        log = gw.log_path.read_text(errors="replace")
        assert "all connections drained" in log and "drain timeout reached" not in log, gw.proc.tail()
        assert refused(gw.addr)
    finally:
        stop_gateway(gw)
        backend.file("data-prod", key).unlink(missing_ok=True)
    assert time.monotonic() - started < 60
