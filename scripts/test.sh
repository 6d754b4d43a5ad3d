#!/usr/bin/env bash
# The test command: format check, build, Rust tests, clippy, then the end-to-end suite against real
# processes (s3s-fs, s3gate, aws cli, boto3, rclone, s3cmd).
# Needs: cargo and cc, python3 with tests/e2e/requirements.txt, the SDK (sdk/python) and venv support, s3s-fs, rclone,
# s3cmd, redis-server, curl (.ci/run installs them), and PyPI: tests/e2e/test_quickstart.py runs
# scripts/quickstart.sh, which installs the aws cli and boto3 into a venv of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo build --release --bin s3gate
cargo test --release --workspace
# Release profile: reuses what the two commands above built.
cargo clippy --release --workspace --all-targets -- -D warnings
# The Python plugin SDK (sdk/python, pip-installed by .ci/run).
python3 -m pytest sdk/python/tests -q
python3 -m pytest tests/e2e -q -ra "$@"
