"""Process lifecycle: ready file, SIGTERM, bad configuration."""

import json
import subprocess

from conftest import gateway_bin, start_gateway, stop_gateway


def test_ready_file_and_sigterm(backend, tmp_path):
    gw = start_gateway(tmp_path, backend, name="s3gate-lifecycle")
    info = json.loads(gw.ready_file.read_text())
    assert info["s3"] == f"127.0.0.1:{gw.port}"
    r = gw.raw("alice").request("GET", "/data", query=[("list-type", "2"), ("max-keys", "1")])
    assert r.status == 200, r.describe()
    stop_gateway(gw)  # asserts exit status 0 within 10 s of SIGTERM
    assert gw.proc.popen.returncode == 0


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
