#!/usr/bin/env bash
# Several feeds multiplexed on ONE multicast group with mpx framing, written
# by one server to one file per stream. Runs in a private network
# namespace (nothing leaves the machine). Usage: examples/multiplex.sh
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD
# where cargo puts the binaries: $CARGO_TARGET_DIR (relative to the
# workspace) if set, else target/; exported so the re-run below keeps it
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
export MPROXY_BIN_DIR=${MPROXY_BIN_DIR:-$TARGET/debug}
if [ "${MPROXY_EXAMPLE_IN_NETNS:-}" != 1 ]; then
    cargo build -j2 --quiet --bins
    export MPROXY_EXAMPLE_IN_NETNS=1
    if [ "$(id -u)" = 0 ]; then exec unshare --net "$SELF" "$@"; fi
    exec unshare --user --map-root-user --net "$SELF" "$@"
fi
ip link set lo up; ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo
BIN=$MPROXY_BIN_DIR
OUT=$(mktemp -d "${TMPDIR:-/tmp}/mproxy-multiplex.XXXXXX")
DATA=$ROOT/examples/data/telemetry.txt

"$BIN/mproxy-server" --listen-addr 239.255.9.9:9990 --iface lo --path "$OUT/{session}-{stream}.log" &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null || true' EXIT
sleep 0.3
# three feeds at once: AIS lines, CSV lines, and the whole file, each its own stream
grep '^!AIVDM' "$DATA" | "$BIN/mproxy-client" --mpx --stream-id 1 --path - --server-addr 239.255.9.9:9990 --iface lo --rate 2mbit -q &
grep -v '^!AIVDM' "$DATA" | "$BIN/mproxy-client" --mpx --stream-id 2 --path - --server-addr 239.255.9.9:9990 --iface lo --rate 2mbit -q &
"$BIN/mproxy-client" --mpx --stream-id 3 --path "$DATA" --server-addr 239.255.9.9:9990 --iface lo --rate 2mbit -q &
wait %2 %3 %4
sleep 0.5
kill -INT $SERVER; wait $SERVER || true
trap - EXIT
echo "one file per stream in $OUT:" >&2
wc -lc "$OUT"/*
