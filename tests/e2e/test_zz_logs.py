"""Runs last (file order): the session gateway's log, after everything above,
holds none of the secrets. The gateway fixture checks again after shutdown."""

from conftest import leaked_secrets


def test_log_is_not_empty(gateway):
    # S3GATE_LOG=debug: the gateway logs requests; an empty log would make the next test vacuous
    assert gateway.log_path.stat().st_size > 0


def test_no_secret_in_gateway_log(gateway):
    assert leaked_secrets(gateway) == [], f"secrets found in {gateway.log_path}"
