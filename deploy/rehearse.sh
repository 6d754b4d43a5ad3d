#!/usr/bin/env bash
# Rehearses deploy/docker-compose.yml on 127.0.0.1 with real processes (no
# container engine runs here): a private redis-server, the S3 backend
# (s3s-fs), control planes cp1 and cp2 sharing the Redis, data planes dp1 and
# dp2, haproxy in front of them with the compose stack's /readyz health
# checks, and Prometheus scraping every s3gate process's /metrics.
#
# Commands and config files are the compose stack's own (docker-compose.yml,
# compose/haproxy.cfg, compose/prometheus.yml, compose/s3gate.toml) with
# container addresses rewritten to loopback ones by deploy/rehearse.py. Left
# out: the OTel Collector (--otlp-endpoint is dropped; tests/e2e covers
# traces) and Prometheus's scrape of it.
#
# Under boto3 load through haproxy (PUTs with Content-MD5, GETs compared by
# SHA-256, standard retries) it kills -9 dp1, then cp1, then starts dp1 again
# (its cold caches filled from cp2 alone) and cp1 again, and asserts:
#   - haproxy takes dp1 out and puts it back through its /readyz checks;
#   - dp2 stays ready while cp1 is down;
#   - no request failed beyond the SDK's retries;
#   - every object PUT reads back identical, through the gateway and on disk;
#   - Prometheus's API returns s3gate_requests_total of both data planes and
#     s3gate_build_info of all four processes.
# Every process is stopped on exit. About 25 seconds.
#
# Needs: target/release/s3gate (or S3GATE_BIN), s3s-fs, redis-server and
# redis-cli, haproxy, prometheus and promtool (Debian), curl, python3 with
# boto3 and PyYAML (tests/e2e/requirements.txt). .ci/run installs them.
# REHEARSE_KEEP=1 keeps the work directory (logs, configs) after a pass.
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$DEPLOY")
BIN=${S3GATE_BIN:-$REPO/target/release/s3gate}
[[ $BIN == /* ]] || BIN=$REPO/$BIN
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3gate-rehearse.XXXXXX")

say() { printf 'rehearse [%3ss]: %s\n' "$SECONDS" "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }
helper() { "$PY" "$DEPLOY/rehearse.py" "$@"; }

# haproxy, prometheus: /usr/sbin is not on every user's PATH.
tool() {
    local t
    for t in "$(command -v "$1" 2>/dev/null)" "/usr/sbin/$1" "/usr/bin/$1"; do
        if [[ -n $t && -x $t ]]; then echo "$t"; return; fi
    done
    die "$1 is not installed (.ci/run installs it)"
}
[[ -x $BIN ]] || die "no s3gate binary at $BIN: cargo build --release --bin s3gate, or set S3GATE_BIN"
S3S_FS=$(tool s3s-fs)
REDIS_SERVER=$(tool redis-server)
REDIS_CLI=$(tool redis-cli)
HAPROXY=$(tool haproxy)
PROMETHEUS=$(tool prometheus)
PROMTOOL=$(tool promtool)
tool curl >/dev/null

# ------------------------------------------------------------------ processes
declare -A PID

start() {  # NAME ARGV...: runs in the background, output to $WORK/NAME.log
    local name=$1
    shift
    "$@" >>"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
}

cleanup() {
    local rc=$? name alive
    trap - EXIT INT TERM
    for name in "${!PID[@]}"; do kill -TERM "${PID[$name]}" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for name in "${!PID[@]}"; do kill -0 "${PID[$name]}" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for name in "${!PID[@]}"; do kill -KILL "${PID[$name]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if ((rc != 0)); then
        for f in "$WORK"/*.log; do
            [[ -f $f ]] || continue
            echo "----- $(basename "$f"), last 30 lines" >&2
            tail -n 30 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2
        done
        say "FAILED; logs and configs in $WORK" >&2
    elif [[ -n ${REHEARSE_KEEP:-} ]]; then
        say "logs and configs in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_until() {  # WHAT TIMEOUT_S PROCESS CMD...: polls CMD; fails early if PROCESS died
    local what=$1 timeout=$2 name=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [[ -n $name ]] && ! kill -0 "${PID[$name]}" 2>/dev/null; then
            die "$name exited while waiting for $what"
        fi
        ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
        sleep 0.05
    done
}

field() {  # FILE NAME: an address in an s3gate --ready-file ({"s3": "127.0.0.1:PORT", ...})
    sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1" 2>/dev/null
}
has_field() { [[ -n $(field "$1" "$2") ]]; }
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
randhex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
compose_argv() {  # SERVICE ARGS...: the service's compose command, rewritten, into $argv
    helper argv "$@" >"$WORK/argv.txt" || die "cannot rewrite the command of $1"
    mapfile -t argv <"$WORK/argv.txt"
}

# Free ports for what cannot bind port 0 and report it. s3gate processes
# bind port 0 and write their addresses to --ready-file.
read -r P_REDIS P_BACKEND P_LB P_STATS P_PROM < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
')

# The compose stack's secrets, fresh for this run (the compose file's are public).
export S3GATE_MASTER_KEY S3GATE_ADMIN_TOKEN S3GATE_CLUSTER_TOKEN BACKEND_SECRET_KEY DEMO_SECRET_KEY
S3GATE_MASTER_KEY=$("$BIN" gen-master-key)
S3GATE_ADMIN_TOKEN=$(randhex 24)
S3GATE_CLUSTER_TOKEN=$(randhex 24)
BACKEND_SECRET_KEY=$(randhex 20)
DEMO_SECRET_KEY=$(randhex 20)
export S3GATE_LOG=${S3GATE_LOG:-info}

say "work directory $WORK"

# ------------------------------------------------------------------ redis, backend
start redis "$REDIS_SERVER" --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no \
    --dir "$WORK" --protected-mode yes --daemonize no
wait_until "redis to answer PING" 20 redis sh -c "'$REDIS_CLI' -h 127.0.0.1 -p $P_REDIS ping | grep -q PONG"

mkdir -p "$WORK/backend/demo"  # the compose image's /data/demo
compose_argv backend "0.0.0.0=127.0.0.1" "9000=$P_BACKEND" \
    "\${BACKEND_SECRET_KEY:-dev-only-backend-secret}=$BACKEND_SECRET_KEY" "/data=$WORK/backend"
start backend "$S3S_FS" "${argv[@]}"
wait_until "s3s-fs to listen on $P_BACKEND" 20 backend tcp_open "$P_BACKEND"
helper seed "$WORK/s3gate.toml" "http://backend:9000=http://127.0.0.1:$P_BACKEND"
say "redis on $P_REDIS, s3s-fs on $P_BACKEND"

# ------------------------------------------------------------------ control planes
start_cp() {  # NAME GRPC_ADDR ADMIN_ADDR (port 0 for any)
    local name=$1
    rm -f "$WORK/$name.ready.json"
    compose_argv "$name" "redis://redis:6379/=redis://127.0.0.1:$P_REDIS/" \
        "/etc/s3gate/s3gate.toml=$WORK/s3gate.toml" "0.0.0.0:9090=$2" "0.0.0.0:9100=$3" --drop=--otlp-endpoint
    start "$name" "$BIN" "${argv[@]}" --ready-file "$WORK/$name.ready.json"
}
wait_cp() {
    local name=$1
    wait_until "$name's ready file" 30 "$name" has_field "$WORK/$name.ready.json" admin
    wait_until "$name's /readyz" 30 "$name" http_ok "http://$(field "$WORK/$name.ready.json" admin)/readyz"
}
# both at once against an empty Redis, as `docker compose up` starts them
start_cp cp1 127.0.0.1:0 127.0.0.1:0
start_cp cp2 127.0.0.1:0 127.0.0.1:0
wait_cp cp1
wait_cp cp2
CP1_GRPC=$(field "$WORK/cp1.ready.json" grpc) CP1_ADMIN=$(field "$WORK/cp1.ready.json" admin)
CP2_GRPC=$(field "$WORK/cp2.ready.json" grpc) CP2_ADMIN=$(field "$WORK/cp2.ready.json" admin)
say "cp1 gRPC $CP1_GRPC admin $CP1_ADMIN; cp2 gRPC $CP2_GRPC admin $CP2_ADMIN"

# ------------------------------------------------------------------ data planes
start_dp() {  # NAME S3_ADDR ADMIN_ADDR (port 0 for any)
    local name=$1
    rm -f "$WORK/$name.ready.json"
    compose_argv "$name" "http://cp1:9090=http://$CP1_GRPC" "http://cp2:9090=http://$CP2_GRPC" \
        "0.0.0.0:9080=$2" "0.0.0.0:9100=$3" --drop=--otlp-endpoint
    start "$name" "$BIN" "${argv[@]}" --ready-file "$WORK/$name.ready.json"
}
wait_dp() {
    local name=$1
    wait_until "$name's ready file" 30 "$name" has_field "$WORK/$name.ready.json" admin
    wait_until "$name's /readyz" 30 "$name" http_ok "http://$(field "$WORK/$name.ready.json" admin)/readyz"
}
start_dp dp1 127.0.0.1:0 127.0.0.1:0
start_dp dp2 127.0.0.1:0 127.0.0.1:0
wait_dp dp1
wait_dp dp2
DP1_S3=$(field "$WORK/dp1.ready.json" s3) DP1_ADMIN=$(field "$WORK/dp1.ready.json" admin)
DP2_S3=$(field "$WORK/dp2.ready.json" s3) DP2_ADMIN=$(field "$WORK/dp2.ready.json" admin)
say "dp1 S3 $DP1_S3 admin $DP1_ADMIN; dp2 S3 $DP2_S3 admin $DP2_ADMIN"

# ------------------------------------------------------------------ haproxy
helper haproxy "$WORK/haproxy.cfg" --bind ":9080=127.0.0.1:$P_LB" --bind ":8404=127.0.0.1:$P_STATS" \
    --server "dp1=$DP1_S3,${DP1_ADMIN##*:}" --server "dp2=$DP2_S3,${DP2_ADMIN##*:}"
"$HAPROXY" -c -q -f "$WORK/haproxy.cfg" || die "haproxy -c refused $WORK/haproxy.cfg"
start haproxy "$HAPROXY" -db -f "$WORK/haproxy.cfg"
STATS="http://127.0.0.1:$P_STATS/stats"
helper haproxy-state --stats "$STATS" --server dp1 --state UP
helper haproxy-state --stats "$STATS" --server dp2 --state UP

# ------------------------------------------------------------------ prometheus
helper prometheus "$WORK/prometheus.yml" --skip-job otel-collector \
    --target "cp1:9100=$CP1_ADMIN" --target "cp2:9100=$CP2_ADMIN" \
    --target "dp1:9100=$DP1_ADMIN" --target "dp2:9100=$DP2_ADMIN" --target "haproxy:8404=127.0.0.1:$P_STATS"
"$PROMTOOL" check config "$WORK/prometheus.yml" >/dev/null || die "promtool refused $WORK/prometheus.yml"
start prometheus "$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus" \
    --web.listen-address="127.0.0.1:$P_PROM"
wait_until "Prometheus to be ready" 30 prometheus http_ok "http://127.0.0.1:$P_PROM/-/ready"
say "haproxy on $P_LB (stats $P_STATS), Prometheus on $P_PROM"

# ------------------------------------------------------------------ load and failures
STOP=$WORK/load.stop
start driver "$PY" "$DEPLOY/rehearse.py" drive --endpoint "http://127.0.0.1:$P_LB" \
    --access-key S3GATEDEMO0001 --secret-env DEMO_SECRET_KEY --backend-root "$WORK/backend" \
    --stop-file "$STOP" --report "$WORK/load.json" --max-seconds 60
load_running() { kill -0 "${PID[driver]}" 2>/dev/null || die "the load driver stopped early"; }
readyz() { curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/readyz" || true; }

sleep 4
load_running
say "kill -9 dp1"
kill -KILL "${PID[dp1]}"
helper haproxy-state --stats "$STATS" --server dp1 --state DOWN --timeout 10
sleep 1
load_running
say "kill -9 cp1"
kill -KILL "${PID[cp1]}"
sleep 1
code=$(readyz "$DP2_ADMIN")
[[ $code == 200 ]] || die "dp2's /readyz answered $code while cp2 was still up"
say "dp1 again, on its old addresses; its caches are cold and cp1 is down"
start_dp dp1 "$DP1_S3" "$DP1_ADMIN"
wait_dp dp1
helper haproxy-state --stats "$STATS" --server dp1 --state UP --timeout 15
sleep 3
load_running
code=$(readyz "$DP2_ADMIN")
[[ $code == 200 ]] || die "dp2's /readyz answered $code while cp2 was up"
say "cp1 again, on its old addresses"
start_cp cp1 "$CP1_GRPC" "$CP1_ADMIN"
wait_cp cp1
sleep 3
load_running
touch "$STOP"
say "load stopping; reading every object back"
if ! wait "${PID[driver]}"; then
    unset 'PID[driver]'
    cat "$WORK/driver.log" >&2
    die "the load saw failures or lost objects"
fi
unset 'PID[driver]'
cat "$WORK/driver.log"

# ------------------------------------------------------------------ Prometheus holds the series
helper check-prometheus --url "http://127.0.0.1:$P_PROM" \
    --instance "$CP1_ADMIN=cp1" --instance "$CP2_ADMIN=cp2" --instance "$DP1_ADMIN=dp1" --instance "$DP2_ADMIN=dp2" \
    --dataplane dp1 --dataplane dp2
say "passed"
