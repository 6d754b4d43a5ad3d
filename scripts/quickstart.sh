#!/usr/bin/env bash
# Quickstart: a local S3 server (s3s-fs) with s3gate in front of it.
#
#   bash scripts/quickstart.sh
#
# 1. checks its prerequisites: cargo, a C toolchain (cc), python3 able to make
#    venvs; as root on Debian/Ubuntu it apt-get installs build-essential and
#    python3-venv when missing, otherwise it says what to install;
# 2. installs s3s-fs (the backend) with `cargo install` into ~/.cargo/bin if it
#    is not on PATH, and builds target/release/s3gate;
# 3. installs the aws cli and boto3 (scripts/quickstart-requirements.txt) from
#    PyPI into a venv in the state dir, once;
# 4. starts s3s-fs and s3gate (S3, plus the Admin API over gRPC) on 127.0.0.1,
#    puts s3://demo/welcome.txt through s3gate as a check, prints commands to
#    try, and stays in the foreground until Ctrl-C, which stops both.
#
# State lives in ./.quickstart/ (gitignored): keys.env and admin-token (made
# once, reused by every run while they exist), s3gate.toml (rewritten each
# run), aws-config, venv/, data/ (the objects), s3gate.log, s3s-fs.log.
#
# Optional environment:
#   S3GATE_QUICKSTART_DIR           the state dir (default: .quickstart in the repo)
#   S3GATE_QUICKSTART_PORT          s3gate's S3 port (default 9080)
#   S3GATE_QUICKSTART_ADMIN_PORT    the Admin API's gRPC port (default 9090)
#   S3GATE_QUICKSTART_BACKEND_PORT  s3s-fs's port (default 9000)
#       A default port that is taken is replaced by a free one; 0 means any
#       free port; a port set explicitly must be free.
#   S3GATE_BIN                      an s3gate binary to run instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'quickstart: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

APT_UPDATED=
# apt_install WHY PACKAGE...: as root with apt-get, install the packages;
# otherwise say what to install and stop.
apt_install() {
    local why="$1"
    shift
    if [[ $(id -u) == 0 ]] && have apt-get; then
        say "$why: installing $* with apt-get"
        if [[ -z $APT_UPDATED ]]; then
            apt-get update -qq
            APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        die "$why: install $* first (Debian/Ubuntu: \`sudo apt-get install $*\`), then run this again"
    fi
}

# ----------------------------------------------------------------- prerequisites

have python3 || apt_install "python3 is needed" python3

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
need_cargo() {
    have cargo || die "cargo is missing: install Rust with rustup (https://rustup.rs), then open a new shell or run \`. \"\$HOME/.cargo/env\"\`"
    # rustc links with the system's cc; without it every build fails at the first build script.
    have cc || apt_install "cargo needs a C compiler and linker (cc)" build-essential
}

if ! have s3s-fs; then
    need_cargo
    say "installing s3s-fs 0.14.1 with cargo into $CARGO_BIN (the S3 server used as backend; a few minutes)"
    cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
S3S_FS="$(command -v s3s-fs)"

if [[ -n ${S3GATE_BIN:-} ]]; then
    [[ -x $S3GATE_BIN && -f $S3GATE_BIN ]] || die "S3GATE_BIN=$S3GATE_BIN is not an executable file"
    BIN="$(cd "$(dirname "$S3GATE_BIN")" && pwd)/$(basename "$S3GATE_BIN")"
    say "using $BIN (from S3GATE_BIN; not building)"
else
    need_cargo
    say "building s3gate (cargo build --release; the first build takes several minutes)"
    cargo build --release --bin s3gate
    BIN="${CARGO_TARGET_DIR:-target}/release/s3gate"
    BIN="$(cd "$(dirname "$BIN")" && pwd)/s3gate"
fi

# ----------------------------------------------------------------- state dir

# Keys, tokens and the config are secrets: nothing in the state dir is for others.
umask 077
QS="${S3GATE_QUICKSTART_DIR:-$REPO/.quickstart}"
mkdir -p "$QS"
QS="$(cd "$QS" && pwd)"
if have flock; then
    exec 9>"$QS/lock"
    flock -n 9 || die "another quickstart is running with the state dir $QS; stop it first (Ctrl-C)"
fi
mkdir -p "$QS/data/demo"
rm -f "$QS/ready.json"

# ----------------------------------------------------------------- aws cli and boto3

VENV="$QS/venv"
REQS="$REPO/scripts/quickstart-requirements.txt"
AWS="$VENV/bin/aws"
if [[ -x $AWS && -x $VENV/bin/python ]] && cmp -s "$REQS" "$VENV/quickstart-requirements.txt"; then
    say "aws cli and boto3: reusing $VENV"
