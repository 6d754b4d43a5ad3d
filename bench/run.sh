#!/usr/bin/env bash
# s3gate benchmark: direct-to-backend vs through s3gate, interleaved, same run.
#
#   bash bench/run.sh            # full run (3 rounds per scenario, ~15 minutes)
#   bash bench/run.sh --quick    # smoke test (1 round, a few seconds per scenario)
#   bash bench/run.sh --profile  # perf profile of s3gate under the S1 load (see BENCHMARKS.md)
#   bash bench/run.sh --help     # every option of bench/run.py (subsets, rounds, …)
#
# What it installs, only if missing:
#   - nginx-light (Debian package: the static upstream; has the dav module for PUT)
#   - s3s-fs 0.14.1 (crates.io, `cargo install`: the signature-verifying upstream)
#   - linux-perf is NOT installed; --profile needs `perf` on PATH.
# It builds target/release/s3gate and target/release/s3gate-loadgen, then
# hands over to bench/run.py. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "bench: installing nginx-light (Debian)" >&2
    apt-get install -y -q nginx-light >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; }
fi
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
    echo "bench: installing s3s-fs (crates.io)" >&2
    cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
if [ "$(getconf CLK_TCK)" != "100" ]; then
    echo "bench: CLK_TCK is $(getconf CLK_TCK), s3gate-loadgen assumes 100" >&2
    exit 2
fi

# The gateway as it ships (the `dist` profile: fat LTO, one codegen unit;
# several minutes the first time), the load generator as the tests build it.
if [ -z "${S3GATE_BIN:-}" ]; then
    cargo build --profile dist --bin s3gate
fi
cargo build --release --bin s3gate-loadgen
exec python3 bench/run.py "$@"
