"""Configuration errors that say where, run through the real binary:

- `s3gate check-config` on the suite's own config: valid, no warnings, and
  the effective config it prints shows no secret (`env:` references by name);
- `check-config` on broken files: exit 64 and the file, line, column and
  section or field of the problem (TOML syntax, a missing field, a bad
  `listen`, a misspelled action, an empty file);
- a rule on a bucket that is not configured: valid, with a located warning;
- `serve --config` with a broken file: exit 64, the same located message,
  nothing bound;
- the Admin API refuses a rule naming an action s3gate does not know;
- the [[policy]] chain, the [[identity]] sources and bucket credential
  sources in check-config's output, URLs without passwords; a bucket
  credentials URL with a password refused.
"""

import json
import subprocess
import uuid

import pytest

from conftest import gateway_bin, gateway_env, make_keys, render_config, unused_port
from harness.procs import start_with_ready_file

EX_USAGE = 64

MINIMAL = """\
listen = "127.0.0.1:0"
[[backends]]
name = "local"
endpoint = "http://127.0.0.1:9"
access_key = "BACKENDKEY"
secret_key = "backend-inline-secret-0000"
[[buckets]]
name = "data"
backend = "local"
[[keys]]
access_key = "S3GATEALICE01"
secret_key = "alice-inline-secret-0000"
principal = "alice"
[[rules]]
effect = "allow"
principals = ["alice"]
actions = ["s3:GetObject", "s3:ListBucket"]
resources = ["data", "data/*"]
"""


def check_config(path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(gateway_bin()), "check-config", str(path)], capture_output=True, text=True,
                          timeout=30, env=env, stdin=subprocess.DEVNULL)


def broken(tmp_path, old: str, new: str):
    assert old in MINIMAL, old
    cfg = tmp_path / "s3gate.toml"
    cfg.write_text(MINIMAL.replace(old, new, 1))
    return cfg


def test_check_config_accepts_the_suite_config_and_redacts(backend, tmp_path):
    keys = make_keys()
    cfg = tmp_path / "suite.toml"
    cfg.write_text(render_config(backend, keys, unused_port()))
    env = gateway_env(backend, keys, "info")
    r = check_config(cfg, env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "the suite's config should give no warning"
    assert r.stdout.startswith(f"# {cfg} is valid."), r.stdout
    assert 'secret_key = "<redacted>"' in r.stdout
    # env: references are shown by name, never resolved
    assert '"env:S3GATE_E2E_BACKEND_SECRET"' in r.stdout and '"env:S3GATE_E2E_CAROL_SECRET"' in r.stdout
    assert '[[rules]]  # id r001' in r.stdout
    for secret in [backend.creds.secret_key, "dead-secret-not-used-0000", *(k.secret_key for k in keys.values())]:
        assert secret not in r.stdout + r.stderr


@pytest.mark.parametrize(
    "old, new, expected",
    [
        # TOML syntax: an unterminated string
        ('principal = "alice"', 'principal = "alice', ':13:'),
        # a missing field names the entry
        ('endpoint = "http://127.0.0.1:9"\n', "", ':2:1: backends[0] ("local"): missing field `endpoint`'),
        # a bad listen names the field
        ('listen = "127.0.0.1:0"', 'listen = "localhost"', ":1:10: listen: invalid socket address syntax"),
        # a misspelled action names the rule
        ('"s3:GetObject"', '"s3:GetObjekt"', ':17:12: rules[0] (r001): action "s3:GetObjekt" is not an S3 action'
                                               ' s3gate authorizes (did you mean "s3:GetObject"?)'),
        ('"s3:GetObject"', '"s3:Gte*"', ':17:12: rules[0] (r001): action pattern "s3:Gte*" matches no S3 action'),
        # a bucket on a backend that is not configured
        ('backend = "local"', 'backend = "aws"', ':9:11: buckets[0] ("data"): backend "aws" is not configured'
                                                  ' (backends: local)'),
    ],
)
def test_check_config_locates_problems(tmp_path, old, new, expected):
    cfg = broken(tmp_path, old, new)
    r = check_config(cfg)
    assert r.returncode == EX_USAGE, r
    assert r.stdout == ""
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"s3gate: invalid config {cfg}:"), r.stderr
    assert expected in first, r.stderr
    # the offending line follows, marked
    assert " | " in r.stderr and "^" in r.stderr, r.stderr