else
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian and Ubuntu ship venv support (ensurepip) in a separate package.
        apt_install "$(command -v python3) cannot create venvs" python3-venv
        python3 -c 'import ensurepip, venv' >/dev/null 2>&1 ||
            die "$(command -v python3) still cannot create venvs; put a python3 that can first on PATH"
    fi
    say "installing the aws cli and boto3 from PyPI into $VENV (pins in scripts/quickstart-requirements.txt; a minute or two)"
    python3 -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" ||
        die "pip could not install into $VENV (is PyPI reachable?)"
    cp "$REQS" "$VENV/quickstart-requirements.txt"
fi

# ----------------------------------------------------------------- keys

rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

KEYS="$QS/keys.env"
BACKEND_ACCESS_KEY='' BACKEND_SECRET_KEY='' CLIENT_ACCESS_KEY='' CLIENT_SECRET_KEY=''
if [[ -f $KEYS ]]; then
    # Read, not sourced: only these four names, only [A-Za-z0-9] values.
    while IFS='=' read -r name value; do
        case $name in
        BACKEND_ACCESS_KEY | BACKEND_SECRET_KEY | CLIENT_ACCESS_KEY | CLIENT_SECRET_KEY)
            if [[ $value =~ ^[A-Za-z0-9]+$ ]]; then printf -v "$name" '%s' "$value"; fi
            ;;
        esac
    done <"$KEYS"
fi
if [[ -n $BACKEND_ACCESS_KEY && -n $BACKEND_SECRET_KEY && -n $CLIENT_ACCESS_KEY && -n $CLIENT_SECRET_KEY ]]; then
    KEYS_NOTE="Keys: the same as last time, from $KEYS (delete it for new ones)."
else
    if [[ -e $KEYS || -e $QS/s3gate.toml ]]; then
        KEYS_NOTE="Keys: NEW KEYS ($KEYS was missing or incomplete): AWS_* variables exported for an earlier run no longer work."
    else
        KEYS_NOTE="Keys: new, kept in $KEYS and reused by later runs."
    fi
    BACKEND_ACCESS_KEY="QSBACKEND$(rand_hex 6 | tr a-f A-F)"
    BACKEND_SECRET_KEY="$(rand_hex 20)"
    CLIENT_ACCESS_KEY="S3GATE$(rand_hex 7 | tr a-f A-F)"
    CLIENT_SECRET_KEY="$(rand_hex 20)"
    cat >"$KEYS" <<KEYS
# scripts/quickstart.sh: the keys of this quickstart, reused by every run while this file exists
BACKEND_ACCESS_KEY=$BACKEND_ACCESS_KEY
BACKEND_SECRET_KEY=$BACKEND_SECRET_KEY
CLIENT_ACCESS_KEY=$CLIENT_ACCESS_KEY
CLIENT_SECRET_KEY=$CLIENT_SECRET_KEY
KEYS
fi

TOKEN_FILE="$QS/admin-token"
ADMIN_TOKEN=''
NEW_TOKEN=''
if [[ -f $TOKEN_FILE ]]; then ADMIN_TOKEN="$(tr -d '[:space:]' <"$TOKEN_FILE")"; fi
if [[ ! $ADMIN_TOKEN =~ ^[A-Za-z0-9]{16,}$ ]]; then
    ADMIN_TOKEN="$(rand_hex 24)"
    printf '%s\n' "$ADMIN_TOKEN" >"$TOKEN_FILE"
    NEW_TOKEN=1
fi

# ----------------------------------------------------------------- ports and config

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# choose_port VAR DEFAULT: the port set in $VAR, else DEFAULT unless it is
# taken; 0 stands for "any free port".
choose_port() {
    local var="$1" default="$2" port="${!1:-}"
    if [[ -z $port ]]; then
        port="$default"
        if port_in_use "$port"; then
            say "port $port is taken; using a free one (set $var to choose)" >&2
            port=0
        fi
    fi
    [[ $port =~ ^[0-9]+$ ]] || die "$var=$port is not a port number"
    echo "$port"
}
BACKEND_PORT="$(choose_port S3GATE_QUICKSTART_BACKEND_PORT 9000)"
if [[ $BACKEND_PORT == 0 ]]; then BACKEND_PORT="$(free_port)"; fi
S3_PORT="$(choose_port S3GATE_QUICKSTART_PORT 9080)"
ADMIN_PORT="$(choose_port S3GATE_QUICKSTART_ADMIN_PORT 9090)"

cat >"$QS/s3gate.toml" <<TOML
# Written by scripts/quickstart.sh at every start (keys from keys.env): edit a copy.
listen = "127.0.0.1:$S3_PORT"
region = "us-east-1"

[[backends]]
name = "local"
endpoint = "http://127.0.0.1:$BACKEND_PORT"
region = "us-east-1"
addressing_style = "path"
access_key = "$BACKEND_ACCESS_KEY"
secret_key = "$BACKEND_SECRET_KEY"

