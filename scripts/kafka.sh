#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, broker + controller) for development and tests, from the
# jars that kafka/pom.xml resolves from Maven Central. No Docker, no tarball.
#
#   scripts/kafka.sh jars    resolve and cache the jars in kafka/target/kafka-libs (idempotent)
#   scripts/kafka.sh up      format storage if new, start the broker, wait, print host:port
#   scripts/kafka.sh down    stop the broker (data kept: `up` resumes it)
#   scripts/kafka.sh purge   stop the broker and delete its home directory
#   scripts/kafka.sh status  print the bootstrap address if the broker runs, exit 1 if not
#
# Environment (all optional):
#   KAFKA_HOME_DIR         broker home: server.properties, data/, broker.pid, broker.log
#                          (default: .kafka in the repository, git-ignored)
#   KAFKA_PORT             client listener port (default 9092)
#   KAFKA_CONTROLLER_PORT  controller listener port (default 9093)
#   KAFKA_HEAP_OPTS        JVM heap (default -Xmx512m -Xms128m: the machine has 2 cores)
#   KAFKA_START_TIMEOUT_S  how long `up` waits for the broker (default 90)
#   KAFKA_SASL_PORT        if set, also a SASL_PLAINTEXT listener on this port with
#                          SCRAM-SHA-512, for KAFKA_SCRAM_USER / KAFKA_SCRAM_PASSWORD
#                          (created at format time; default user gpuledger). Loopback only:
#                          a real cluster uses SASL_SSL.
#
# The test fixture (tests/integration/conftest.py) calls this same script with a temporary
# home and OS-assigned ports, so the broker the tests use is the one `make kafka-up` gives.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIBS="$ROOT/kafka/target/kafka-libs"
STAMP="$LIBS/.resolved"
HOME_DIR="${KAFKA_HOME_DIR:-$ROOT/.kafka}"
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9093}"
HEAP="${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m}"
TIMEOUT_S="${KAFKA_START_TIMEOUT_S:-90}"
SPORT="${KAFKA_SASL_PORT:-}"
SCRAM_USER="${KAFKA_SCRAM_USER:-gpuledger}"
PIDFILE="$HOME_DIR/broker.pid"
LOG="$HOME_DIR/broker.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

jars() {
    if [[ -f "$STAMP" && "$STAMP" -nt "$ROOT/kafka/pom.xml" ]] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
        return 0
    fi
    command -v mvn >/dev/null || die "Maven (mvn) is needed to resolve the Kafka jars (apt-get install maven)"
    command -v java >/dev/null || die "Java 17+ is needed to run the Kafka broker (apt-get install openjdk-17-jre-headless)"
    rm -rf "$LIBS"
    local mvn_log
    mvn_log="$(mktemp)"
    if ! (cd "$ROOT/kafka" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
        -DoutputDirectory=target/kafka-libs -DincludeScope=runtime) >"$mvn_log" 2>&1; then
        cat "$mvn_log" >&2
        rm -f "$mvn_log"
        die "could not resolve the Kafka jars with Maven (see above)"
    fi
    rm -f "$mvn_log"
    compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null || die "Maven ran but no kafka_2.13 jar in $LIBS"
    touch "$STAMP"
}

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_properties() {
    cat >"$HOME_DIR/server.properties" <<EOF
# Written by scripts/kafka.sh: single node, KRaft, broker + controller, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$HOME_DIR/data
# gpuledger creates its topics itself (streams/kafka.py); a typo must not create one.
auto.create.topics.enable=false
num.partitions=1
# One node: every internal topic with replication factor 1.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.retention.hours=168
EOF
    if [[ -n "$SPORT" ]]; then
        # a SCRAM listener for clients; the broker still talks to itself over PLAINTEXT
        sed -i -e "s|^listeners=\(.*\)$|listeners=\1,SASL_PLAINTEXT://127.0.0.1:$SPORT|" \
            -e "s|^advertised.listeners=\(.*\)$|advertised.listeners=\1,SASL_PLAINTEXT://127.0.0.1:$SPORT|" \
            -e "s|^listener.security.protocol.map=\(.*\)$|listener.security.protocol.map=\1,SASL_PLAINTEXT:SASL_PLAINTEXT|" \
            "$HOME_DIR/server.properties"
        cat >>"$HOME_DIR/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
    fi
}

up() {
    jars
    if pid="$(running_pid)"; then
        echo "127.0.0.1:$(sed -n 's/^listeners=PLAINTEXT:\/\/127.0.0.1:\([0-9]*\),.*/\1/p' "$HOME_DIR/server.properties")"
        return 0
    fi
    mkdir -p "$HOME_DIR"
    local cp="$LIBS/*"
    if [[ ! -f "$HOME_DIR/data/meta.properties" ]]; then
        write_properties
        local cluster_id
        cluster_id="$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
        local scram=()
        if [[ -n "$SPORT" ]]; then
            [[ -n "${KAFKA_SCRAM_PASSWORD:-}" ]] || die "KAFKA_SASL_PORT needs KAFKA_SCRAM_PASSWORD"
            scram=(--add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
        fi
        java -Xmx256m -cp "$cp" -Dlog4j2.configurationFile="$ROOT/kafka/log4j2.properties" \
            kafka.tools.StorageTool format --standalone --cluster-id="$cluster_id" \
            -c "$HOME_DIR/server.properties" "${scram[@]}" >"$HOME_DIR/format.log" 2>&1 \
            || { cat "$HOME_DIR/format.log" >&2; die "formatting $HOME_DIR/data failed"; }
    fi
    # shellcheck disable=SC2086
    nohup java $HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$ROOT/kafka/log4j2.properties" \
        -cp "$cp" kafka.Kafka "$HOME_DIR/server.properties" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local deadline=$((SECONDS + TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if ! running_pid >/dev/null; then
            tail -n 60 "$LOG" >&2 || true
            die "the broker exited during start-up (log: $LOG)"
        fi
        if grep -q "Kafka Server started" "$LOG" 2>/dev/null \
            && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            echo "127.0.0.1:$PORT"
            return 0
        fi
        sleep 0.2
    done
    tail -n 60 "$LOG" >&2 || true
    down >/dev/null 2>&1 || true
    die "the broker did not answer within ${TIMEOUT_S}s (log: $LOG)"
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
    echo "kafka.sh: broker $pid did not stop in 30 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

case "${1:-}" in
    jars) jars ;;
    up) up ;;
    down) down ;;
    purge) down; rm -rf "$HOME_DIR" ;;
    status)
        running_pid >/dev/null || { echo "not running" >&2; exit 1; }
        echo "127.0.0.1:$(sed -n 's/^listeners=PLAINTEXT:\/\/127.0.0.1:\([0-9]*\),.*/\1/p' "$HOME_DIR/server.properties")"
        ;;
    *) echo "usage: $0 {jars|up|down|purge|status}" >&2; exit 2 ;;
esac
