#!/usr/bin/env bash
# A single-node S3-compatible object store (SeaweedFS `weed mini`) for development and tests,
# built from its Go module. No Docker, no downloaded binary.
#
#   scripts/s3.sh build    build and cache the `weed` binary (idempotent: a cached binary of the
#                          pinned release is kept; ~15 min on 2 cores the first time)
#   scripts/s3.sh up       start the server if it is not running, wait until S3 answers, print
#                          `export AWS_…=…` lines:   eval "$(scripts/s3.sh up)"
#   scripts/s3.sh down     stop the server (data kept: `up` resumes it)
#   scripts/s3.sh purge    stop the server and delete its home directory
#   scripts/s3.sh status   print the export lines if the server runs, exit 1 if not
#   scripts/s3.sh env      print the export lines of the running server (as `up` does)
#
# Environment (all optional):
#   GPULEDGER_CACHE     where the binary and its source are cached, outside the clone
#                       (default ~/.cache/gpuledger; the binary is <cache>/weed, ~230 MB)
#   S3_HOME_DIR         server home: data/, weed.pid, weed.log, ports, credentials
#                       (default .s3 in the repository, git-ignored)
#   S3_PORT             S3 port (default 8333). Every other port the server opens (master,
#                       volume, filer, admin and their gRPC ports) is a free port the OS hands
#                       out, so it runs beside Kafka and other services; WebDAV, the Iceberg
#                       and Lance catalogs and the legacy admin port are switched off.
#   S3_BUCKET           bucket created at start-up (default gpuledger)
#   S3_REGION           region the clients sign for (default us-east-1)
#   S3_ACCESS_KEY       access key of the server's admin identity (default gpuledger)
#   S3_SECRET_KEY       its secret; default: a random one made on the first `up` and kept in
#                       <home>/credentials (mode 600) so later `up`s give the same one
#   S3_START_TIMEOUT_S  how long `up` waits for S3 to answer (default 60)
#
# The test fixture (tests/s3_server.py) calls this same script with a temporary home and an
# OS-assigned S3 port, so the server the tests use is the one `make s3-up` gives.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${GPULEDGER_CACHE:-$HOME/.cache/gpuledger}"
WEED="$CACHE/weed"
MODULE="github.com/seaweedfs/seaweedfs"
VERSION="v0.0.0-20261109003541-7506e5f91cd6"  # pinned commit of the Go module
RELEASE="4.53"  # what `weed version` of that commit says; docker-compose.yml runs chrislusf/seaweedfs:<this>
HOME_DIR="${S3_HOME_DIR:-$ROOT/.s3}"
PORT="${S3_PORT:-8333}"
BUCKET="${S3_BUCKET:-gpuledger}"
REGION="${S3_REGION:-us-east-1}"
ACCESS_KEY="${S3_ACCESS_KEY:-gpuledger}"
TIMEOUT_S="${S3_START_TIMEOUT_S:-60}"
PIDFILE="$HOME_DIR/weed.pid"
LOG="$HOME_DIR/weed.log"
STATE="$HOME_DIR/server.env"   # port, bucket, region, access key of the running server
CREDENTIALS="$HOME_DIR/credentials"

die() { echo "s3.sh: $*" >&2; exit 1; }

cached() {
    # the binary is there and is the pinned release
    [[ -x "$WEED" ]] && "$WEED" version 2>/dev/null | grep " $RELEASE " >/dev/null
}

build() {
    if cached; then
        return 0
    fi
    command -v go >/dev/null || die "Go is needed to build SeaweedFS (https://go.dev/dl/; an older Go fetches the toolchain the module asks for)"
    mkdir -p "$CACHE"
    # one build at a time per cache (make test and a test session may both ask)
    exec 9>"$CACHE/build.lock"
    flock 9
    if cached; then
        return 0
    fi
    local work build_log started
    work="$(mktemp -d)"
    build_log="$CACHE/build.log"
    started=$SECONDS
    echo "s3.sh: building SeaweedFS $VERSION into $WEED (about 15 minutes on 2 cores the first time; log: $build_log)" >&2
    # `go install` refuses the module (it has replace directives): download it, copy the
    # source out of the read-only module cache, build there.
    if ! (
        set -e
        cd "$work"
        export GOFLAGS=-mod=mod
        go mod init gpuledger-weed-build >/dev/null 2>&1
        go mod download -json "$MODULE@$VERSION" >"$work/download.json"
        dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' "$work/download.json")"
        [[ -n "$dir" && -d "$dir" ]] || { cat "$work/download.json"; echo "no source directory in go mod download's answer"; exit 1; }
        rm -rf "$CACHE/seaweedfs-src"
        cp -r "$dir" "$CACHE/seaweedfs-src"
        chmod -R u+w "$CACHE/seaweedfs-src"
        cd "$CACHE/seaweedfs-src"
        go build -o "$WEED.tmp" ./weed
    ) >"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2
        rm -rf "$work" "$WEED.tmp"
        die "building SeaweedFS failed (log: $build_log)"
    fi
    rm -rf "$work"
    mv "$WEED.tmp" "$WEED"
    cached || die "built $WEED, but \`weed version\` does not say $RELEASE: update RELEASE in $0"
    echo "s3.sh: built $WEED in $((SECONDS - started)) s" >&2
}

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

