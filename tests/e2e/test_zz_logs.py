"""Runs last (file order): the session gateway's log, after everything above,
holds none of the secrets. The gateway fixture checks again after shutdown."""

import time
import urllib.error
import urllib.request

from conftest import leaked_secrets


def test_log_is_not_empty(gateway):
    # S3GATE_LOG=debug: the gateway logs requests; an empty log would make the next test vacuous.
    # One request of its own, so that this holds when the file runs alone too; the log thread
    # writes in batches, so its lines may land a moment after the response.
    try:
        urllib.request.urlopen(gateway.endpoint + "/", timeout=10)
    except urllib.error.HTTPError:
        pass  # anonymous, so refused: logged all the same
    deadline = time.monotonic() + 10
    while "request_id" not in gateway.log_path.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "request_id" in gateway.log_path.read_text(errors="replace")


def test_no_secret_in_gateway_log(gateway):
    assert leaked_secrets(gateway) == [], f"secrets found in {gateway.log_path}"