[[buckets]]
name = "demo"
backend = "local"

[[keys]]
access_key = "$CLIENT_ACCESS_KEY"
secret_key = "$CLIENT_SECRET_KEY"
principal = "demo-user"

# Least privilege: demo-user may list the bucket and read, write and delete its
# objects (multipart uploads included), but not create or delete buckets, nor
# change any bucket's settings.
[[rules]]
effect = "allow"
principals = ["demo-user"]
actions = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
resources = ["demo"]

[[rules]]
effect = "allow"
principals = ["demo-user"]
actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
resources = ["demo/*"]
TOML

# The aws cli's settings for the examples: presigned URLs must be SigV4, which
# aws s3 presign (cli v1) only makes with s3.signature_version = s3v4.
cat >"$QS/aws-config" <<'AWSCONFIG'
# Written by scripts/quickstart.sh: the aws cli settings of the printed examples
[default]
region = us-east-1
s3 =
    signature_version = s3v4
    addressing_style = path
AWSCONFIG

# ----------------------------------------------------------------- processes

PIDS=()
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
    local rc=$? pid alive
    set +e
    trap - EXIT INT TERM HUP
    # Output piped to a reader that Ctrl-C has killed (| tee) must not stop the cleanup.
    trap '' PIPE
    if ((${#PIDS[@]})); then
        say "stopping s3gate and s3s-fs"
        kill -TERM "${PIDS[@]}" 2>/dev/null
        for _ in $(seq 100); do
            alive=0
            for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        kill -KILL "${PIDS[@]}" 2>/dev/null
        wait "${PIDS[@]}" 2>/dev/null
        say "stopped"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# spawn LOG COMMAND...: start COMMAND in the background with its output in LOG.
# setpriv makes it get SIGTERM should this script die without cleaning up
# (SIGKILL); fd 9 (the state dir's lock) is not passed on.
spawn() {
    local log="$1"
    shift
    if have setpriv; then
        setpriv --pdeathsig TERM -- "$@" >"$log" 2>&1 9>&- &
    else
        "$@" >"$log" 2>&1 9>&- &
    fi
    PIDS+=("$!")
}
# wait_until WHAT LOG CONDITION...: poll CONDITION for 10 s while the process
# started last lives.
wait_until() {
    local what="$1" log="$2" pid="${PIDS[-1]}"
    shift 2
    for _ in $(seq 100); do
        if "$@"; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2
            die "$what exited while starting (log: $log)"
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2
    die "$what did not start within 10 s (log: $log)"
}

say "starting s3s-fs on 127.0.0.1:$BACKEND_PORT (objects in $QS/data, log $QS/s3s-fs.log)"
spawn "$QS/s3s-fs.log" "$S3S_FS" --host 127.0.0.1 --port "$BACKEND_PORT" \
    --access-key "$BACKEND_ACCESS_KEY" --secret-key "$BACKEND_SECRET_KEY" "$QS/data"
wait_until s3s-fs "$QS/s3s-fs.log" port_in_use "$BACKEND_PORT"

say "starting s3gate with the Admin API (log $QS/s3gate.log)"
# The admin token goes in the environment (--admin-token's twin), not on the
# command line where ps would show it.
S3GATE_ADMIN_TOKEN="$ADMIN_TOKEN" spawn "$QS/s3gate.log" "$BIN" serve --config "$QS/s3gate.toml" \
    --grpc-listen "127.0.0.1:$ADMIN_PORT" --ready-file "$QS/ready.json" --drain-timeout 5s
wait_until s3gate "$QS/s3gate.log" test -s "$QS/ready.json"
read -r S3_ADDR ADMIN_ADDR < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["s3"], r["grpc"])' "$QS/ready.json")
S3_URL="http://$S3_ADDR"

# The examples' own aws cli environment, clear of the caller's AWS settings.
aws_demo() {
    env -u AWS_PROFILE -u AWS_DEFAULT_PROFILE -u AWS_SESSION_TOKEN -u AWS_SECURITY_TOKEN \
        -u AWS_ENDPOINT_URL -u AWS_ENDPOINT_URL_S3 -u AWS_DEFAULT_REGION -u AWS_REGION \
        AWS_ACCESS_KEY_ID="$CLIENT_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$CLIENT_SECRET_KEY" \
        AWS_CONFIG_FILE="$QS/aws-config" AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        "$AWS" --endpoint-url "$S3_URL" "$@"
}
say "checking: aws s3 cp welcome.txt s3://demo/welcome.txt through s3gate"
printf 'Hello from s3gate: scripts/quickstart.sh put this object through the gateway.\n' >"$QS/welcome.txt"
aws_demo s3 cp --only-show-errors "$QS/welcome.txt" s3://demo/welcome.txt ||
    die "the check failed: see $QS/s3gate.log and $QS/s3s-fs.log"
PRESIGNED="$(aws_demo s3 presign s3://demo/welcome.txt --expires-in 3600)"
[[ $PRESIGNED == *X-Amz-Algorithm=AWS4-HMAC-SHA256* ]] ||
    die "aws s3 presign made a URL that is not SigV4 despite $QS/aws-config: $PRESIGNED"

# ----------------------------------------------------------------- what to try

if [[ -n $NEW_TOKEN ]]; then
    TOKEN_NOTE="Admin token: $ADMIN_TOKEN
  (new: printed this once; kept in $TOKEN_FILE, which the examples read)"
else
    TOKEN_NOTE="Admin token: the same as last time, in $TOKEN_FILE."
fi

# The printed commands, with paths quoted for the shell (unchanged unless they
# hold spaces or other special characters).
printf -v Q_AWS '%q' "$AWS"
printf -v Q_PY '%q' "$VENV/bin/python"
printf -v Q_BIN '%q' "$BIN"
printf -v Q_AWSCONFIG '%q' "$QS/aws-config"
printf -v Q_TOKEN_FILE '%q' "$TOKEN_FILE"

cat <<MSG

s3gate is running: S3 on $S3_URL (bucket "demo"), Admin API (gRPC) on $ADMIN_ADDR.
Backend: s3s-fs on 127.0.0.1:$BACKEND_PORT, keeping the objects in $QS/data/demo.
$KEYS_NOTE
$TOKEN_NOTE
The demo key (principal demo-user) may list "demo" and read, write and delete
its objects; it may not create or delete buckets.

Try these in another terminal; each block can be pasted whole.

# 1. The aws cli (installed in $VENV)
unset AWS_PROFILE AWS_SESSION_TOKEN
export AWS_ACCESS_KEY_ID=$CLIENT_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$CLIENT_SECRET_KEY
export AWS_CONFIG_FILE=$Q_AWSCONFIG   # region us-east-1, SigV4 (s3v4), path-style
echo hello > hello.txt
$Q_AWS --endpoint-url $S3_URL s3 cp hello.txt s3://demo/hello.txt
$Q_AWS --endpoint-url $S3_URL s3 ls s3://demo
$Q_AWS --endpoint-url $S3_URL s3 cp s3://demo/hello.txt -

# 2. boto3, with SigV4 and path-style addressing
$Q_PY - <<'EOF'
import boto3
from botocore.config import Config

s3 = boto3.client(
    "s3",
    endpoint_url="$S3_URL",
    region_name="us-east-1",
    aws_access_key_id="$CLIENT_ACCESS_KEY",
    aws_secret_access_key="$CLIENT_SECRET_KEY",
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
)
s3.put_object(Bucket="demo", Key="boto3.txt", Body=b"hello from boto3\n")
for obj in s3.list_objects_v2(Bucket="demo").get("Contents", []):
    print(obj["Key"], obj["Size"])
print(s3.generate_presigned_url("get_object", Params={"Bucket": "demo", "Key": "boto3.txt"}, ExpiresIn=3600))
EOF

# 3. A presigned URL for curl or a browser, valid for an hour. s3gate takes SigV4 URLs only: the
#    aws-config above sets s3.signature_version = s3v4 (without it, aws s3 presign makes SigV2 URLs: refused, 400).
curl '$PRESIGNED'
#    and a fresh one (with the exports of block 1):
curl "\$($Q_AWS --endpoint-url $S3_URL s3 presign s3://demo/welcome.txt --expires-in 3600)"

# 4. Buckets are off limits. This would delete every object in demo, then be refused
#    (AccessDenied, 403) when it deletes the bucket itself, which stays:
#    $Q_AWS --endpoint-url $S3_URL s3 rb s3://demo --force

# 5. The Admin API. Changes last until Ctrl-C: each start begins again from $QS/s3gate.toml.
export S3GATE_CONTROL_PLANE=http://$ADMIN_ADDR
export S3GATE_ADMIN_TOKEN="\$(cat $Q_TOKEN_FILE)"
$Q_BIN admin status
$Q_BIN admin keys list
$Q_BIN admin rules list
$Q_BIN admin explain --access-key $CLIENT_ACCESS_KEY --action s3:DeleteBucket --bucket demo

Config: $QS/s3gate.toml. Logs: $QS/s3gate.log, $QS/s3s-fs.log.
Press Ctrl-C to stop s3gate and s3s-fs.
MSG

# Stay in the foreground until Ctrl-C, or until either process exits.
set +e
wait -n "${PIDS[@]}"
say "a process exited on its own; see $QS/s3gate.log and $QS/s3s-fs.log" >&2
exit 1
