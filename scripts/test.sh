#!/usr/bin/env bash
# The test command: build, Rust tests, then the end-to-end suite against real
# processes (s3s-fs, s3gate, aws cli, boto3, rclone, s3cmd).
# Needs: cargo, python3 with tests/e2e/requirements.txt, s3s-fs, rclone, s3cmd
# (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin s3gate
cargo test --release --workspace
python3 -m pytest tests/e2e -q -ra "$@"
