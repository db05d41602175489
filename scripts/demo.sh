#!/usr/bin/env bash
# The mproxy demo pipeline, on loopback inside a private network namespace.
#
#   client --UDP--> proxy --UDP--> reverseproxy --multicast 239.255.77.18--> TCP client (socat or bash)
#                         \--multicast 239.255.0.1--> server (file)       \--> UDP output --> server (file)
#
# Built-in sample data: examples/data/telemetry.txt (synthetic AIS/NMEA and
# CSV sensor lines). Nothing leaves this machine: the script re-runs itself
# in a fresh network namespace (as root: unshare --net; otherwise
# unshare --user --map-root-user --net), where multicast stays on `lo`.
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD
# where cargo puts the binaries: $CARGO_TARGET_DIR (relative to the
# workspace) if set, else target/; exported so the re-run below keeps it
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
export MPROXY_BIN_DIR=${MPROXY_BIN_DIR:-$TARGET/debug}

if [ "${MPROXY_DEMO_IN_NETNS:-}" != 1 ]; then
    command -v cargo >/dev/null || { echo "demo: cargo not found (install Rust: https://rustup.rs)" >&2; exit 2; }
    echo "demo: building (cargo build --bins, first time takes a few minutes)..." >&2
    cargo build -j2 --quiet --bins
    export MPROXY_DEMO_IN_NETNS=1
    if [ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null; then
        exec unshare --net "$SELF" "$@"
    elif unshare --user --map-root-user --net true 2>/dev/null; then
        exec unshare --user --map-root-user --net "$SELF" "$@"
    else
        echo "demo: cannot create a private network namespace; run as root or enable unprivileged user namespaces" >&2
        exit 2
    fi
fi

# --- inside the private namespace from here on ---
ip link set lo up
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo

BIN="$MPROXY_BIN_DIR"
INPUT="$ROOT/examples/data/telemetry.txt"
OUT=$(mktemp -d "${TMPDIR:-/tmp}/mproxy-demo.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { # proto port
    for _ in $(seq 100); do
        if ss -H -ln"${1:0:1}" "sport = :$2" 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.05
    done
    echo "demo: nothing listening on $1 port $2" >&2; exit 1
}

"$BIN/mproxy-server" --listen-addr 239.255.0.1:9920 --path "$OUT/server-multicast.txt" -q & pids+=($!)
"$BIN/mproxy-server" --listen-addr 127.0.0.1:9941 --path "$OUT/server-udp-output.txt" -q & pids+=($!)
"$BIN/mproxy-reverseproxy" --udp-listen-addr 127.0.0.1:9921 --multicast-addr 239.255.77.18:9918 \
    --tcp-output-addr 127.0.0.1:9930 --udp-output-addr 127.0.0.1:9941 -q & pids+=($!)
"$BIN/mproxy-proxy" --udp-listen-addr 127.0.0.1:9910 \
    --udp-downstream-addr 127.0.0.1:9921 --udp-downstream-addr 239.255.0.1:9920 -q & pids+=($!)
wait_port udp 9920; wait_port udp 9941; wait_port udp 9921; wait_port tcp 9930; wait_port udp 9910

# a TCP consumer of the reverse proxy's fan-out
exec 3<>/dev/tcp/127.0.0.1/9930
cat <&3 > "$OUT/tcp-client.txt" & pids+=($!)
sleep 0.2

echo "demo: streaming $(wc -l < "$INPUT") lines ($(wc -c < "$INPUT") bytes) of sample telemetry at 4 Mbit/s" >&2
"$BIN/mproxy-client" --path "$INPUT" --server-addr 127.0.0.1:9910 --rate 4mbit

sleep 0.5
cleanup; pids=()
exec 3<&-

status=0
for f in server-multicast.txt server-udp-output.txt tcp-client.txt; do
    if cmp -s "$INPUT" "$OUT/$f"; then
        printf 'demo: %-22s %8d bytes  identical to input\n' "$f" "$(wc -c < "$OUT/$f")" >&2
    else
        printf 'demo: %-22s %8d bytes  DIFFERS from input\n' "$f" "$(wc -c < "$OUT/$f")" >&2
        status=1
    fi
done
echo "demo: outputs kept in $OUT; first lines:" >&2
head -n 3 "$OUT/tcp-client.txt"
exit $status