SOURCES = """
[[policy]]
kind = "builtin"

[[policy]]
kind = "sql"
url = "postgres://s3gate:pg-password-0000@127.0.0.1:5432/grants"
query = "SELECT effect FROM grants WHERE principal = :principal AND bucket = :bucket"
timeout = "200ms"

[[policy]]
kind = "rego"
files = ["policies/s3.rego"]

[[identity]]
kind = "sql"
url = "env:S3GATE_E2E_KEYS_DB"
query = "SELECT secret, principal, groups FROM s3_keys WHERE access_key = :access_key"
"""


def test_check_config_prints_sources_and_bucket_credentials_without_passwords(tmp_path):
    """The [[policy]] chain in order, the [[identity]] sources and a
    bucket's SQL credential source: kinds, URLs without userinfo (an env:
    reference by name), the queries; the output reads back as a config."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "s3.rego").write_text("package s3gate\ndefault decision := false\n")
    cfg = tmp_path / "s3gate.toml"
    creds = ('credentials = { kind = "sql", query = "SELECT access_key, secret_key FROM bucket_keys '
             'WHERE principal = :principal AND bucket = :bucket", timeout = "200ms" }\n')
    cfg.write_text(MINIMAL.replace('backend = "local"\n', 'backend = "local"\n' + creds, 1) + SOURCES)
    env = {"PATH": "/usr/bin:/bin", "S3GATE_E2E_KEYS_DB": "postgres://keys:keys-password-0000@127.0.0.1/keys"}
    r = check_config(cfg, env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for secret in ["pg-password-0000", "keys-password-0000", "backend-inline-secret-0000"]:
        assert secret not in out + r.stderr, secret
    lines = out.splitlines()
    chain = [line for line in lines if line.startswith("[[policy]]  # ")]
    assert [c.split()[3] for c in chain] == ["builtin", "sql", "rego"], chain
    assert "postgres://***@127.0.0.1:5432/grants" in chain[1] and "timeout=200ms" in chain[1], chain[1]
    assert 'url = "postgres://***@127.0.0.1:5432/grants"' in lines
    assert any(line.startswith("[[identity]]  # identity[0] sql env:S3GATE_E2E_KEYS_DB") for line in lines), out
    assert 'url = "env:S3GATE_E2E_KEYS_DB"' in lines
    assert any(line.startswith("# credentials: sql (the first [[policy]]/[[identity]] sql database)")
               and line.endswith("per_principal") for line in lines), out  # fmt: skip
    # what it prints is a config file check-config accepts again
    back = tmp_path / "back.toml"
    back.write_text(out.replace('"postgres://***@127.0.0.1:5432/grants"', '"postgres://127.0.0.1:5432/grants"'))
    r = check_config(back, env)
    assert r.returncode == 0, r.stderr


def test_check_config_refuses_a_password_in_bucket_credentials(tmp_path):
    cfg = tmp_path / "s3gate.toml"
    creds = ('credentials = { kind = "sql", url = "postgres://u:hunter2-0000@db/x", '
             'query = "SELECT access_key, secret_key FROM k WHERE bucket = :bucket" }\n')
    cfg.write_text(MINIMAL.replace('backend = "local"\n', 'backend = "local"\n' + creds, 1))
    r = check_config(cfg)
    assert r.returncode == EX_USAGE, r
    first = r.stderr.splitlines()[0]
    assert 'buckets[0] ("data")' in first and "url: carries a password" in first, r.stderr
    assert "hunter2-0000" not in r.stderr.splitlines()[0]


def test_check_config_syntax_error_shows_line_and_column(tmp_path):
    cfg = broken(tmp_path, 'principal = "alice"', 'principal = "alice')
    r = check_config(cfg)
    assert r.returncode == EX_USAGE
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"s3gate: invalid config {cfg}:13:"), r.stderr
    assert lines[2] == '13 | principal = "alice', r.stderr


def test_check_config_refuses_an_empty_file(tmp_path):
    cfg = tmp_path / "empty.toml"
    cfg.write_text("# nothing yet\n")
    r = check_config(cfg)
    assert r.returncode == EX_USAGE
    assert r.stderr.startswith(f"s3gate: invalid config {cfg}: the file configures nothing"), r.stderr
    assert "[[backends]]" in r.stderr and 'README.md, "Configuration"' in r.stderr


def test_check_config_warns_on_a_rule_for_no_configured_bucket(tmp_path):
    cfg = broken(tmp_path, 'resources = ["data", "data/*"]', 'resources = ["data", "dta/*"]')
    r = check_config(cfg)
    assert r.returncode == 0, r.stderr
    assert r.stderr == (f'warning: {cfg}:18:22: rules[0] (r001): resource "dta/*" names no configured bucket'
                        " (buckets: data)\n")


def test_check_config_unreadable_file(tmp_path):
    r = check_config(tmp_path / "missing.toml")
    assert r.returncode == EX_USAGE
    assert "cannot read" in r.stderr and "missing.toml" in r.stderr


def test_serve_reports_the_same_located_error(tmp_path):
    cfg = broken(tmp_path, '"s3:GetObject"', '"s3:GetObjekt"')
    ready = tmp_path / "ready.json"
    r = subprocess.run([str(gateway_bin()), "serve", "--config", str(cfg), "--ready-file", str(ready)],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == EX_USAGE, r.stderr
    assert (f's3gate: invalid config {cfg}:17:12: rules[0] (r001): action "s3:GetObjekt" is not an S3 action'
            in r.stderr), r.stderr
    assert not ready.exists()


def test_controlplane_reports_the_same_located_error(tmp_path):
    cfg = broken(tmp_path, 'endpoint = "http://127.0.0.1:9"\n', "")
    r = subprocess.run([str(gateway_bin()), "controlplane", "--config", str(cfg), "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == EX_USAGE, r.stderr
    assert f'{cfg}:2:1: backends[0] ("local"): missing field `endpoint`' in r.stderr, r.stderr


def test_admin_api_refuses_an_unknown_action(backend, tmp_path):
    keys = make_keys()
    cfg = tmp_path / "admin.toml"
    cfg.write_text(render_config(backend, keys, unused_port()))
    token = "admin-" + uuid.uuid4().hex
    env = gateway_env(backend, keys, "info", S3GATE_ADMIN_TOKEN=token)
    ready = tmp_path / "admin.ready.json"
    argv = [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--ready-file", str(ready),
            "--grpc-listen", "127.0.0.1:0"]
    proc, grpc_addr = start_with_ready_file("s3gate-admin-config", argv, ready, "grpc", tmp_path / "admin.log", env)
    try:
        def admin(*args):
            return subprocess.run([str(gateway_bin()), "admin", "--control-plane", f"http://{grpc_addr}", "--json", *args],
                                  capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)

        def put(rule_id, action):
            return admin("rules", "put", "--id", rule_id, "--effect", "allow", "--principal", "bob",
                         "--action", action, "--resource", "data/*")

        def refused(r) -> str:
            """The refusal as the CLI printed it, unquoted (it may show the
            server's message as a quoted string)."""
            assert r.returncode != 0, r.stdout
            return r.stderr.replace('\\"', '"')

        err = refused(put("typo", "s3:GetObjekt"))
        assert 'rule "typo": action "s3:GetObjekt" is not an S3 action s3gate authorizes' in err, err
        assert 'did you mean "s3:GetObject"?' in err, err
        err = refused(put("glob-typo", "s3:Gte*"))
        assert 'rule "glob-typo": action pattern "s3:Gte*" matches no S3 action' in err, err
        # globs that match known actions, and exact names, are accepted
        assert put("glob", "s3:Get*").returncode == 0
        assert put("exact", "s3:GetObjectVersion").returncode == 0
        listed = admin("rules", "list")
        assert listed.returncode == 0, listed.stderr
        ids = {r["id"] for r in json.loads(listed.stdout)}
        assert {"glob", "exact"} <= ids and not {"typo", "glob-typo"} & ids
    finally:
        proc.stop()
