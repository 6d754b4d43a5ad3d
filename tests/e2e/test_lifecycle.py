"""Process lifecycle: ready file, SIGTERM, bad configuration."""

import json
import subprocess
from pathlib import Path

from conftest import gateway_bin, gateway_env, make_keys, render_config, start_gateway, stop_gateway, unused_port
from harness.procs import start_with_ready_file


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