free_ports() {
    # $1 distinct ports the OS hands out, all held at once so none repeats
    python3 - "$1" <<'EOF'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
for s in held:
    s.close()
EOF
}

ports_taken() {
    # the ones of the given ports that cannot be bound on 127.0.0.1 now
    python3 - "$@" <<'EOF'
import socket, sys
taken = []
for port in sys.argv[1:]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners do: TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:
            taken.append(port)
print(" ".join(taken))
EOF
}

secret_key() {
    if [[ -n "${S3_SECRET_KEY:-}" ]]; then
        echo "$S3_SECRET_KEY"
    elif [[ -f "$CREDENTIALS" ]]; then
        cat "$CREDENTIALS"
    else
        (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >"$CREDENTIALS")
        cat "$CREDENTIALS"
    fi
}

print_env() {
    # shellcheck disable=SC1090
    source "$STATE"
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_STATE_PORT"
    echo "export AWS_ACCESS_KEY_ID=$S3_STATE_ACCESS_KEY"
    echo "export AWS_SECRET_ACCESS_KEY=$(cat "$HOME_DIR/secret")"
    echo "export AWS_REGION=$S3_STATE_REGION"
    echo "export AWS_ALLOW_HTTP=true"
    echo "# bucket $S3_STATE_BUCKET: gpuledger --data-dir s3://$S3_STATE_BUCKET/<prefix>"
}

s3_call() {
    # METHOD PATH SECRET [curl args…]: the HTTP status of one signed request
    local method="$1" path="$2" secret="$3"
    shift 3
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X "$method" \
        --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$secret" "$@" \
        "http://127.0.0.1:$PORT/$path" 2>/dev/null || true
}

answers() {
    # S3 is up, the bucket exists, the credentials work, and an object can be written: the
    # first write makes the server grow its volumes, which takes a few seconds
    [[ "$(s3_call HEAD "$BUCKET" "$1" -I)" == 200 ]] || return 1
    [[ "$(s3_call PUT "$BUCKET/.s3.sh-probe" "$1" --data-binary ready -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")" == 200 ]] || return 1
    [[ "$(s3_call DELETE "$BUCKET/.s3.sh-probe" "$1")" == 204 ]]
}

up() {
    if running_pid >/dev/null; then
        print_env
        return 0
    fi
    build
    command -v curl >/dev/null || die "curl is needed to check that S3 answers (apt-get install curl)"
    mkdir -p "$HOME_DIR/data"
    local secret
    secret="$(secret_key)"
    # The master's raft state names its own address: a home keeps the ports it was made with,
    # or the volume server's topology no longer matches and no volume can grow.
    if [[ ! -f "$HOME_DIR/ports" ]]; then
        free_ports 9 >"$HOME_DIR/ports"
    fi
    local -a p
    read -r -a p <"$HOME_DIR/ports"
    local taken
    taken="$(ports_taken "${p[@]}")"
    [[ -z "$taken" ]] || die "port(s) $taken of $HOME_DIR/ports are in use by another process: stop it, or run '$0 purge' to start afresh (deletes the data)"
    # a port that is taken makes weed fail at once (explicit ports are never moved)
    local -a flags=(
        -dir="$HOME_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1
        -s3.port="$PORT" -s3.port.grpc="${p[0]}" -bucket="$BUCKET"
        -master.port="${p[1]}" -master.port.grpc="${p[2]}"
        -volume.port="${p[3]}" -volume.port.grpc="${p[4]}"
        -filer.port="${p[5]}" -filer.port.grpc="${p[6]}"
        -admin.port="${p[7]}" -admin.port.grpc="${p[8]}" -admin.port.legacy=0
        -webdav=false -s3.port.iceberg=0 -s3.port.lance=0
        -master.telemetry=false
    )
    : >"$LOG"
    (umask 077 && echo "$secret" >"$HOME_DIR/secret")
    cat >"$STATE" <<EOF
S3_STATE_PORT=$PORT
S3_STATE_BUCKET=$BUCKET
S3_STATE_REGION=$REGION
S3_STATE_ACCESS_KEY=$ACCESS_KEY
EOF
    echo "weed mini ${flags[*]}" >>"$LOG"
    AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$secret" \
        nohup "$WEED" mini "${flags[@]}" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local deadline=$((SECONDS + TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if ! running_pid >/dev/null; then
            tail -n 60 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            die "the S3 server exited during start-up (log: $LOG)"
        fi
        if answers "$secret"; then
            print_env
            return 0
        fi
        sleep 0.3
    done
    tail -n 60 "$LOG" >&2 || true
    down >/dev/null 2>&1 || true
    die "the S3 server did not answer on 127.0.0.1:$PORT within ${TIMEOUT_S}s (log: $LOG)"
}

down() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return 0; }
        sleep 0.1
    done
    echo "s3.sh: server $pid did not stop in 30 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

case "${1:-}" in
    build) build ;;
    up) up ;;
    down) down ;;
    purge) down; rm -rf "$HOME_DIR" ;;
    status|env)
        running_pid >/dev/null || { echo "not running" >&2; exit 1; }
        print_env
        ;;
    *) echo "usage: $0 {build|up|down|purge|status|env}" >&2; exit 2 ;;
esac
