#!/usr/bin/env bash
# Multipath goodput in a two-host testbed: the client in one private
# network namespace, mproxy-server in another, linked by veth pairs shaped
# with tc tbf. Release binaries; every figure from this one run.
#
#   bench/multipath.sh [FILE_MB]      (default 48)
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD
MB=${1:-48}
if [ "${MPROXY_BENCH_IN_NETNS:-}" != 1 ]; then
    cargo build --release -j2 --quiet --bins
    export MPROXY_BENCH_IN_NETNS=1
    if [ "$(id -u)" = 0 ]; then exec unshare --net "$SELF" "$@"; fi
    exec unshare --user --map-root-user --net "$SELF" "$@"
fi
BIN=$ROOT/target/release
ip link set lo up
unshare --net sleep 3600 & HOLDER=$!
trap 'kill $HOLDER 2>/dev/null || true' EXIT
sleep 0.2
PEER=(nsenter --net=/proc/$HOLDER/ns/net --)
"${PEER[@]}" ip link set lo up
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mproxy-mpbench.XXXXXX")
python3 - "$WORK/input" "$MB" <<'PY'
import sys, random
random.seed(7)
out, size = sys.argv[1], int(sys.argv[2]) << 20
with open(out, "w") as f:
    n = 0; written = 0
    while written < size:
        line = "%09d,%s\n" % (n, "".join(random.choice("abcdefghij") for _ in range(random.randint(20, 180))))
        f.write(line); written += len(line); n += 1
PY
LEN=$(stat -c %s "$WORK/input")

link() { # n rate
    ip link add name mpl$1 type veth peer name mpp$1 netns "$HOLDER"
    ip addr add 10.210.$1.1/24 dev mpl$1; ip link set mpl$1 up
    "${PEER[@]}" ip addr add 10.210.$1.2/24 dev mpp$1; "${PEER[@]}" ip link set mpp$1 up
    tc qdisc replace dev mpl$1 root tbf rate "$2" burst 64kb latency 100ms
    "${PEER[@]}" tc qdisc replace dev mpp$1 root tbf rate "$2" burst 64kb latency 100ms
}
link 1 50mbit; link 2 50mbit; link 3 50mbit; link 4 30mbit; link 5 60mbit

# case name, client flags..., then -- and the link numbers the server listens on
run_case() {
    local name=$1; shift
    local client=(); while [ "$1" != "--" ]; do client+=("$1"); shift; done; shift
    local listen=(); for n in "$@"; do listen+=(--listen-addr "10.210.$n.2:9000"); done
    rm -rf "$WORK/out"; mkdir -p "$WORK/out"
    "${PEER[@]}" "$BIN/mproxy-server" "${listen[@]}" --path "$WORK/out/{session}-{stream}.log" \
        --accept mpx 2> "$WORK/server.log" &
    local srv=$!
    for _ in $(seq 100); do
        [ "$("${PEER[@]}" ss -Hlun 'sport = :9000' | wc -l)" -ge $# ] && break; sleep 0.05
    done
    "$BIN/mproxy-client" --path "$WORK/input" "${client[@]}" 2> "$WORK/client.log"
    sleep 1
    kill -INT $srv; wait $srv || true
    local secs got lost paths
    set +e
    secs=$(grep -o 'in [0-9.]*s' "$WORK/client.log" | head -1 | tr -dc '0-9.')
    got=$(cat "$WORK"/out/* 2>/dev/null | wc -c)
    lost=$(grep -o 'gaps ([0-9]* lost)' "$WORK/server.log" | head -1 | tr -dc '0-9')
    paths=$(tr ';' '\n' < "$WORK/client.log" | grep -o 'path [0-9] [^:]*:[0-9]*[^,]*, [0-9]* frames' | sed 's/.*, \([0-9]*\) frames/\1/' | paste -sd: -)
    local exact=no; cmp -s "$WORK/input" "$WORK"/out/* 2>/dev/null && exact=yes
    set -e
    printf '%-34s %8.1f Mbit/s  %6.2f%% of input  lost frames %-6s byte-exact %-3s  frames per path %s\n' \
        "$name" "$(echo "$LEN*8/$secs/1000000" | bc -l)" "$(echo "$got*100/$LEN" | bc -l)" "${lost:-?}" "$exact" "${paths:--}"
}

echo "file: $LEN bytes of lines; links: 1-3 = 50 Mbit/s, 4 = 30 Mbit/s, 5 = 60 Mbit/s (tbf, both ways)"
run_case "single path, paced 47mbit" --mpx --rate 47mbit --server-addr 10.210.1.2:9000 -- 1
run_case "single path, unpaced" --mpx --server-addr 10.210.1.2:9000 -- 1
run_case "stripe 3x50, paced 141mbit" --mode stripe --rate 141mbit \
    --server-addr 10.210.1.2:9000 --server-addr 10.210.2.2:9000 --server-addr 10.210.3.2:9000 -- 1 2 3
run_case "stripe 3x50, unpaced" --mode stripe \
    --server-addr 10.210.1.2:9000 --server-addr 10.210.2.2:9000 --server-addr 10.210.3.2:9000 -- 1 2 3
run_case "stripe 30+60 weights 1:2, 86mbit" --mode stripe --rate 86mbit \
    --server-addr '10.210.4.2:9000|1' --server-addr '10.210.5.2:9000|2' -- 4 5
rm -rf "$WORK"
